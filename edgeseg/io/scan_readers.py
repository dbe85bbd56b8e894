"""Decoding one scan file: :class:`Decoded`, and the .npy, PNG/JPEG/TIFF, NIfTI and DICOM readers.

Torch-free. Every reader returns a :class:`Decoded`: a ``(S, H, W)`` stack of raw
intensities in the orientation the model was trained on (a view over the file's own
dtype, memory-mapped where the format allows), the scaling to apply per batch, and a
``restore`` that puts ``(S, H, W)`` labels back into the input's own voxel order, so a
label volume shares the input's affine exactly. Anything wrong with a file raises
EdgesegError naming it; writers live in :mod:`edgeseg.io.outputs`. :func:`edgeseg.io.scans.read_scan`
picks the reader and checks the result against the model; it lives apart because these
readers know formats, not models.

Volumes (NIfTI, DICOM) are sliced along ``axis`` of the input array by :func:`slice_volume`.
The default is the acquisition axis (the one with clearly the thickest voxels), else, for
near-isotropic data, the axis closest to inferior-superior (axial slices). Each slice is
reoriented to the demo set's layout (RAS-closest axes, superior/anterior at the top row),
because that is what the network saw in training; ``restore`` undoes it exactly.
:func:`resample` is here beside :class:`Decoded`, whose batches it resamples to the model's grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError, describe
from edgeseg.sizes import MAX_GUNZIPPED_BYTES, BudgetGzip, check_claimed_size, check_npy_header

THICK_RATIO = 1.2  # a voxel this much thicker than the others marks the acquisition axis
# Headers are checked against the file before anything is allocated (see check_claimed_size).


@dataclass
class Decoded:
    """One scan, decoded: a stack of slices for the model and how to put labels back."""

    stack: np.ndarray  # (S, H, W) raw values in model orientation, any real dtype
    restore: Callable[[np.ndarray], np.ndarray]  # (S, H, W) uint8 -> input layout
    shape: tuple[int, ...]  # the input array's shape, for the summary
    slope: float = 1.0  # intensity = raw * slope + inter
    inter: float = 0.0
    voxel_ml: float | None = None  # volume of one voxel, when the geometry is known
    template: Any = None  # NIfTI image whose header/affine the label volume copies
    notes: list[str] = field(default_factory=list)
    spacing: tuple[float, float] | None = None  # mm per stack row and column; None: unknown
    model_size: tuple[int, int] | None = None  # (H, W) the model sees; None: slices as they are
    sources: tuple[tuple[Path, int], ...] = ()  # DICOM with full geometry: (file, frame) of each slice
    brain: np.ndarray | None = None  # --skull-strip: (S, H, W) bool brain mask, model orientation
    brain_raw: np.ndarray | None = None  # the same mask in the input's voxel order, to write
    identifiers: dict[str, str] = field(default_factory=dict)  # DICOM: PatientID, StudyInstanceUID, ...
    raw: np.ndarray | None = None  # volumes: the input array (a view, no copy), for the mosaic's own plane
    oriented: bool = True  # False: the affine does not place the patient (no DICOM geometry, NIfTI codes 0)

    @property
    def model_shape(self) -> tuple[int, int]:
        """(H, W) of the slices the model sees."""
        return self.model_size or self.stack.shape[1:]

    def batch(self, start: int, stop: int, source: Path, size: tuple[int, int] | None = None) -> np.ndarray:
        """Slices ``start:stop`` as float32 ``(n, 1, H, W)``; NaN/Inf is an error.

        ``size``: resample the slices linearly to this ``(H, W)`` (e.g. ``model_size``).
        """
        x = np.asarray(self.stack[start:stop], dtype=np.float32)
        if self.slope != 1.0 or self.inter != 0.0:
            x = x * np.float32(self.slope) + np.float32(self.inter)
        if not np.isfinite(x).all():
            bad = start + int(np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(1))[0])
            raise EdgesegError(f"{source}: slice {bad} holds NaN or Inf; fix or mask the scan")
        if size is not None and size != x.shape[1:]:
            x = resample(x, size, order=1)
        return np.ascontiguousarray(x[:, None])


def resample(x: np.ndarray, size: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resample the last two axes of ``x`` to ``size``, keeping the field of view.

    Args:
        x: ``(..., H, W)`` float array.
        size: the new ``(H, W)``.
        order: 1 for linear (intensities, logits), 0 for nearest.

    Returns:
        ``(..., *size)`` of ``x``'s dtype. Pixel corners are aligned (``grid_mode``), so
        pixel centres map as ``(i + 0.5) * H / size[0] - 0.5``; edges are replicated.
        The same values as ``scipy.ndimage.zoom(..., mode="nearest", grid_mode=True)``
        (tests/cli/test_install_profile.py checks it), in numpy: scipy is 143 MB of an edge install.
    """
    (r0, r1, wr), (c0, c1, wc) = _taps(x.shape[-2], size[0], order), _taps(x.shape[-1], size[1], order)
    planes = x.reshape(-1, *x.shape[-2:])
    out = np.empty((len(planes), *size), dtype=x.dtype)
    for plane, target in zip(planes, out, strict=True):  # one plane at a time bounds the float64 temporaries
        if order == 0:
            target[:] = plane[r0][:, c0]
        else:
            rows = plane[r0] * (1 - wr)[:, None] + plane[r1] * wr[:, None]
            target[:] = rows[:, c0] * (1 - wc) + rows[:, c1] * wc
    return out.reshape(*x.shape[:-2], *size)


def _taps(n_in: int, n_out: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lower, upper) and the upper one's weight for each of ``n_out`` samples of an axis."""
    centre = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)  # edges replicated
    if order == 0:
        nearest = np.floor(centre + 0.5).astype(np.intp)  # ties round up, as scipy's order 0 does
        return nearest, nearest, np.zeros(n_out)
    lower = np.minimum(np.floor(centre).astype(np.intp), max(n_in - 2, 0))
    return lower, np.minimum(lower + 1, n_in - 1), centre - lower


def read_npy(path: Path) -> Decoded:
    check_npy_header(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # pickled objects, truncated, not .npy
        raise EdgesegError(f"{path}: not a readable .npy array ({describe(exc, 240, typed=True)})") from exc
    if not isinstance(arr, np.ndarray):
        raise EdgesegError(f"{path}: an .npz archive, not one array; save each with np.save")
    _check_dtype(path, arr.dtype)
    if arr.ndim == 2:
        return Decoded(arr[None], lambda lab: lab[0], arr.shape)
    if arr.ndim == 3:
        return Decoded(arr, lambda lab: lab, arr.shape)
    raise EdgesegError(f"{path}: array of shape {arr.shape}; expected (H, W) or (D, H, W)")


def read_image(path: Path) -> Decoded:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.width * img.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise Image.DecompressionBombError(f"{img.width}x{img.height}")
            if getattr(img, "n_frames", 1) > 1:
                raise EdgesegError(f"{path}: {img.n_frames} pages; save a volume as .npy or .nii")
            img.load()
            mode, notes = img.mode, []
            if mode not in ("L", "I", "F", "I;16", "I;16B", "I;16L", "1"):
                notes.append(f"{path.name}: {mode} image converted to grayscale (luma)")
                img = img.convert("L")
            arr = np.array(img)
    except Image.DecompressionBombError:
        raise EdgesegError(
            f"{path}: the image header claims more than {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow's"
            " decompression-bomb limit; a damaged or malicious file, or save such a scan as .npy"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise EdgesegError(f"{path}: not a readable image ({describe(exc, 240, typed=True)})") from exc
    return Decoded(arr[None], lambda lab: lab[0], arr.shape, notes=notes)


def read_nifti(path: Path, axis: int | None, min_size: int, budget: int = MAX_GUNZIPPED_BYTES) -> Decoded:
    """``budget``: what a .nii.gz may decompress to (see :class:`edgeseg.sizes.BudgetGzip`)."""
    gzipped, stream = path.name.lower().endswith(".gz"), None
    try:
        stream = BudgetGzip(path, budget) if gzipped else None
        img = _load_nifti(path, stream)
        header = img.header
        check_claimed_size(
            path,
            "NIfTI file",
            header.get_data_shape(),
            header.get_data_dtype(),
            max(int(header.get_data_offset()), header.sizeof_hdr),
            gzipped=gzipped,
            budget=budget,
        )
        proxy = img.dataobj
        raw = proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy)
    except EdgesegError:
        raise
    except Exception as exc:  # ImageFileError, EOFError/zlib.error (truncated), bad header
        raise EdgesegError(f"{path}: not a readable NIfTI file ({describe(exc, 240, typed=True)})") from exc
    finally:
        if stream is not None:
            stream.close()
    _check_dtype(path, raw.dtype)
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim == 2:
        raw = raw[..., None]
    if raw.ndim != 3:
        raise EdgesegError(
            f"{path}: NIfTI of shape {raw.shape}; expected a 3-D volume (extract one volume"
            " of a 4-D series first, e.g. with fslroi)"
        )
    dec = slice_volume(path, raw, img.affine, nifti_zooms_mm(img), axis, min_size)
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    dec.slope, dec.inter = float(slope), float(inter)
    dec.shape, dec.template = tuple(img.shape), img
    dec.oriented = bool(img.get_qform(coded=True)[1] or img.get_sform(coded=True)[1])  # codes 0: unknown
    dec.voxel_ml = float(np.prod(nifti_zooms_mm(img))) / 1000.0
    return dec


def read_dicom(path: Path, files: tuple[Path, ...], axis: int | None, min_size: int) -> Decoded:
    """A DICOM series (:func:`edgeseg.io.dicom.read_dicom_series`) sliced as a volume, with its geometry."""
    from edgeseg.io.dicom import read_dicom_series

    series = read_dicom_series(path, files or (path,))
    dec = slice_volume(path, series.raw, series.affine, _zooms(series.affine), axis, min_size)
    dec.template, dec.voxel_ml, dec.notes = (_nifti_template(series.affine), series.voxel_ml, series.notes)
    if not series.spacing_known:
        dec.spacing = None  # never resample on a guessed pixel size
    dec.slope, dec.inter = series.slope, series.inter
    dec.identifiers = series.identifiers
    if series.positioned and series.spacing_known:  # a DICOM SEG can place its frames
        dec.sources = series.sources
    dec.oriented = series.positioned
    return dec


def _load_nifti(path: Path, stream: BudgetGzip | None) -> Any:
    """nibabel's image of ``path``; a .nii.gz is read through ``stream``, its class picked as
    ``nib.load`` picks it, from a sniff of the header."""
    import nibabel as nib

    img = nib.load(path) if stream is None else None
    klass = type(img) if img is not None else _image_class(path)
    if not issubclass(klass, nib.Nifti1Image | nib.Nifti2Image):  # e.g. a CIFTI-2 surface file
        kind = klass.__name__.removesuffix("Image").replace("Cifti2", "CIFTI-2")
        raise EdgesegError(f"{path}: not a NIfTI-1/2 image volume ({kind} data, not voxels); give a 3-D NIfTI volume")
    return img if img is not None else klass.from_stream(stream)


def _image_class(path: Path) -> Any:
    """The nibabel image class ``nib.load`` would use for ``path``, from its header's first bytes."""
    import nibabel as nib

    sniff = None
    for klass in nib.imageclasses.all_image_classes:
        found, sniff = klass.path_maybe_image(path, sniff)
        if found:
            return klass
    raise nib.filebasedimages.ImageFileError(f"Cannot work out file type of {path.name!r}")


def nifti_zooms_mm(img: Any) -> tuple[float, float, float]:
    """Voxel size in mm of a NIfTI image, honouring its spatial unit (unknown means mm)."""
    unit = img.header.get_xyzt_units()[0]
    scale = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
    zooms = list(img.header.get_zooms()[:3]) + [1.0] * 3
    return tuple(float(z) * scale for z in zooms[:3])  # type: ignore[return-value]


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise EdgesegError(f"{path}: unsupported data type {dtype}; expected a real-valued (int or float) image")


def _zooms(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(0)))  # type: ignore


def default_axis(shape: tuple[int, ...], zooms: tuple[float, ...], affine: np.ndarray, min_size: int) -> int:
    """The slicing axis: acquisition axis if voxels are clearly thickest there, else axial."""
    import nibabel as nib

    fits = [a for a in range(3) if min(s for i, s in enumerate(shape) if i != a) >= min_size]
    if len(fits) <= 1:
        return fits[0] if fits else 2
    order = np.argsort(zooms)
    if zooms[order[2]] > THICK_RATIO * zooms[order[1]] and int(order[2]) in fits:
        return int(order[2])
    ras_axis = nib.orientations.io_orientation(affine)[:, 0]
    axial = [a for a in fits if ras_axis[a] == 2]
    return axial[0] if axial else fits[-1]


def slice_volume(
    path: Path, raw: np.ndarray, affine: np.ndarray, zooms: tuple[float, ...], axis: int | None, min_size: int
) -> Decoded:
    """Slice a 3-D array along ``axis`` into model orientation, with the exact inverse."""
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    if axis is None:
        axis = default_axis(raw.shape, zooms, affine, min_size)
    if axis not in (0, 1, 2):
        raise EdgesegError(f"{path}: --axis {axis} is not an axis of a 3-D volume; use 0, 1 or 2")
    ornt = io_orientation(affine)  # voxel axis -> (closest RAS axis, flip)
    back = ornt_transform(np.array([[0, 1], [1, 1], [2, 1]]), ornt)
    ras_slice_axis = int(ornt[axis, 0])
    moved = np.moveaxis(apply_orientation(raw, ornt), ras_slice_axis, 0)  # (S, a, b)
    stack = moved.transpose(0, 2, 1)[:, ::-1, :]  # rows: b from superior/anterior down
    ras_mm = dict(zip(ornt[:, 0].astype(int).tolist(), zooms, strict=True))
    a, b = (r for r in range(3) if r != ras_slice_axis)

    def restore(labels: np.ndarray) -> np.ndarray:
        ras = np.moveaxis(labels[:, ::-1, :].transpose(0, 2, 1), 0, ras_slice_axis)
        return np.ascontiguousarray(apply_orientation(ras, back))

    return Decoded(stack, restore, tuple(raw.shape), spacing=(ras_mm[b], ras_mm[a]), raw=raw)


def _nifti_template(affine: np.ndarray) -> Any:
    """A NIfTI image carrying ``affine`` as both qform and sform (code 1, scanner)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img
