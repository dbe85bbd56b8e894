"""Quality figures of a segmentation, and the ranges the model saw: a guard against scans it was
never meant for. Torch-free (numpy only).

A CT, an ultrasound frame or a head with its skull still on goes through the network as
readily as a skull-stripped brain MR, and comes out with gray/white-matter volumes. What
gives it away are a few figures of the model's own output, per scan:

* ``brain_fraction``: pixels labelled gray or white matter / all pixels, on the model's grid;
* ``gm_wm_ratio``: gray-matter / white-matter pixels;
* ``conf_mean`` and ``conf_p5``: mean and 5th percentile of the max-softmax probability
  over the pixels labelled brain: how sure the model was where it claimed brain.

They are counted over the slices with at least :data:`MIN_BRAIN` of brain, as the demo
set's training slices were chosen, so empty slices at the ends of a volume do not drag a
volume's figures outside what any training slice showed. ``edgeseg export`` computes the
same figures on every training and held-out slice and stores their ranges in the model's
metadata (``edgeseg.qc_ranges``); ``edgeseg infer`` writes a scan's figures to
``summary.csv`` with a ``qc`` column: ``ok``, the figures outside those ranges, or
``no ranges in model`` for models exported before this.

A volume's figure is a pooled ratio over its slices, so it lies between its slices' own
values: a volume of slices like the training slices stays inside the training ranges.

:func:`verdict` turns the figures into a :class:`Verdict` (issue 22): ``flagged`` with reasons of
three kinds, ``no brain`` (no slice with :data:`MIN_BRAIN` of brain: an empty segmentation is
not ``ok``), ``not brain anatomy`` (:mod:`edgeseg.io.qc_anatomy`: the labels are not shaped like a
brain slice, or the input is signed like a CT) and ``outside training range`` (the figures
above); else ``ok``, or ``unchecked`` for a model without ranges. :func:`coverage` says, beside
it, whether the scan holds the whole brain, part of it (a slab) or a single slice. Measured in
``bench/qc_flags.py`` (held-out slices under every robustness family) and the README.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from edgeseg.io.qc_anatomy import anatomy_counts, anatomy_figures
from edgeseg.metrics import class_counts

MIN_BRAIN = 0.02  # slices with less brain than this are left out (the demo set's selection rule)
FIGURES = ("brain_fraction", "gm_wm_ratio", "conf_mean", "conf_p5")
BINS = 1000  # max-softmax histogram resolution for the 5th percentile
METADATA_KEY = "edgeseg.qc_ranges"
NO_RANGES = "no ranges in model"
MEAN_SUFFIX = "_mean_intensity"  # summary.csv: mean input intensity of the voxels of each class


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """``(n, C, H, W)`` logits -> ``(n, H, W)`` probability of the winning class.

    ``1 / sum_c exp(l_c - max)``, summed class by class into one ``(n, H, W)`` buffer rather
    than through an ``(n, C, H, W)`` temporary: a third less time at C = 3 (README, QC cost).
    """
    top = logits.max(axis=1)
    total = np.zeros_like(top)
    for c in range(logits.shape[1]):
        total += np.exp(logits[:, c] - top)
    return np.reciprocal(total, out=total)


@dataclass
class QCCounter:
    """Accumulates the figures of one scan, batch by batch, on the model's grid."""

    gray: int | None  # class index of gray matter (None: the model has no such class)
    white: int | None
    pixels: int = 0
    gm: int = 0
    wm: int = 0
    conf_sum: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    shape: np.ndarray = field(default_factory=lambda: np.zeros(8))  # qc_anatomy.anatomy_counts, summed

    @classmethod
    def for_classes(cls, class_names: tuple[str, ...]) -> QCCounter:
        """A counter for a model with these classes."""

        def index(name: str) -> int | None:
            return class_names.index(name) if name in class_names else None

        return cls(index("gray_matter"), index("white_matter"))

    def add(self, logits: np.ndarray, labels: np.ndarray, image: np.ndarray | None = None) -> None:
        """Count ``(n, C, H, W)`` logits and their ``(n, H, W)`` argmax labels; ``image``: the
        ``(n, H, W)`` input the model saw, for :mod:`edgeseg.io.qc_anatomy`'s input figure."""
        brain = labels > 0
        kept = np.count_nonzero(brain.reshape(len(brain), -1), axis=1) / brain[0].size >= MIN_BRAIN
        if not kept.any():
            return
        if not kept.all():
            brain, labels, logits = brain[kept], labels[kept], logits[kept]
            image = image[kept] if image is not None else None
        self.shape += anatomy_counts(labels, image, self.gray)
        conf = max_softmax(logits)[brain]
        counts = class_counts(labels, logits.shape[1])
        self.pixels += labels.size
        self.gm += int(counts[self.gray]) if self.gray is not None else 0
        self.wm += int(counts[self.white]) if self.white is not None else 0
        self.conf_sum += float(conf.sum(dtype=np.float64))
        # bins [i/BINS, (i+1)/BINS), 1.0 in the last, as np.histogram's; bincount is 3x faster
        self.hist += np.bincount(np.minimum((conf * BINS).astype(np.int32), BINS - 1), minlength=BINS)

    def figures(self) -> dict[str, float]:
        """The four figures; empty when no slice held enough brain."""
        brain = int(self.hist.sum())
        if not brain:
            return {}
        cdf = np.cumsum(self.hist)
        out = {
            "brain_fraction": brain / self.pixels,
            "conf_mean": self.conf_sum / brain,
            "conf_p5": float(np.searchsorted(cdf, 0.05 * brain) + 0.5) / BINS,
        }
        if self.gray is not None and self.white is not None and self.wm:
            out["gm_wm_ratio"] = self.gm / self.wm
        return out

    def anatomy(self) -> dict[str, float]:
        """:mod:`edgeseg.io.qc_anatomy`'s figures over the same slices; empty when none was kept."""
        return anatomy_figures(self.shape)


def slice_ranges(figures: list[dict[str, float]]) -> dict[str, list[float]]:
    """``[min, max]`` of each figure over per-slice figures (export: training and held-out slices)."""
    return {
        k: [min(f[k] for f in figures if k in f), max(f[k] for f in figures if k in f)]
        for k in FIGURES
        if any(k in f for f in figures)
    }


def parse_ranges(text: str | None) -> dict[str, list[float]] | None:
    """The ranges stored in the model's metadata, or None when it has none (or unreadable ones)."""
    if not text:
        return None
    try:
        ranges = json.loads(text)
        return {k: [float(ranges[k][0]), float(ranges[k][1])] for k in FIGURES if k in ranges}
    except (ValueError, TypeError, KeyError, IndexError):
        return None


REASON_KINDS = ("no brain", "not brain anatomy", "outside training range")
COVERAGES = ("whole", "partial", "single slice", "unknown")
# A volume is "whole" when the brain ends inside it at both ends and spans at least this many mm
# along the slice axis: an adult cerebrum is 120-140 mm superior-inferior, 160-180 mm
# anterior-posterior, 130-150 mm left-right; the MNI152 template's brain mask spans 137 mm
# (axial), 172 mm (coronal), 138 mm (sagittal). A 40 mm slab is partial whatever its ends.
WHOLE_MM = 100.0
# A slice holds brain when it has at least this share of the largest slice's brain pixels: the
# ends of a whole brain fall off gradually, so a stray label in a neck or vertex slice is not brain.
END_SHARE = 0.05


@dataclass(frozen=True)
class Verdict:
    """One scan's QC verdict (agreed interface: /work/helpers/QC_INTERFACE.md).

    ``status``: ``ok``, ``flagged`` or ``unchecked`` (the model carries no ranges). ``reasons``
    each start with one of :data:`REASON_KINDS`, then ``": "`` and the figures. Coverage is
    reported beside the verdict, never a flag: a slab or a single slice is a legitimate input.
    """

    status: str
    reasons: tuple[str, ...] = ()
    coverage: str = "unknown"
    coverage_detail: str = ""

    @property
    def flagged(self) -> bool:
        return self.status == "flagged"

    @property
    def text(self) -> str:
        """summary.csv's ``qc``: ``ok``, ``no ranges in model``, or the reasons joined by ``"; "``."""
        if self.status == "unchecked":
            return NO_RANGES
        return "; ".join(self.reasons) if self.reasons else "ok"

    @property
    def coverage_text(self) -> str:
        """summary.csv's ``coverage``: e.g. ``whole``, ``partial: 40.0 mm slab``, ``single slice``."""
        if self.coverage != "partial" or not self.coverage_detail:
            return self.coverage
        return f"partial: {self.coverage_detail.split('; ')[0]}"  # the detail's first clause: the slab

    def as_dict(self) -> dict[str, object]:
        """The stats JSON's ``qc`` entries."""
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "coverage": self.coverage,
            "coverage_detail": self.coverage_detail,
        }

    @classmethod
    def from_row(cls, row: dict) -> Verdict:
        """The verdict written in a summary row (``qc``, ``qc_status``, ``coverage``, ``coverage_detail``)."""
        text = str(row.get("qc") or "")
        status = str(
            row.get("qc_status") or ("ok" if text == "ok" else "unchecked" if text == NO_RANGES else "flagged")
        )
        reasons = tuple(text.split("; ")) if status == "flagged" else ()
        coverage = str(row.get("coverage") or "unknown").split(":", 1)[0]
        return cls(status, reasons, coverage, str(row.get("coverage_detail") or ""))


def coverage(brain_per_slice: np.ndarray, slice_mm: float | None) -> tuple[str, str]:
    """Whole, partial or single slice, from each slice's brain pixel count along the slice axis.

    Args:
        brain_per_slice: ``(S,)`` pixels labelled brain in each slice, in slice order.
        slice_mm: distance between slice centres in mm; None: unknown (a .npy stack).

    Returns:
        ``(coverage, detail)``: ``single slice`` for one slice; ``partial`` when brain reaches the
        first or last slice or spans under :data:`WHOLE_MM`; ``whole`` when it ends inside the
        stack at both ends over at least :data:`WHOLE_MM`; ``unknown`` with no brain, or with no
        slice spacing and no brain at either end.
    """
    counts = np.asarray(brain_per_slice, np.float64)
    n = len(counts)
    if n == 1:
        return "single slice", "one slice"
    if not n or counts.max() <= 0:
        return "unknown", "no brain in any slice"
    held = np.flatnonzero(counts >= END_SHARE * counts.max())
    first, last = int(held[0]), int(held[-1])
    ends = [name for name, hit in (("first", first == 0), ("last", last == n - 1)) if hit]
    where = f"brain reaches the {' and '.join(ends)} slice" if ends else "brain ends inside the stack"
    if slice_mm is None or not slice_mm > 0:
        return (
            ("partial", f"{where}; slice spacing unknown") if ends else ("unknown", f"{where}; slice spacing unknown")
        )
    span = (last - first + 1) * slice_mm
    detail = f"{where}; {span:.1f} mm of brain along the slice axis ({n} slices of {slice_mm:.3g} mm)"
    if ends or span < WHOLE_MM:
        slab = f"{n * slice_mm:.1f} mm slab" if ends else f"{span:.1f} mm of brain"
        return "partial", f"{slab}; {detail}"
    return "whole", detail


def verdict(
    figures: dict[str, float],
    ranges: dict[str, list[float]] | None,
    anatomy: tuple[str, ...] = (),
    cover: tuple[str, str] = ("unknown", ""),
) -> Verdict:
    """The verdict of a scan's figures against the model's ranges.

    Args:
        figures: :meth:`QCCounter.figures` (empty: no slice held :data:`MIN_BRAIN` of brain).
        ranges: the model's (:func:`parse_ranges`); None: ``unchecked``.
        anatomy: details of what says the scan is not brain anatomy (:mod:`edgeseg.io.qc_anatomy`).
        cover: :func:`coverage`'s answer.
    """
    if ranges is None:
        return Verdict("unchecked", (), *cover)
    if not figures:
        return Verdict("flagged", (f"no brain: no slice with >= {MIN_BRAIN:.0%} brain",), *cover)
    reasons = [f"not brain anatomy: {', '.join(anatomy)}"] if anatomy else []
    outside = [
        f"{k} {figures[k]:.3g} outside {lo:.3g}-{hi:.3g}"
        for k, (lo, hi) in ranges.items()
        if k in figures and not lo <= figures[k] <= hi
    ]
    if outside:
        reasons.append(f"outside training range: {', '.join(outside)}")
    return Verdict("flagged" if reasons else "ok", tuple(reasons), *cover)


def judge(figures: dict[str, float], ranges: dict[str, list[float]] | None) -> str:
    """:func:`verdict`'s text: ``ok``, ``no ranges in model``, or its reasons."""
    return verdict(figures, ranges).text


def ranges_on_slices(model: bytes, images: list[np.ndarray], class_names: tuple[str, ...]) -> dict:
    """Per-slice figures of ``model`` (an ONNX file's bytes, run on ORT CPU) over ``images``,
    as :func:`slice_ranges`; slices with too little brain count as in inference: not at all."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    figures = []
    for image in images:
        (logits,) = session.run(["logits"], {"image": np.asarray(image, np.float32)[None, None]})
        counter = QCCounter.for_classes(class_names)
        counter.add(logits, logits.argmax(1))
        figures.append(counter.figures())
    return slice_ranges([f for f in figures if f])
