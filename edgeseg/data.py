"""Data stage: load tutorial-layout slices, build the real-MRI demo set, split, augment.

The tutorial layout is ``ROOT/MRIs/<name>_<ix>.npy`` (2-D raw intensities) and
``ROOT/Segmentations/segm_<ix>.npy`` (2-D label maps 0..C-1), paired by ``ix``.
:func:`load_slices` reads and validates a whole dataset once; every problem is
an :class:`EdgesegError` naming the file. :func:`build_demo` writes such a
dataset from the MNI152 template that ships inside nilearn (see :mod:`edgeseg.demo`):

    edgeseg data demo --out DIR

This module imports numpy only. The training dataset (:func:`make_train_dataset`,
``TrainSlices``) needs torch, which is imported the first time either is used:
``TrainSlices`` is created on first attribute access (PEP 562 module
``__getattr__``), so ``from edgeseg.data import TrainSlices`` works, pickles,
and ``import edgeseg.data`` stays torch-free for the inference path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.demo import build_demo, default_demo_dir, read_demo_provenance  # noqa: F401  (re-exported)
from edgeseg.errors import EdgesegError

if TYPE_CHECKING:
    from torch.utils.data import Dataset

LAYOUT = "ROOT/MRIs/<name>_<ix>.npy images and ROOT/Segmentations/segm_<ix>.npy masks"
MAX_LISTED = 10  # file names listed in one error message before "and N more"
SLAB_GAP = 4  # slices left out of both splits on each side of a test slab (near-duplicates)
MIN_SLAB = 10  # a test slab is at least this many slices long when the test set allows it
MAX_SLABS = 5  # test slabs spread over the index range
TUTORIAL_TEST = 100  # the tutorial holds out its last 100 slices

# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class SlicePair:
    """One image file and its mask file, paired by ``key`` (the part after the last ``_``)."""

    key: str
    image: Path
    mask: Path


@dataclass
class Slices:
    """A validated dataset held in memory, in sorted key order."""

    root: Path  # the folder holding MRIs/ and Segmentations/
    keys: list[str]
    images: list[np.ndarray]  # float32 (H, W), raw intensities
    masks: list[np.ndarray]  # uint8 (H, W), labels 0..C-1

    def __len__(self) -> int:
        return len(self.keys)


def _sort_key(key: str) -> tuple[int, int, str]:
    """Numeric keys in numeric order first, then the rest in string order."""
    if key.isascii() and key.isdigit():
        return (0, int(key), key)
    return (1, 0, key)


def _listing(paths: list[Path]) -> str:
    """Names of up to MAX_LISTED paths, then 'and N more'."""
    names = ", ".join(p.name for p in paths[:MAX_LISTED])
    more = len(paths) - MAX_LISTED
    return names + (f" and {more} more" if more > 0 else "")


def _index_folder(folder: Path) -> dict[str, Path]:
    """Map key -> .npy file in one folder; two files with one key are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.npy")):
        if path.name.startswith("."):
            continue
        key = path.stem.rsplit("_", 1)[-1]
        if key in found:
            raise EdgesegError(
                f"{path}: same slice number '{key}' as {found[key].name} in {folder}; "
                "every file needs a unique part after its last '_'"
            )
        found[key] = path
    return found


def _resolve_root(root: Path) -> Path:
    """Check the layout and descend into ROOT/MRIs when the download nests it as MRIs/MRIs."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EdgesegError(f"dataset root {root} is not a folder; expected {LAYOUT}")
    nested = root / "MRIs" / "MRIs"
    if nested.is_dir() and not any((root / "MRIs").glob("*.npy")):
        root = root / "MRIs"
    for sub in ("MRIs", "Segmentations"):
        if not (root / sub).is_dir():
            raise EdgesegError(f"{root / sub}: folder missing; expected {LAYOUT}")
    return root


def find_pairs(root: Path) -> list[SlicePair]:
    """List image/mask pairs of a tutorial-layout dataset, sorted by slice number.

    Args:
        root: dataset root holding ``MRIs/`` and ``Segmentations/`` (or the
            tutorial's download folder holding ``MRIs/MRIs`` and ``MRIs/Segmentations``).

    Returns:
        The pairs, numeric keys in numeric order, then other keys in string order.
    """
    root = _resolve_root(root)
    images = _index_folder(root / "MRIs")
    masks = _index_folder(root / "Segmentations")
    if not images:
        raise EdgesegError(f"{root / 'MRIs'}: no .npy images found; expected {LAYOUT}")
    lonely = [images[k] for k in sorted(images.keys() - masks.keys(), key=_sort_key)]
    if lonely:
        raise EdgesegError(
            f"{root / 'MRIs'}: {len(lonely)} image(s) without a mask in {root / 'Segmentations'}: "
            f"{_listing(lonely)}; add segm_<ix>.npy for each or remove the images"
        )
    orphans = [masks[k] for k in sorted(masks.keys() - images.keys(), key=_sort_key)]
    if orphans:
        raise EdgesegError(
            f"{root / 'Segmentations'}: {len(orphans)} mask(s) without an image in "
            f"{root / 'MRIs'}: {_listing(orphans)}; add the images or remove the masks"
        )
    return [SlicePair(k, images[k], masks[k]) for k in sorted(images, key=_sort_key)]


def _load_npy(path: Path) -> np.ndarray:
    """np.load without unpickling; unreadable files become an EdgesegError naming them."""
    from edgeseg.scans import check_npy_header

    check_npy_header(path)  # a header claiming more than the file holds, before allocating it
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise EdgesegError(
            f"{path}: cannot read this .npy file ({exc}); re-save it with numpy.save "
            "as a plain numeric array (pickled objects are never loaded)"
        ) from None
    if not isinstance(arr, np.ndarray):  # an .npz archive renamed to .npy
        arr.close()
        raise EdgesegError(f"{path}: is an .npz archive, not one array; save one array per file")
    if arr.ndim != 2:
        raise EdgesegError(
            f"{path}: array has shape {arr.shape}, expected a 2-D (H, W) slice; "
            "save one slice per file (squeeze or split channel/volume axes)"
        )
    return arr


def _check_image(path: Path, arr: np.ndarray) -> np.ndarray:
    """Raw intensities: real numbers, all finite; returned as float32."""
    if arr.dtype.kind not in "iuf":
        raise EdgesegError(f"{path}: image dtype {arr.dtype} is not a real number type; save intensities as float32")
    image = arr.astype(np.float32)
    if not np.isfinite(image).all():
        raise EdgesegError(
            f"{path}: image holds {int((~np.isfinite(image)).sum())} NaN/Inf value(s); "
            "replace them (e.g. numpy.nan_to_num) and re-save"
        )
    return image


def _check_mask(path: Path, arr: np.ndarray, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """Integer labels 0..num_classes-1 with the image's shape; returned as uint8."""
    if arr.shape != shape:
        raise EdgesegError(
            f"{path}: mask shape {arr.shape} differs from its image's {shape}; "
            "mask and image must cover the same pixels"
        )
    if arr.dtype.kind not in "biuf":
        raise EdgesegError(f"{path}: mask dtype {arr.dtype} is not numeric; save labels as uint8")
    if arr.dtype.kind == "f":
        bad = arr[~np.isfinite(arr) | (arr != np.round(arr))]
        if bad.size:
            raise EdgesegError(
                f"{path}: mask dtype {arr.dtype} holds non-integral values "
                f"(e.g. {bad[:3].tolist()}); save class indices as integers (uint8)"
            )
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad_values = np.unique(arr[(arr < 0) | (arr >= num_classes)])
        shown = [v.item() for v in bad_values[:MAX_LISTED]]
        raise EdgesegError(
            f"{path}: labels {shown} outside 0..{num_classes - 1}; masks hold class indices "
            f"0..{num_classes - 1} for num_classes={num_classes} (relabel, or raise num_classes)"
        )
    return arr.astype(np.uint8)


def load_slices(root: Path, num_classes: int = 3) -> Slices:
    """Read and validate a whole tutorial-layout dataset into memory.

    Args:
        root: dataset root (see :func:`find_pairs`).
        num_classes: number of classes C; every mask label must be in 0..C-1.

    Returns:
        The slices in sorted key order: float32 images, uint8 masks.
    """
    if not 2 <= num_classes <= 256:
        raise EdgesegError(f"num_classes={num_classes}: must be between 2 and 256")
    pairs = find_pairs(root)
    images, masks = [], []
    for pair in pairs:
        image = _check_image(pair.image, _load_npy(pair.image))
        masks.append(_check_mask(pair.mask, _load_npy(pair.mask), image.shape, num_classes))
        images.append(image)
    root = pairs[0].image.parent.parent  # after the MRIs/MRIs descent
    return Slices(root=root, keys=[p.key for p in pairs], images=images, masks=masks)


def one_hot(mask: Any, num_classes: int) -> Any:
    """Class indices to one-hot channels, for the tutorial's BCE loss.

    Args:
        mask: integer labels (..., H, W), a numpy array or a torch tensor.
        num_classes: number of classes C.

    Returns:
        float32 (..., C, H, W), numpy in -> numpy out, torch in -> torch out (same device).
    """
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi >= num_classes:
        raise EdgesegError(f"one_hot: labels span {lo}..{hi}, expected 0..{num_classes - 1}")
    if type(mask).__module__.startswith("torch"):
        import torch.nn.functional as F

        return F.one_hot(mask.long(), num_classes).movedim(-1, -3).float()
    classes = np.arange(num_classes).reshape(num_classes, 1, 1)
    return (np.asarray(mask)[..., None, :, :] == classes).astype(np.float32)


# ----------------------------------------------------------------------------- splitting


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
    slices that cut through them (:func:`edgeseg.volume.region_split`). ``"slabs"`` and
    ``"tutorial"`` are :func:`split_indices`: whole slices held out in their own plane only,
    so the other planes' training slices cross the held-out anatomy.
    """
    if mode == "regions":
        from edgeseg.volume import REGION_COUNT, REGION_RADIUS_MM, region_split

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


@dataclass
class HeldOut:
    """The slices a checkpoint is scored on, and the rest (for int8 calibration)."""

    slices: Slices
    train: list[int]
    test: list[int]
    source: str  # where they came from, for reports
    labels: list[np.ndarray] | None = None  # every pixel's label when slices.masks hold IGNORE


def checkpoint_split(ckpt: dict[str, Any], data: Path | None = None, split: str | None = None) -> HeldOut:
    """Held-out slices of a checkpoint, as ``edgeseg evaluate`` and ``edgeseg validate`` use them.

    Without ``data`` and ``split``: the keys the checkpoint recorded as held out, in the folder
    it was trained on (the demo set if that folder is gone). Otherwise ``split`` (default: the
    checkpoint's own split rule) applied to ``data`` (default: that same folder).
    """
    info, cfg = ckpt.get("data") or {}, ckpt.get("train_config") or {}
    root = Path(data) if data else Path(info.get("root") or "")
    if data is None and not (info.get("root") and root.is_dir()):
        root = build_demo()
    slices = load_slices(root, int(ckpt["model_config"]["num_classes"]))
    rule = split or cfg.get("split", "slabs")
    if rule == "regions":
        made = make_split(slices, rule, seed=cfg.get("seed", 0))
        scored = Slices(slices.root, slices.keys, slices.images, made.test_masks)
        return HeldOut(scored, made.train, made.test, f"{slices.root} ({made.note})", slices.masks)
    keys = set(info.get("test_keys") or []) if data is None and split is None else set()
    if keys and keys <= set(slices.keys):
        test = [i for i, k in enumerate(slices.keys) if k in keys]
        train = [i for i, k in enumerate(slices.keys) if k not in keys]
        return HeldOut(slices, train, test, f"{slices.root} (the checkpoint's {len(test)} held-out slices)")
    train, test = split_indices(len(slices), rule, cfg.get("test_fraction", 0.2), cfg.get("seed", 0))
    return HeldOut(slices, train, test, f"{slices.root} ({rule} split: {len(test)} held-out slices)")


# ----------------------------------------------------------------------------- training (torch)


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of training slices, drawn per (seed, epoch, index)."""

    hflip_p: float = 0.5  # left-right flip: brains are near-symmetric
    vflip_p: float = 0.0  # upside-down slices never reach the model at inference
    max_rotation_deg: float = 10.0  # rotation uniform in +-this; head tilt between scans
    scale_range: tuple[float, float] = (0.9, 1.1)  # isotropic zoom, uniform; head size varies
    gamma_range: tuple[float, float] = (0.7, 1.5)  # log-uniform gamma on [0, 1]-shifted intensities
    gain_range: tuple[float, float] = (0.9, 1.1)  # global intensity scale, uniform
    noise_std: float = 0.03  # Gaussian noise sigma ~ U(0, this) x the slice's intensity range
    brain_bias: float = 0.8  # chance a patch centre is drawn inside the brain's bounding box


def make_train_dataset(
    slices: Slices,
    indices: list[int],
    patch: int | None = None,
    augment: bool = True,
    seed: int = 0,
    config: AugmentConfig | None = None,
    normalize: bool = False,
) -> Dataset:
    """A torch Dataset over ``slices[indices]`` with seeded crops and augmentation.

    Items are ``(image float32 (1, h, w), mask int64 (h, w))``; ``h = w = patch``
    or the slice size. Each item's randomness depends only on (seed, epoch, item
    position in ``indices``), so runs repeat exactly whatever the DataLoader
    workers, and a slice listed twice gets two different draws; call
    ``set_epoch`` once per epoch. A patch centre is
    drawn inside the brain's bounding box with probability ``brain_bias``, else
    anywhere the patch fits. Augmentation (one affine warp: flips, rotation,
    scale; bilinear for images, nearest for masks, background fill; then gamma,
    gain and noise) runs in torch, a few ms for a 394x394 slice.

    Args:
        slices: loaded dataset.
        indices: which slices (e.g. the train half of :func:`split_indices`).
        patch: random square crop side, or None for whole slices.
        augment: apply random augmentation; False gives plain (cropped) slices.
        seed: base seed.
        config: augmentation parameters; default :class:`AugmentConfig`.
        normalize: z-score each item with the statistics of its *whole* (augmented) slice,
            as the model's own ``Normalize`` does at inference on whole slices. Training on
            patches then sees the same intensities as inference; feed such items to
            ``UNet.segment`` (which skips the model's normalisation), not ``UNet.forward``.

    Returns:
        A ``TrainSlices`` dataset.
    """
    return _train_slices_class()(slices, indices, patch, augment, seed, config, normalize)


@functools.cache
def _train_slices_class() -> type:
    """Define TrainSlices on first use, so importing this module never imports torch."""
    import torch
    import torch.nn.functional as F

    from edgeseg.model import NORM_EPS

    class TrainSlices(torch.utils.data.Dataset):
        """Seeded, augmented (image, mask) tensors; see :func:`make_train_dataset`."""

        def __init__(
            self,
            slices: Slices,
            indices: list[int],
            patch: int | None = None,
            augment: bool = True,
            seed: int = 0,
            config: AugmentConfig | None = None,
            normalize: bool = False,
        ) -> None:
            self.slices, self.indices = slices, [int(i) for i in indices]
            self.normalize = normalize
            self.patch, self.augment, self.seed = patch, augment, seed
            self.config = config or AugmentConfig()
            self.epoch = 0
            bad = [i for i in self.indices if not 0 <= i < len(slices)]
            if bad:
                raise EdgesegError(f"{slices.root}: slice indices {bad[:MAX_LISTED]} out of 0..{len(slices) - 1}")
            if patch is not None:
                small = [slices.keys[i] for i in self.indices if min(slices.images[i].shape) < patch]
                if patch < 1 or small:
                    raise EdgesegError(
                        f"{slices.root}: patch={patch} does not fit slices {small[:MAX_LISTED]}; "
                        "choose a patch between 1 and the smallest slice side"
                    )
            self.boxes = [self._brain_box(slices.masks[i]) for i in self.indices]

        @staticmethod
        def _brain_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            return None if rows.size == 0 else (rows[0], rows[-1], cols[0], cols[-1])

        def set_epoch(self, epoch: int) -> None:
            """Select the epoch's augmentation draws."""
            self.epoch = int(epoch)

        def __len__(self) -> int:
            return len(self.indices)

        def _centre(self, rng: np.random.Generator, i: int, shape: tuple[int, int]) -> tuple[float, float]:
            h, w = shape
            if self.patch is None:
                return (h - 1) / 2, (w - 1) / 2
            half = (self.patch - 1) / 2
            box = self.boxes[i]
            if box is not None and rng.random() < self.config.brain_bias:
                cy, cx = rng.uniform(box[0], box[1] + 1), rng.uniform(box[2], box[3] + 1)
            else:
                cy, cx = rng.uniform(half, h - 1 - half), rng.uniform(half, w - 1 - half)
            return float(np.clip(cy, half, h - 1 - half)), float(np.clip(cx, half, w - 1 - half))

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            image, mask = self.slices.images[self.indices[i]], self.slices.masks[self.indices[i]]
            cy, cx = self._centre(rng, i, image.shape)
            size = (self.patch, self.patch) if self.patch else image.shape
            if not self.augment:
                top, left = round(cy - (size[0] - 1) / 2), round(cx - (size[1] - 1) / 2)
                window = (slice(top, top + size[0]), slice(left, left + size[1]))
                x = torch.from_numpy(image[window].copy())[None]
                if self.normalize:
                    x = (x - float(image.mean(dtype=np.float64))) / np.sqrt(image.var(dtype=np.float64) + NORM_EPS)
                return x.float(), torch.from_numpy(mask[window].astype(np.int64))
            return self._augmented(rng, image, mask, (cy, cx), size)

        def _augmented(
            self,
            rng: np.random.Generator,
            image: np.ndarray,
            mask: np.ndarray,
            centre: tuple[float, float],
            size: tuple[int, int],
        ) -> tuple[torch.Tensor, torch.Tensor]:
            cfg, (h_in, w_in), (h, w) = self.config, image.shape, size
            angle = np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
            zoom = rng.uniform(*cfg.scale_range)
            flip = np.diag(
                [
                    -1.0 if rng.random() < cfg.hflip_p else 1.0,
                    -1.0 if rng.random() < cfg.vflip_p else 1.0,
                ]
            )
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            a = rot @ flip / zoom  # output pixel offset (x, y) -> input pixel offset
            # affine_grid works in [-1, 1] coordinates (align_corners=False): rescale both sides.
            theta = np.zeros((2, 3))
            theta[:, :2] = np.diag([1 / w_in, 1 / h_in]) @ a @ np.diag([w, h])
            theta[:, 2] = [(2 * centre[1] + 1) / w_in - 1, (2 * centre[0] + 1) / h_in - 1]
            grid = F.affine_grid(torch.tensor(theta, dtype=torch.float32)[None], [1, 1, h, w], align_corners=False)
            lo, span = float(image.min()), float(image.max() - image.min())
            x = torch.from_numpy(image - lo)[None, None]
            m = torch.from_numpy(mask.astype(np.float32))[None, None]
            warp = {"grid": grid, "padding_mode": "zeros", "align_corners": False}
            x = F.grid_sample(x, mode="bilinear", **warp)[0]  # (1, h, w), 0 = background
            m = F.grid_sample(m, mode="nearest", **warp)[0, 0]  # (h, w), labels stay labels
            if span == 0:
                x = x + lo if not self.normalize else x * 0  # a constant slice z-scores to 0
                return x.contiguous(), m.long()
            gamma = float(np.exp(rng.uniform(*np.log(cfg.gamma_range))))
            gain = rng.uniform(*cfg.gain_range)
            sigma = rng.uniform(0, cfg.noise_std)
            x = (x / span).clamp_(0, 1).pow_(gamma).mul_(gain)
            x += torch.from_numpy(rng.standard_normal((1, h, w), dtype=np.float32)) * sigma
            if not self.normalize:
                return (x * span + lo).contiguous(), m.long()
            # The whole augmented slice's mean and variance (noise adds sigma^2), in units of span:
            # what the model's Normalize would compute on the full slice at inference.
            full = ((image - lo) / span).clip(0, 1).astype(np.float64) ** gamma * gain
            mean, var = full.mean(), full.var() + sigma**2
            return ((x - mean) / np.sqrt(var + NORM_EPS / span**2)).float().contiguous(), m.long()

    TrainSlices.__module__ = __name__
    TrainSlices.__qualname__ = "TrainSlices"
    return TrainSlices


def __getattr__(name: str) -> Any:
    """Create ``TrainSlices`` (and import torch) only when someone asks for it."""
    if name == "TrainSlices":
        return _train_slices_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
