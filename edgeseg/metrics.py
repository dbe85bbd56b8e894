"""Segmentation metrics from one confusion matrix accumulated over a whole evaluation set.

The tutorial reports an ``iou`` it never defines. Here every prediction/truth pair is
folded into a single ``(C, C)`` confusion matrix, and IoU, Dice, their means and pixel
accuracy are all read off that matrix. This is the dataset-level IoU, which weights every
pixel equally; it is *not* the mean of per-image IoUs, which lets a slice with a handful of
white-matter pixels count as much as a slice full of it.

Rule for absent classes: a class whose union is 0 (in neither prediction nor truth
anywhere in the set) has no defined IoU or Dice. It is reported as ``None`` (``null`` in
JSON, never ``NaN`` and never 0) and left out of every mean. A class present only in the
prediction has IoU 0 and does count.

Pure numpy on purpose: the torch-free ONNX inference path imports this module.

Usage::

    cm = ConfusionMatrix(3, ["background", "gray_matter", "white_matter"])
    for pred, target in pairs:
        cm.update(pred, target)
    print(format_table(cm.summary()))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import zip_longest
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

RTOL = 1e-3  # rtol at which compare() reports the smallest passing atol ("min atol")
IGNORE = 255  # truth label of pixels that are not scored (outside a held-out 3-D region)


def class_counts(labels: np.ndarray, classes: int) -> np.ndarray:
    """Voxels of each class ``0..classes-1``: ``np.bincount(labels.ravel(), minlength=classes)[:classes]``.

    bincount first casts every label to intp, an 8-byte copy of the whole map (149 MB for a
    120x394x394 volume); a few ``count_nonzero`` passes read uint8 labels where they lie,
    about 3x faster on the AMD EPYC (17 against 53 ms for that volume, idle).
    """
    if labels.dtype == np.uint8 and classes <= 8:
        return np.array([np.count_nonzero(labels == k) for k in range(classes)], np.int64)
    return np.bincount(labels.ravel(), minlength=classes)[:classes]


class ConfusionMatrix:
    """Running ``(C, C)`` pixel confusion matrix; rows are truth, columns prediction."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        """Start an empty matrix.

        Args:
            num_classes: number of classes C (labels are ``0 .. C-1``; class 0 is background).
            class_names: one name per class, used as keys in :meth:`summary`;
                defaults to ``class_0 .. class_{C-1}``.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise EdgesegError(f"num_classes must be an int >= 1, got {num_classes!r}.")
        if num_classes < 1:
            raise EdgesegError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        if class_names is None:
            class_names = [f"class_{i}" for i in range(self.num_classes)]
        names = [str(n) for n in class_names]
        if len(names) != self.num_classes:
            raise EdgesegError(
                f"class_names has {len(names)} names {names} but num_classes is "
                f"{self.num_classes}: give exactly one name per class."
            )
        if len(set(names)) != len(names):
            raise EdgesegError(f"class_names must be unique (they are summary keys), got {names}.")
        self.class_names = names
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one prediction/truth pair (any shape, e.g. ``(H, W)`` or ``(N, H, W)``).

        Args:
            pred: integer class labels (take the argmax of logits first).
            target: integer class labels, same shape as ``pred``; pixels labelled
                IGNORE (255) are left out.

        Raises:
            EdgesegError: shapes differ, labels are not integers, or a label is outside
                ``0 .. C-1``.
        """
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise EdgesegError(
                f"pred has shape {pred.shape} but target has shape {target.shape}: they must "
                "match pixel for pixel (did you pass (N, C, H, W) logits instead of labels?)."
            )
        for what, arr in (("pred", pred), ("target", target)):
            if arr.dtype.kind not in "iu":
                raise EdgesegError(
                    f"{what} has dtype {arr.dtype}; class labels must be integers "
                    "(use logits.argmax(axis=1), or .astype(np.int64) on a label map)."
                )
        if self.num_classes <= IGNORE and pred.size and (target == IGNORE).any():  # else 255 is a class
            keep = target != IGNORE
            pred, target = pred[keep], target[keep]
        if pred.size == 0:
            return
        c = self.num_classes
        for what, arr in (("pred", pred), ("target", target)):
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= c:
                raise EdgesegError(
                    f"{what} has labels in [{lo}, {hi}] but num_classes={c} allows only "
                    f"0..{c - 1}: fix the labels or num_classes."
                )
        # int64 before multiplying: uint8 label maps would overflow at target * C.
        flat = target.ravel().astype(np.int64) * c + pred.ravel()
        self._matrix += np.bincount(flat, minlength=c * c).reshape(c, c)

    @classmethod
    def from_counts(cls, matrix: np.ndarray, class_names: Sequence[str] | None = None) -> ConfusionMatrix:
        """A matrix holding ``matrix`` (C, C) counts, e.g. the sum of every training process's."""
        cm = cls(len(matrix), class_names)
        cm._matrix += np.asarray(matrix, dtype=np.int64)
        return cm

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts into this one (e.g. from another worker or split).

        Args:
            other: a matrix with the same number of classes and class names.
        """
        if not isinstance(other, ConfusionMatrix):
            raise EdgesegError(f"can only merge a ConfusionMatrix, got {type(other).__name__}.")
        if other.class_names != self.class_names:
            raise EdgesegError(
                f"cannot merge a matrix over classes {other.class_names} into one over "
                f"{self.class_names}: both must use the same classes in the same order."
            )
        self._matrix += other._matrix

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the ``(C, C)`` int64 counts: ``matrix[t, p]`` pixels of truth t predicted p."""
        return self._matrix.copy()

    def _per_class(self, numerator_scale: int, overlap: int) -> list[float | None]:
        """``scale * TP / (|truth| + |pred| - overlap * TP)`` per class; None where union is 0."""
        tp = np.diag(self._matrix)
        sizes = self._matrix.sum(axis=0) + self._matrix.sum(axis=1)
        union = sizes - tp
        denom = sizes - overlap * tp
        return [None if u == 0 else float(numerator_scale * t / d) for t, u, d in zip(tp, union, denom, strict=True)]

    def iou(self) -> list[float | None]:
        """Per-class IoU = TP / (TP + FP + FN).

        Returns:
            One value per class; None for a class absent from both prediction and truth.
        """
        return self._per_class(numerator_scale=1, overlap=1)

    def dice(self) -> list[float | None]:
        """Per-class Dice = 2·TP / (2·TP + FP + FN), which equals 2·IoU / (1 + IoU).

        Returns:
            One value per class; None for a class absent from both prediction and truth.
        """
        return self._per_class(numerator_scale=2, overlap=0)

    def miou_fg(self) -> float | None:
        """Mean IoU over the foreground classes ``1 .. C-1`` that are present: the headline figure.

        Returns:
            The mean, or None when there is no foreground class (C = 1) or no foreground
            class appears in either prediction or truth (nothing to average).
        """
        return _mean(self.iou()[1:])

    def miou_all(self) -> float | None:
        """Mean IoU over all present classes, background included.

        Returns:
            The mean, or None when no pixels have been counted.
        """
        return _mean(self.iou())

    def pixel_accuracy(self) -> float | None:
        """Fraction of pixels whose predicted label equals the truth.

        Returns:
            The accuracy, or None when no pixels have been counted.
        """
        total = int(self._matrix.sum())
        return None if total == 0 else float(np.trace(self._matrix) / total)

    def summary(self) -> dict[str, Any]:
        """All metrics as a JSON-ready dict (plain Python numbers, None instead of NaN).

        Returns:
            ``{"iou": {name: v}, "dice": {name: v}, "miou_fg": v, "miou_all": v,
            "pixel_accuracy": v, "pixels": n}``.
        """
        return {
            "iou": dict(zip(self.class_names, self.iou(), strict=True)),
            "dice": dict(zip(self.class_names, self.dice(), strict=True)),
            "miou_fg": self.miou_fg(),
            "miou_all": self.miou_all(),
            "pixel_accuracy": self.pixel_accuracy(),
            "pixels": int(self._matrix.sum()),
        }


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the non-None values, None if there are none."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def evaluate_arrays(
    preds: Iterable[np.ndarray],
    targets: Iterable[np.ndarray],
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accumulate every prediction/truth pair into one confusion matrix and summarise it.

    Args:
        preds: integer label maps, one per slice or batch.
        targets: matching integer label maps, in the same order.
        num_classes: number of classes C.
        class_names: optional names for the summary keys.

    Returns:
        :meth:`ConfusionMatrix.summary` over all pairs.

    Raises:
        EdgesegError: the two iterables differ in length, or a pair is invalid (its index
            is named in the message).
    """
    cm = ConfusionMatrix(num_classes, class_names)
    missing = object()
    for i, (pred, target) in enumerate(zip_longest(preds, targets, fillvalue=missing)):
        if pred is missing or target is missing:
            short = "preds" if pred is missing else "targets"
            raise EdgesegError(
                f"{short} ran out after {i} arrays while the other still had more: "
                "give exactly one target per prediction."
            )
        try:
            cm.update(pred, target)
        except EdgesegError as err:
            raise EdgesegError(f"pair {i}: {err}") from err
    return cm.summary()


def compare(
    ref: list[np.ndarray],
    logits: list[np.ndarray],
    labels: list[np.ndarray],
    masks: list[np.ndarray],
    class_names: tuple[str, ...],
) -> dict[str, Any]:
    """The numbers of one row: |Δlogit| stats, min atol, agreement, mIoU of both vs truth."""
    diff = np.concatenate([np.abs(c - r).ravel() for c, r in zip(logits, ref, strict=True)])
    slack = np.concatenate([(np.abs(c - r) - RTOL * np.abs(r)).ravel() for c, r in zip(logits, ref, strict=True)])
    ref_labels = [r.argmax(axis=1) for r in ref]
    agree = sum(int((a == b).sum()) for a, b in zip(labels, ref_labels, strict=True))
    n = len(class_names)
    miou_ref = evaluate_arrays(ref_labels, masks, n, class_names)["miou_fg"]
    miou_cand = evaluate_arrays(labels, masks, n, class_names)["miou_fg"]
    d = None if miou_ref is None or miou_cand is None else miou_cand - miou_ref
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "ref_max": float(max(np.abs(r).max() for r in ref)),
        "min_atol": float(max(slack.max(), 0.0)),
        "agreement": agree / diff.size * n,
        "miou_ref": miou_ref,
        "miou_cand": miou_cand,
        "d_miou": d,
    }


def score(
    predict: Callable[[np.ndarray], Any],
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """:meth:`ConfusionMatrix.summary` of ``predict`` (labels of a ``(1, 1, H, W)`` float32 batch)
    over held-out slices, one slice per call: how every stage scores a model it runs."""
    preds = (np.asarray(predict(np.ascontiguousarray(img, np.float32)[None, None]))[0] for img in images)
    return evaluate_arrays(preds, masks, len(class_names), class_names)


def format_table(summary: dict[str, Any]) -> str:
    """Render a :meth:`ConfusionMatrix.summary` as a plain-text table for logs.

    Args:
        summary: the dict from :meth:`ConfusionMatrix.summary` or :func:`evaluate_arrays`.

    Returns:
        Per-class rows (class, IoU, Dice), then mean IoU (foreground and all), pixel
        accuracy and pixel count; absent values print as ``n/a``.
    """
    keys = ("iou", "dice", "miou_fg", "miou_all", "pixel_accuracy", "pixels")
    lacking = [k for k in keys if k not in summary]
    if lacking:
        raise EdgesegError(f"summary lacks {lacking}: pass the dict returned by ConfusionMatrix.summary().")
    names = list(summary["iou"])
    width = max([len("mean IoU (foreground)"), *(len(n) for n in names)])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Dice':>6}", "-" * (width + 16)]
    for name in names:
        iou, dice = _fmt(summary["iou"][name]), _fmt(summary["dice"].get(name))
        lines.append(f"{name:<{width}}  {iou:>6}  {dice:>6}")
    lines.append("-" * (width + 16))
    lines.append(f"{'mean IoU (foreground)':<{width}}  {_fmt(summary['miou_fg']):>6}")
    lines.append(f"{'mean IoU (all)':<{width}}  {_fmt(summary['miou_all']):>6}")
    lines.append(f"{'pixel accuracy':<{width}}  {_fmt(summary['pixel_accuracy']):>6}")
    lines.append(f"{'pixels':<{width}}  {summary['pixels']:>6}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    """Four decimals, or ``n/a`` for an undefined metric."""
    return "n/a" if value is None else f"{value:.4f}"
