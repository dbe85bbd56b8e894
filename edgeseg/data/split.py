"""Which slices train and which are held out, without leakage; and the one held-out data type.

* :func:`split_indices`: whole slices held out in slabs (``slabs``) or the tutorial's last 100.
* :func:`make_split`: the default ``regions`` split holds out 3-D balls of the demo template,
  masked out of every training plane (edgeseg.data.volume).
* :class:`HeldOut`: what evaluate, validate, the int8 choice and bench score on. A model
  records how its held-out data was chosen (:class:`SplitRecord`, in the checkpoint and in
  the exported ONNX metadata), so each of them scores a model on its own held-out data.
* :func:`size_batches`: held-out slices fitted to the parity sizes.

numpy only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.data.dataset import Slices, load_slices
from edgeseg.data.demo import build_demo, read_demo_provenance
from edgeseg.errors import EdgesegError

SLAB_GAP = 4  # slices left out of both splits on each side of a test slab (near-duplicates)
MIN_SLAB = 10  # a test slab is at least this many slices long when the test set allows it
MAX_SLABS = 5  # test slabs spread over the index range
TUTORIAL_TEST = 100  # the tutorial holds out its last 100 slices


def split_indices(
    n: int, mode: str = "slabs", test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split slice indices (in sorted order) into train and test without neighbour leakage.

    ``"slabs"`` holds out up to MAX_SLABS (5) contiguous slabs, one placed at a seeded
    random offset inside each of equal segments of the index range, totalling
    ``round(test_fraction * n)`` slices, each slab at least MIN_SLAB (10) long when
    the test set allows; SLAB_GAP (4) slices on each side of every slab go to
    neither split, since adjacent slices are near-duplicates. ``"tutorial"`` takes
    the last 100 slices as test, like the tutorial (no gap).

    Args:
        n: number of slices.
        mode: ``"slabs"`` or ``"tutorial"``.
        test_fraction: share of slices held out (slabs mode).
        seed: places the slabs; the same seed gives the same split.

    Returns:
        (train indices, test indices), each sorted.
    """
    if n < 1:
        raise EdgesegError(f"split: the dataset has {n} slices; nothing to split")
    if mode == "tutorial":
        if n <= TUTORIAL_TEST:
            raise EdgesegError(
                f"split mode 'tutorial' holds out the last {TUTORIAL_TEST} slices, but the dataset "
                f"has only {n}; use mode 'slabs'"
            )
        return list(range(n - TUTORIAL_TEST)), list(range(n - TUTORIAL_TEST, n))
    if mode != "slabs":
        raise EdgesegError(f"split mode {mode!r} unknown; choose one of {', '.join(SPLITS)}")
    if not 0.0 < test_fraction < 1.0:
        raise EdgesegError(f"test_fraction={test_fraction}: must be between 0 and 1 (exclusive)")
    n_test = max(1, round(test_fraction * n))
    num_slabs = min(MAX_SLABS, max(1, n_test // MIN_SLAB))
    if n - n_test - 2 * SLAB_GAP * num_slabs < 1:
        raise EdgesegError(
            f"split: {n} slices are too few to hold out {n_test} in {num_slabs} slab(s) with "
            f"{SLAB_GAP}-slice gaps; lower test_fraction or add data"
        )
    rng = np.random.default_rng(seed)
    lengths = [n_test // num_slabs + (s < n_test % num_slabs) for s in range(num_slabs)]
    bounds = np.linspace(0, n, num_slabs + 1).round().astype(int)
    test: list[int] = []
    for s, length in enumerate(lengths):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        start = int(rng.integers(lo, max(lo, hi - length) + 1))
        test.extend(range(start, min(start + length, n)))
    excluded = np.zeros(n, dtype=bool)
    for t in test:
        excluded[max(0, t - SLAB_GAP) : t + SLAB_GAP + 1] = True
    train = [int(i) for i in np.flatnonzero(~excluded)]
    if not train:
        raise EdgesegError(f"split: no training slices left of {n}; lower test_fraction")
    return train, sorted(set(test))


SPLITS = ("regions", "slabs", "tutorial")  # the first is the default


@dataclass
class Split:
    """Which slices train and which are scored, and which of their pixels count for each."""

    train: list[int]
    test: list[int]
    train_masks: list[np.ndarray]  # per slice of the set; IGNORE (255) pixels never supervise
    test_masks: list[np.ndarray]  # per slice of the set; IGNORE (255) pixels are not scored
    note: str  # how it was made, for reports


def is_demo_set(root: Path) -> bool:
    """True when ``root`` is a demo set (so its slices can be placed in the 3-D template)."""
    try:
        read_demo_provenance(root)
    except EdgesegError:
        return False
    return True


def make_split(slices: Slices, mode: str = "regions", test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split a dataset for training and scoring.

    ``"regions"`` (the default, demo set only) holds out balls of the 3-D template: their
    voxels supervise training in no plane and no orientation (masked out of every training
    slice, with a gap shell around them), and only their pixels are scored, on the demo
    slices that cut through them (:func:`edgeseg.data.volume.region_split`). ``"slabs"`` and
    ``"tutorial"`` are :func:`split_indices`: whole slices held out in their own plane only,
    so the other planes' training slices cross the held-out anatomy.
    """
    if mode == "regions":
        from edgeseg.data.volume import REGION_COUNT, REGION_RADIUS_MM, region_split

        if not is_demo_set(slices.root):
            raise EdgesegError(
                f"{slices.root}: split 'regions' holds out 3-D regions of the demo template and needs"
                " the demo set; use --split slabs for other data"
            )
        train_masks, test_masks, test = region_split(slices.root, slices.masks, seed)
        return Split(
            list(range(len(slices))),
            test,
            train_masks,
            test_masks,
            f"regions split: {REGION_COUNT} held-out balls of {REGION_RADIUS_MM:g} mm,"
            f" their pixels on {len(test)} slices",
        )
    train, test = split_indices(len(slices), mode, test_fraction, seed)
    return Split(train, test, slices.masks, slices.masks, f"{mode} split: {len(test)} held-out slices")


@dataclass(frozen=True)
class SplitRecord:
    """How a model's held-out data was chosen: saved in its checkpoint and its ONNX metadata."""

    root: str = ""  # the folder it was trained on ("" = the demo set)
    rule: str = "slabs"  # one of SPLITS
    seed: int = 0
    test_fraction: float = 0.2
    test_keys: tuple[str, ...] = ()  # the slab/tutorial split's held-out keys, as trained
    num_classes: int = 3

    METADATA_KEY = "edgeseg.held_out"

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> SplitRecord:
        info, cfg = ckpt.get("data") or {}, ckpt.get("train_config") or {}
        return cls(
            str(info.get("root") or ""),
            str(cfg.get("split", "slabs")),
            int(cfg.get("seed", 0)),
            float(cfg.get("test_fraction", 0.2)),
            tuple(info.get("test_keys") or ()),
            int(ckpt["model_config"]["num_classes"]),
        )

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path | str = "model") -> SplitRecord | None:
        """The record an exported file carries; None for a file exported before it was recorded."""
        if cls.METADATA_KEY not in meta:
            return None
        try:
            d = json.loads(meta[cls.METADATA_KEY])
            return cls(**{**d, "test_keys": tuple(d.get("test_keys") or ())})
        except (ValueError, TypeError) as exc:
            raise EdgesegError(
                f"{path}: malformed {cls.METADATA_KEY} metadata ({exc}); re-export it with `edgeseg export`"
            ) from None

    def to_metadata(self) -> dict[str, str]:
        return {self.METADATA_KEY: json.dumps(asdict(self))}


@dataclass
class HeldOut:
    """The one held-out data type: the slices a model is scored on, and the rest (int8 calibration).

    ``slices.masks`` hold IGNORE (255) where a pixel is not held out (the regions split);
    ``full_masks`` then keeps every pixel's label, for comparing two models pixel by pixel.
    """

    slices: Slices
    train: list[int]
    test: list[int]
    source: str  # where they came from, for reports
    full_masks: list[np.ndarray] | None = None

    @property
    def keys(self) -> list[str]:
        return [self.slices.keys[i] for i in self.test]

    @property
    def images(self) -> list[np.ndarray]:
        """Held-out float32 (H, W) raw intensities."""
        return [self.slices.images[i] for i in self.test]

    @property
    def masks(self) -> list[np.ndarray]:
        """Their scored uint8 labels (IGNORE where not held out)."""
        return [self.slices.masks[i] for i in self.test]

    @property
    def labels(self) -> list[np.ndarray] | None:
        """Every pixel's label of the held-out slices, where the masks hold IGNORE; else None."""
        return None if self.full_masks is None else [self.full_masks[i] for i in self.test]

    @property
    def train_images(self) -> list[np.ndarray]:
        return [self.slices.images[i] for i in self.train]

    def limited(self, n: int | None) -> HeldOut:
        """At most ``n`` held-out slices, spread evenly over them."""
        if not n or n >= len(self.test):
            return self
        return HeldOut(self.slices, self.train, pick(self.test, n), f"{self.source}, {n} of them", self.full_masks)


def held_out(record: SplitRecord | None, data: Path | None = None, split: str | None = None) -> HeldOut:
    """A model's held-out slices, as evaluate, validate, the int8 choice and bench use them.

    Without ``data`` and ``split``: the keys the model recorded as held out, in the folder it
    was trained on (the demo set if that folder is gone). Otherwise ``split`` (default: the
    model's own split rule) applied to ``data`` (default: that same folder). Without a record
    (a file exported before models recorded it): the slab split of ``data`` or the demo set,
    and the source says that it may overlap the model's training data.
    """
    unknown = record is None
    record = record or SplitRecord()
    root = Path(data) if data else Path(record.root)
    if data is None and not (record.root and root.is_dir()):
        root = build_demo()
    slices = load_slices(root, record.num_classes)
    rule = split or record.rule
    note = "; the model does not record its held-out data, these may include its training data" if unknown else ""
    if rule == "regions":
        made = make_split(slices, rule, seed=record.seed)
        scored = Slices(slices.root, slices.keys, slices.images, made.test_masks)
        return HeldOut(scored, made.train, made.test, f"{slices.root} ({made.note}{note})", slices.masks)
    keys = set(record.test_keys) if data is None and split is None else set()
    if keys and keys <= set(slices.keys):
        test = [i for i, k in enumerate(slices.keys) if k in keys]
        train = [i for i, k in enumerate(slices.keys) if k not in keys]
        return HeldOut(slices, train, test, f"{slices.root} (the model's {len(test)} held-out slices)")
    train, test = split_indices(len(slices), rule, record.test_fraction, record.seed)
    return HeldOut(slices, train, test, f"{slices.root} ({rule} split: {len(test)} held-out slices{note})")


def checkpoint_split(ckpt: dict[str, Any], data: Path | None = None, split: str | None = None) -> HeldOut:
    """:func:`held_out` of a loaded checkpoint."""
    return held_out(SplitRecord.from_checkpoint(ckpt), data, split)


# ----------------------------------------------------------------------------- parity sizes


def fit_to_size(image: np.ndarray, mask: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop or pad a slice and its mask to ``(h, w)``: image edge-padded, mask with 0."""
    for axis, size in ((0, h), (1, w)):
        have = image.shape[axis]
        if have > size:
            start = (have - size) // 2
            image = np.take(image, range(start, start + size), axis=axis)
            mask = np.take(mask, range(start, start + size), axis=axis)
        elif have < size:
            before = (size - have) // 2
            pad = [(0, 0), (0, 0)]
            pad[axis] = (before, size - have - before)
            image, mask = np.pad(image, pad, mode="edge"), np.pad(mask, pad)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask, np.uint8)


def pick(items: list[Any], n: int) -> list[Any]:
    """``n`` items evenly spread over ``items`` (all of them if n >= len)."""
    if n >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)]


def size_batches(data: HeldOut, sizes: tuple[tuple[int, int, int, int], ...]) -> list[dict[str, Any]]:
    """Per size row: ``{"size", "batch", "inputs": [(N,1,H,W) float32], "masks": [...]}``."""
    rows = []
    for h, w, n, batch in sizes:
        pairs = [
            fit_to_size(im, m, h, w)
            for im, m in pick(list(zip(data.images, data.labels or data.masks, strict=True)), n)
        ]
        starts = range(0, len(pairs), batch)
        rows.append(
            {
                "size": f"{h}x{w}",
                "batch": batch,
                "inputs": [np.stack([p[0] for p in pairs[s : s + batch]])[:, None] for s in starts],
                "masks": [np.stack([p[1] for p in pairs[s : s + batch]]) for s in starts],
            }
        )
    return rows
