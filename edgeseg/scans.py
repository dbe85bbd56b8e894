"""Scans for `edgeseg infer`: finding them, and reading .npy, PNG/JPEG/TIFF, NIfTI, DICOM.

Torch-free. Every reader returns a :class:`Decoded`: a ``(S, H, W)`` stack of raw
intensities in the orientation the model was trained on (a view over the file's own
dtype, memory-mapped where the format allows), the scaling to apply per batch, and a
``restore`` that puts ``(S, H, W)`` labels back into the input's own voxel order, so a
label volume shares the input's affine exactly. Anything wrong with a file raises
EdgesegError naming it. Writers live in :mod:`edgeseg.outputs`.

Volumes (NIfTI, DICOM) are sliced along ``axis`` of the input array. The default is
the acquisition axis (the one with clearly the thickest voxels), else, for near-isotropic
data, the axis closest to inferior-superior (axial slices). Each slice is reoriented to
the demo set's layout (RAS-closest axes, superior/anterior at the top row), because
that is what the network saw in training; ``restore`` undoes it exactly.

Given the model's training pixel spacing, :func:`read_scan` also plans in-plane
resampling (``Decoded.model_size``) for scans whose pixel size is known (NIfTI zooms,
DICOM PixelSpacing; never .npy or images): ``batch(..., size)`` resamples each batch
linearly, and :func:`resample` brings per-batch logits back to the scan's own grid. Both
map the slice's full field of view onto itself (pixel corners aligned, as nnU-Net's
resize does), so only batches, never a whole volume, exist at the model's resolution.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError, describe
from edgeseg.names import LABEL_SUFFIXES, stem, with_stem, written_by_edgeseg
from edgeseg.sizes import MAX_GUNZIPPED_BYTES, BudgetGzip, check_claimed_size, check_npy_header

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_EXTS = (".dcm", ".ima")
THICK_RATIO = 1.2  # a voxel this much thicker than the others marks the acquisition axis
SPACING_MATCH = 0.01  # relative pixel-size difference within which slices are not resampled
# Most pixels a slice may grow to by resampling (`edgeseg infer --max-resampled-pixels`): a
# 512 mm field of view at 0.5 mm pixels. The model's memory and time go with the pixels it sees.
MAX_RESAMPLED_PIXELS = 1024 * 1024
SUPPORTED = ".npy, .png, .jpg, .tif, .nii, .nii.gz, .dcm (or a DICOM series folder)"
# Headers are checked against the file before anything is allocated (see check_claimed_size).


@dataclass(frozen=True)
class Scan:
    """One unit of work: a file, or a DICOM series folder with its files."""

    path: Path
    kind: str  # npy | image | nifti | dicom
    rel: Path  # labels file, relative to the output root
    files: tuple[Path, ...] = ()
    series: str = ""  # DICOM: which series of its folder (``series 3 'T1' echo 2``), for messages


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
        (tests/test_install_profile.py checks it), in numpy: scipy is 143 MB of an edge install.
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


def kind_of(path: Path) -> str | None:
    """``npy | image | nifti | dicom`` from the file name, None if unsupported."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    suffix = Path(name).suffix
    if suffix == ".npy":
        return "npy"
    if suffix in IMAGE_EXTS:
        return "image"
    return "dicom" if suffix in DICOM_EXTS else None


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def output_name(path: Path, kind: str) -> str:
    """File name of the labels for input ``path`` (a file, or a DICOM folder)."""
    return _base(path.name) + LABEL_SUFFIXES[kind]


def _base(name: str) -> str:
    """``name`` without its scan extension: ``x`` for ``x.nii.gz``, ``x.png``, ..."""
    for ext in (".nii.gz", ".nii", *IMAGE_EXTS, *DICOM_EXTS, ".npy"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def discover_scans(
    inputs: Sequence[Path], out: Path, series: str | None = None, force: bool = False
) -> tuple[list[Scan], list[tuple[Path, str]], list[Path], list[tuple[Path, str]]]:
    """Scans under ``inputs`` (recursively), never inside ``out``.

    Args:
        inputs, out: files and folders; the output root.
        series, force: DICOM selection, see :func:`edgeseg.dicom.group_series`.

    Returns:
        ``(scans, problems, ignored, skipped)``: problems are (path, reason) for inputs that
        are missing, unsupported, symbolic-link loops, collide on an output name or are
        damaged DICOM; ignored are the files of other types met inside folders; skipped are
        (path, reason) for DICOM files that hold no image to segment (a DICOMDIR, reports,
        SEG, ...), series not selected and series triaged out (:mod:`edgeseg.triage`): no failure.
    """
    out_root = _resolve(Path(out), "--out")
    scans, problems, ignored, skipped = [], [], [], []
    for given in inputs:
        path = Path(given)
        try:
            resolved = _resolve(path)
        except EdgesegError as exc:
            problems.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        if resolved == out_root:
            raise EdgesegError(f"{path}: --out is the input folder itself; choose another --out")
        if resolved.is_relative_to(out_root):
            raise EdgesegError(f"{path} is inside --out {out}; choose an --out outside the inputs")
        if path.is_dir():
            found, loops, other, dicom = _walk(path, out_root)
            scans.extend(found)
            problems.extend(loops)
            ignored.extend(other)
            for folder, rel, files in dicom:
                _dicom_scans(folder, rel, files, series, force, scans, problems, skipped, skipped)
        elif path.is_file() and (suffix := written_by_edgeseg(path.name)):
            problems.append((path, f"{WRITTEN_BY_EDGESEG} (its name ends in {suffix}); rename it if it is a scan"))
        elif path.is_file() and kind_of(path) not in (None, "dicom"):
            kind = kind_of(path)
            scans.append(Scan(path, kind, Path(output_name(path, kind)), (path,)))
        elif path.is_file() and (kind_of(path) or is_dicom_file(path)):
            # named: a file with no image is a failure, a series triaged out a skip
            _dicom_scans(
                path, Path(output_name(path, "dicom")), (path,), series, force, scans, problems, problems, skipped
            )
        else:
            problems.append(
                (path, "does not exist" if not path.exists() else f"unsupported file type; expected {SUPPORTED}")
            )
    kept, collisions = _unique_names(scans)
    return kept, problems + collisions, ignored, skipped


def _dicom_scans(
    where: Path,
    rel: Path,
    files: tuple[Path, ...],
    series: str | None,
    force: bool,
    scans: list[Scan],
    problems: list,
    skipped: list,
    triaged: list,
) -> None:
    """One Scan per image volume among ``files`` (a folder's, or one file); ``rel`` names the first.

    Files with no image go to ``skipped``, series triaged out (:mod:`edgeseg.triage`) to ``triaged``."""
    from edgeseg.dicom import group_series

    grouping = group_series(files, series, force)
    skipped.extend(grouping.skipped)
    problems.extend(grouping.failed)
    triaged.extend(grouping.triaged)
    several = len(grouping.groups) > 1
    numbers = [g.number for g in grouping.groups]
    for group in grouping.groups:
        name = rel.name
        if several:  # <folder>_S3_E2_seg.nii.gz; the UID's tail where SeriesNumbers do not tell apart
            tag = (
                f"S{group.number}"
                if group.number and numbers.count(group.number) == 1
                else ("S" + group.uid.replace(".", "")[-8:])
            )
            tag += "".join(f"_{k}{v}" for k, v in group.split)
            name = with_stem(rel, f"{stem(rel)}_{tag}").name
        scans.append(
            Scan(where, "dicom", rel.parent / name, group.files, group.describe() if several or series else "")
        )


LOOP = "a symbolic link that loops back on itself; fix or remove the link"
WRITTEN_BY_EDGESEG = "an output of edgeseg, not a scan: never segmented again"


def _resolve(path: Path, option: str = "") -> Path:
    """``path.resolve()``, with a symbolic-link loop as one EdgesegError line."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # "Symlink loop" (3.11/3.12), ELOOP (3.13+)
        raise EdgesegError(f"{option + ' ' if option else ''}{path}: {LOOP}") from None


def _walk(root: Path, out_root: Path) -> tuple[list[Scan], list[tuple[Path, str]], list[Path], list]:
    """Files by extension and DICOM folders under ``root``; hidden names and out pruned.

    Returns ``(scans, loops, ignored, dicom)``: symbolic-link loops among the files, files
    of other types, and ``(folder, rel, files)`` for each folder holding DICOM files (a
    DICOMDIR among them, to be skipped with its reason).
    """
    scans, loops, ignored, dicom_folders = [], [], [], []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != out_root)
        dicom = []
        for name in sorted(f for f in files if not f.startswith(".")):
            path, kind = here / name, kind_of(here / name)
            if os.path.islink(path) and not os.path.exists(path) and _is_loop(path):
                loops.append((path, LOOP))
            elif written_by_edgeseg(name):  # an earlier run's output in the tree: not a scan
                ignored.append(path)
            elif kind == "dicom" or (kind is None and (name == "DICOMDIR" or is_dicom_file(path))):
                dicom.append(path)
            elif kind:
                scans.append(Scan(path, kind, path.relative_to(root).parent / output_name(path, kind)))
            else:
                ignored.append(path)
        if dicom:
            rel = here.relative_to(root)
            name = output_name(here.resolve() if rel == Path(".") else here, "dicom")
            dicom_folders.append((here, rel.parent / name, tuple(dicom)))
    return scans, loops, ignored, dicom_folders


def _is_loop(path: Path) -> bool:
    try:
        path.resolve()
    except (RuntimeError, OSError):
        return True
    return False


def _unique_names(scans: list[Scan]) -> tuple[list[Scan], list[tuple[Path, str]]]:
    """Scans whose outputs share no name: where stems collide in a folder (``a.npy`` and
    ``a.png`` both write ``a_stats.json``), each keeps its input's extension (``a.npy_seg.npy``,
    ``a.png_seg.png``); scans that still collide are dropped and reported.

    Stems are compared ignoring case, so outputs stay apart on case-insensitive file systems.
    """
    counts = Counter(map(_stem_key, scans))
    seen: dict[str, Scan] = {}
    kept, problems = [], []
    for scan in scans:
        if counts[_stem_key(scan)] > 1:
            scan = replace(scan, rel=_with_extension(scan))
        key = _stem_key(scan)
        if key in seen:
            first = seen[key]
            why = f"its outputs would take the names of {first.path}'s ({first.rel}); rename one"
            problems.append((scan.path, why))
        else:
            seen[key] = scan
            kept.append(scan)
    return kept, problems


def _stem_key(scan: Scan) -> str:
    return str(scan.rel.parent / stem(scan.rel)).casefold()


def _with_extension(scan: Scan) -> Path:
    """``scan.rel`` with its input's extension kept: ``a.npy_seg.npy`` for ``a.npy``."""
    name = scan.path.name
    base, old = _base(name), stem(scan.rel)
    if base == name or not old.startswith(base):  # a folder, or one named otherwise: nothing to keep
        return scan.rel
    return with_stem(scan.rel, name + old[len(base) :])


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
        path, kind, files: the scan, as :func:`discover_scans` found it.
        axis: volume axis to slice along; None: see :func:`default_axis`.
        min_size: smallest H and W the model accepts, checked on the slices it will see.
        model_mm: the model's training pixel spacing; when given and the scan's is known,
            ``model_size`` is set for slices more than 1 % off it.
       skull_strip: strip the skull first (:mod:`edgeseg.skullstrip`): NIfTI and DICOM only.
        max_pixels: most pixels (H x W) a slice may have once resampled, unless it has as
            many already: a 16x16 slice of 100 mm pixels would become 3200x3200 at 0.5 mm.
        max_gunzipped: most bytes a .nii.gz may decompress to, its header included.
    """
    if kind == "npy":
        dec = _read_npy(path)
    elif kind == "image":
        dec = _read_image(path)
    elif kind == "nifti":
        dec = _read_nifti(path, axis, min_size, max_gunzipped)
    else:
        from edgeseg.dicom import read_dicom_series

        series = read_dicom_series(path, files or (path,))
        dec = _volume(path, series.raw, series.affine, _zooms(series.affine), axis, min_size)
        dec.template, dec.voxel_ml, dec.notes = (_nifti_template(series.affine), series.voxel_ml, series.notes)
        if not series.spacing_known:
            dec.spacing = None  # never resample on a guessed pixel size
        dec.slope, dec.inter = series.slope, series.inter
        dec.identifiers = series.identifiers
        if series.positioned and series.spacing_known:  # a DICOM SEG can place its frames
            dec.sources = series.sources
        dec.oriented = series.positioned
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
    from edgeseg.skullstrip import brain_mask

    if dec.template is None:
        raise EdgesegError(f"{path}: --skull-strip needs a volume (NIfTI or DICOM), not a single image")
    volume = dec.restore(np.asarray(dec.stack, np.float32) * np.float32(dec.slope) + np.float32(dec.inter))
    affine, zooms = dec.template.affine, nifti_zooms_mm(dec.template)
    mask = brain_mask(path, volume, affine)
    stripped = _volume(path, np.where(mask, volume, np.float32(0)), affine, zooms, axis, min_size)
    dec.stack, dec.slope, dec.inter = stripped.stack, 1.0, 0.0  # same slicing: same call, same shape
    dec.raw = stripped.raw
    dec.brain = np.ascontiguousarray(_volume(path, mask, affine, zooms, axis, min_size).stack)
    dec.brain_raw = mask


def _read_npy(path: Path) -> Decoded:
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


def _read_image(path: Path) -> Decoded:
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


def _read_nifti(path: Path, axis: int | None, min_size: int, budget: int = MAX_GUNZIPPED_BYTES) -> Decoded:
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
    dec = _volume(path, raw, img.affine, nifti_zooms_mm(img), axis, min_size)
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    dec.slope, dec.inter = float(slope), float(inter)
    dec.shape, dec.template = tuple(img.shape), img
    dec.oriented = bool(img.get_qform(coded=True)[1] or img.get_sform(coded=True)[1])  # codes 0: unknown
    dec.voxel_ml = float(np.prod(nifti_zooms_mm(img))) / 1000.0
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


def _volume(
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
