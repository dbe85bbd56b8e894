"""Reading a scan for the model: the reader for its format, resampling planned, sizes checked.

Torch-free. :func:`read_scan` is what `edgeseg infer` calls on each :class:`~edgeseg.io.scan_files.Scan`
that :func:`edgeseg.io.scan_files.discover_scans` found: it decodes the file with the reader of its
format (:mod:`edgeseg.io.scan_readers`, which returns a :class:`~edgeseg.io.scan_readers.Decoded`),
strips the skull when asked (:mod:`edgeseg.io.skullstrip`), and refuses, naming the file, what
the model cannot take: an empty scan, slices smaller than its ``min_size``, or slices that
resampling would shrink below it or grow past ``--max-resampled-pixels``.

Given the model's training pixel spacing, :func:`read_scan` also plans in-plane
resampling (``Decoded.model_size``) for scans whose pixel size is known (NIfTI zooms,
DICOM PixelSpacing; never .npy or images): ``batch(..., size)`` resamples each batch
linearly, and :func:`edgeseg.io.scan_readers.resample` brings per-batch logits back to the scan's
own grid. Both map the slice's full field of view onto itself (pixel corners aligned, as
nnU-Net's resize does), so only batches, never a whole volume, exist at the model's resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.io.scan_readers import (
    Decoded,
    nifti_zooms_mm,
    read_dicom,
    read_image,
    read_nifti,
    read_npy,
    slice_volume,
)
from edgeseg.sizes import MAX_GUNZIPPED_BYTES

SPACING_MATCH = 0.01  # relative pixel-size difference within which slices are not resampled
# Most pixels a slice may grow to by resampling (`edgeseg infer --max-resampled-pixels`): a
# 512 mm field of view at 0.5 mm pixels. The model's memory and time go with the pixels it sees.
MAX_RESAMPLED_PIXELS = 1024 * 1024


def read_scan(
    path: Path,
    kind: str,
    files: tuple[Path, ...] = (),
    axis: int | None = None,
    min_size: int = 16,
    model_mm: float | None = None,
    skull_strip: bool = False,
    max_pixels: int = MAX_RESAMPLED_PIXELS,
    max_gunzipped: int = MAX_GUNZIPPED_BYTES,
) -> Decoded:
    """Decode one scan; EdgesegError (naming ``path``) for anything unusable.

    Args:
        path, kind, files: the scan, as :func:`edgeseg.io.scan_files.discover_scans` found it.
        axis: volume axis to slice along; None: see :func:`edgeseg.io.scan_readers.default_axis`.
        min_size: smallest H and W the model accepts, checked on the slices it will see.
        model_mm: the model's training pixel spacing; when given and the scan's is known,
            ``model_size`` is set for slices more than 1 % off it.
       skull_strip: strip the skull first (:mod:`edgeseg.io.skullstrip`): NIfTI and DICOM only.
        max_pixels: most pixels (H x W) a slice may have once resampled, unless it has as
            many already: a 16x16 slice of 100 mm pixels would become 3200x3200 at 0.5 mm.
        max_gunzipped: most bytes a .nii.gz may decompress to, its header included.
    """
    if kind == "npy":
        dec = read_npy(path)
    elif kind == "image":
        dec = read_image(path)
    elif kind == "nifti":
        dec = read_nifti(path, axis, min_size, max_gunzipped)
    else:
        dec = read_dicom(path, files, axis, min_size)
    if dec.stack.size == 0:
        raise EdgesegError(f"{path}: empty scan (shape {dec.shape}); nothing to segment")
    if skull_strip:
        _skull_strip(path, dec, axis, min_size)
    h, w = dec.stack.shape[1:]
    dec.model_size = model_grid(dec.spacing, (h, w), model_mm)
    _check_resampled_size(path, dec, model_mm, min_size, max_pixels)
    if not dec.model_size and min(h, w) < min_size:
        raise EdgesegError(
            f"{path}: slices of {h}x{w} are too small for this model (H and W must be >="
            f" {min_size}); pad or resample the scan"
        )
    return dec


def _check_resampled_size(path: Path, dec: Decoded, model_mm: float | None, min_size: int, max_pixels: int) -> None:
    """Refuse slices that resampling would make too small for the model, or grow past
    ``max_pixels`` unless they are that big already (the model's work goes with its pixels)."""
    (h, w), size = dec.stack.shape[1:], dec.model_size
    if not size or (min(size) >= min_size and size[0] * size[1] <= max(max_pixels, h * w)):
        return
    rows_mm, cols_mm = dec.spacing  # type: ignore[misc]  # model_size implies spacing
    become = f"{path}: slices of {h}x{w} at {rows_mm:g}x{cols_mm:g} mm become {size[0]}x{size[1]}"
    if min(size) < min_size:
        raise EdgesegError(
            f"{become} at the model's {model_mm:g} mm pixels, too small for it (H and W must be >="
            f" {min_size}); pad the scan, or pass --no-resample to segment it at its own pixel size"
        )
    raise EdgesegError(
        f"{become} ({size[0] * size[1]:,} pixels) at the model's {model_mm:g} mm pixels, more than"
        f" --max-resampled-pixels {max_pixels:,}; check the pixel size in the scan's header, pass"
        " --no-resample to segment it at its own pixel size, or raise --max-resampled-pixels"
    )


def _skull_strip(path: Path, dec: Decoded, axis: int | None, min_size: int) -> None:
    """Replace ``dec``'s slices by the skull-stripped volume's and keep the brain mask."""
    from edgeseg.io.skullstrip import brain_mask

    if dec.template is None:
        raise EdgesegError(f"{path}: --skull-strip needs a volume (NIfTI or DICOM), not a single image")
    volume = dec.restore(np.asarray(dec.stack, np.float32) * np.float32(dec.slope) + np.float32(dec.inter))
    affine, zooms = dec.template.affine, nifti_zooms_mm(dec.template)
    mask = brain_mask(path, volume, affine)
    stripped = slice_volume(path, np.where(mask, volume, np.float32(0)), affine, zooms, axis, min_size)
    dec.stack, dec.slope, dec.inter = stripped.stack, 1.0, 0.0  # same slicing: same call, same shape
    dec.raw = stripped.raw
    dec.brain = np.ascontiguousarray(slice_volume(path, mask, affine, zooms, axis, min_size).stack)
    dec.brain_raw = mask


def model_grid(
    spacing: tuple[float, float] | None, shape: tuple[int, int], model_mm: float | None
) -> tuple[int, int] | None:
    """Slice size at the model's pixel spacing; None when unknown or within SPACING_MATCH."""
    if spacing is None or model_mm is None:
        return None
    size = tuple(
        n if abs(mm / model_mm - 1) <= SPACING_MATCH else max(1, round(n * mm / model_mm))
        for n, mm in zip(shape, spacing, strict=True)
    )
    return size if size != tuple(shape) else None  # type: ignore[return-value]
