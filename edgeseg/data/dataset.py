"""Data stage: load and validate tutorial-layout slices (numpy only).

The tutorial layout is ``ROOT/MRIs/<name>_<ix>.npy`` (2-D raw intensities) and
``ROOT/Segmentations/segm_<ix>.npy`` (2-D label maps 0..C-1), paired by ``ix``.
:func:`load_slices` reads and validates a whole dataset once; every problem is
an :class:`EdgesegError` naming the file. :func:`build_demo` writes such a
dataset from the MNI152 template that ships inside nilearn (see :mod:`edgeseg.data.demo`):

    edgeseg data demo --out DIR

Splitting into training and held-out data is :mod:`edgeseg.data.split`; the training patches
(torch) are :mod:`edgeseg.data.augment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

LAYOUT = "ROOT/MRIs/<name>_<ix>.npy images and ROOT/Segmentations/segm_<ix>.npy masks"
MAX_LISTED = 10  # file names listed in one error message before "and N more"

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
    from edgeseg.sizes import check_npy_header

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
