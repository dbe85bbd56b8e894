"""DICOM series -> voxel array + NIfTI (RAS) affine, for `edgeseg infer`. Torch-free.

A series is a folder of single-frame files or one (enhanced) multi-frame file. Pixel
values get RescaleSlope/RescaleIntercept. Slices are sorted by ImagePositionPatient
projected on the slice normal (row cosine x column cosine from ImageOrientationPatient),
falling back to InstanceNumber when the geometry is missing.

Convention (DICOM PS3.3 C.7.6.2.1.1, as nibabel's DICOM docs and dicom2nifti use it):
the voxel array is indexed ``(i, j, k)`` = (column, row, slice), and

    P_LPS = IPP_first + i * PixelSpacing[1] * row_cosine
                      + j * PixelSpacing[0] * column_cosine + k * slice_step

DICOM patient space is LPS (x to the patient's left, y posterior, z superior); NIfTI
world space is RAS, so the affine is ``diag(-1, -1, 1, 1) @ A_LPS``. ``slice_step`` is
``(IPP_last - IPP_first) / (n - 1)``, or the normal times SpacingBetweenSlices (else
SliceThickness) for a single slice. Duplicate positions (several echoes or time points
in one folder) and uneven spacing (missing slices, gantry tilt) are errors, because no
single affine can place such slices.

A folder as exported from a scanner or PACS is sorted first (:func:`group_series`): one
group per SeriesInstanceUID, split further by EchoNumbers and TemporalPositionIdentifier
where those differ, so each group is one volume. Objects that are not images (a DICOMDIR,
structured reports, SEG, RTSTRUCT, presentation states, files without pixel data) are
skipped with their reason, and so are image series that are no head MR acquisition
(:mod:`edgeseg.io.triage`: not MR, localizers, secondary captures, derived images, other body
parts) unless forced: this model has only ever seen brain MR. Compressed pixel data is decoded by
pydicom's plugins (RLE natively; JPEG 2000, JPEG-LS and JPEG lossless with the ``dicom``
extra; JPEG baseline by GDCM from that extra, else by Pillow); 12-bit JPEG Extended, which
only a GPL plugin decodes, is refused in one line that says how to convert it.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError, describe
from edgeseg.io.triage import skip_reason

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING_TOLERANCE = 0.01  # relative spread of slice gaps still treated as uniform
SAME_POSITION_MM = 1e-3  # two slices closer than this are at the same position
EXTRA = "pip install 'edgeseg[dicom]'"  # the decoders of compressed transfer syntaxes
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
NOT_IMAGES = {  # Modality of objects that carry no image to segment -> what they are
    "SR": "a structured report",
    "SEG": "a segmentation object",
    "RTSTRUCT": "an RT structure set",
    "PR": "a presentation state",
    "KO": "a key object selection",
    "RTPLAN": "an RT plan",
    "RTRECORD": "an RT treatment record",
    "REG": "a registration",
    "DOC": "an encapsulated document",
    "PLAN": "a plan",
    "FID": "fiducials",
    "ECG": "a waveform",
    "AU": "an audio waveform",
}
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# what links a result back to its study in a PACS or RIS (written to the stats JSON)
IDENTIFIERS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber")


@dataclass
class Frame:
    """One 2-D slice with what is known of its geometry and scaling."""

    pixels: np.ndarray  # (rows, cols) stored values
    position: np.ndarray | None  # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray | None  # ImageOrientationPatient: row cosine, column cosine
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns) in mm; 1 if missing
    thickness: float  # SpacingBetweenSlices, else SliceThickness, else 1 mm
    slope: float
    inter: float
    instance: int
    spacing_known: bool = True  # False: PixelSpacing missing, ``spacing`` is a 1 mm stand-in
    path: Path | None = None  # the file it came from
    frame: int = 0  # its index among the file's frames


@dataclass
class Series:
    """A decoded series: ``raw`` indexed (column, row, slice) and its RAS affine."""

    raw: np.ndarray
    affine: np.ndarray
    voxel_ml: float | None  # None when PixelSpacing is missing
    slope: float = 1.0
    inter: float = 0.0
    notes: list[str] = field(default_factory=list)
    spacing_known: bool = True  # False: no PixelSpacing; the affine then assumes 1 mm pixels
    sources: tuple[tuple[Path, int], ...] = ()  # (file, frame) of each slice, in slice order (DICOM SEG)
    positioned: bool = True  # False: no ImagePositionPatient/ImageOrientationPatient, sorted by number
    identifiers: dict[str, str] = field(default_factory=dict)  # IDENTIFIERS of the series, to link results back


def read_dicom_series(source: Path, files: tuple[Path, ...]) -> Series:
    """Read one series (``files`` of folder or file ``source``) into a :class:`Series`.

    Raises:
        EdgesegError: unreadable or compressed-without-decoder files, several series,
            colour images, mismatched sizes, duplicate positions or uneven spacing.
    """
    files = tuple(sorted(files))
    datasets = [_dcmread(f) for f in files]
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) > 1:
        raise EdgesegError(f"{source}: holds {len(uids)} DICOM series; put each series in its own folder")
    frames = [fr for ds, f in zip(datasets, files, strict=True) for fr in _frames(ds, f)]
    shapes = {fr.pixels.shape for fr in frames}
    if len(shapes) > 1:
        raise EdgesegError(f"{source}: slices of different sizes {sorted(shapes)}; one series only")
    series = _geometric(source, frames) if _has_geometry(frames) else _by_instance(source, frames)
    series.identifiers = {k: str(datasets[0].get(k, "") or "") for k in IDENTIFIERS}
    if not all(fr.spacing_known for fr in frames):
        series.spacing_known, series.voxel_ml = False, None
        series.notes.append(
            f"{source}: no PixelSpacing; pixel size unknown, so the slices are segmented at their"
            " own grid (not resampled to the model's) and no volumes in ml are reported"
        )
    return series


@dataclass(frozen=True)
class SeriesGroup:
    """The files of one image volume: a series, or one echo/time point of it."""

    files: tuple[Path, ...]
    uid: str  # SeriesInstanceUID
    number: str  # SeriesNumber, "" if missing
    description: str  # SeriesDescription
    modality: str
    split: tuple[tuple[str, str], ...] = ()  # (("E", echo), ("T", time point)) where they differ

    def describe(self) -> str:
        """``series 3 'T1 MPRAGE' echo 2`` for messages and summary.csv."""
        parts = [f"series {self.number or self.uid or '(no SeriesInstanceUID)'}"]
        parts += [repr(self.description)] if self.description else []
        words = {"E": "echo", "T": "time point"}
        return " ".join(parts + [f"{words[k]} {v}" for k, v in self.split])


@dataclass
class Grouping:
    """What :func:`group_series` made of a folder's DICOM files."""

    groups: list[SeriesGroup] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # not images, not selected: no failure
    failed: list[tuple[Path, str]] = field(default_factory=list)  # damaged
    triaged: list[tuple[Path, str]] = field(default_factory=list)  # image series no head MR acquisition: no failure


def group_series(files: tuple[Path, ...], select: str | None = None, force: bool = False) -> Grouping:
    """Sort DICOM files into image volumes; headers only, pixel data is not read.

    Args:
        files: DICOM files of one folder (or one file).
        select: ``--series``: a SeriesInstanceUID, or a pattern (``fnmatch``, case-blind) for
            SeriesDescription; other series are skipped.
        force: segment image series that :func:`edgeseg.io.triage.skip_reason` skips too.

    Returns:
        A :class:`Grouping`: the groups in SeriesNumber order, the files skipped (no image,
        not selected), the series triaged out (not a head MR acquisition) and the files
        failed (damaged), each with its reason.
    """
    with warnings.catch_warnings():  # pydicom warns again when the scan is read: its note then
        warnings.simplefilter("ignore")
        return _group(files, select, force)


def _group(files: tuple[Path, ...], select: str | None, force: bool) -> Grouping:
    """:func:`group_series` without the warnings."""
    result, members = Grouping(), {}
    for path in sorted(files):
        try:
            ds, why = _header(path)
        except EdgesegError as exc:  # damaged: this file fails, the rest of its folder goes on
            result.failed.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        if why:
            result.skipped.append((path, why))
            continue
        key = (str(ds.get("SeriesInstanceUID", "")), _tag(ds, "EchoNumbers"), _tag(ds, "TemporalPositionIdentifier"))
        members.setdefault(key, []).append((path, ds))
    for uid in dict.fromkeys(k[0] for k in members):
        keys = [k for k in members if k[0] == uid]
        differs = [i for i in (1, 2) if len({k[i] for k in keys}) > 1]  # echo, time point
        for key in keys:
            ds = members[key][0][1]
            group = SeriesGroup(
                tuple(p for p, _ in members[key]),
                uid,
                _tag(ds, "SeriesNumber"),
                str(ds.get("SeriesDescription", "") or ""),
                _tag(ds, "Modality"),
                tuple((("E", "T")[i - 1], key[i]) for i in differs),
            )
            _place(result, group, select, force, skip_reason([d for _, d in members[key]]))
    result.groups.sort(key=lambda g: (_number(g.number), g.uid, g.split))
    return result


def _place(result: Grouping, group: SeriesGroup, select: str | None, force: bool, triaged: str) -> None:
    """Put ``group`` among the volumes, or among the skipped with the reason (``triaged``:
    :func:`edgeseg.io.triage.skip_reason`'s, which ``force`` overrides)."""
    where = group.files[0].parent if len(group.files) > 1 else group.files[0]
    if select and not (select == group.uid or fnmatch.fnmatchcase(group.description.lower(), select.lower())):
        result.skipped.append(
            (where, f"{group.describe()} ({len(group.files)} files): not selected by --series {select}")
        )
    elif triaged and not force:
        result.triaged.append(
            (where, f"{group.describe()}: {triaged}; the model segments head MR only (--force runs it anyway)")
        )
    else:
        result.groups.append(group)


def _header(path: Path) -> tuple[Any, str]:
    """The dataset without loading pixel data, or why this file is no image to segment."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=1024)  # large values (pixel data) stay on disk
    except pydicom.errors.InvalidDicomError:
        return None, "not a DICOM file (no 'DICM' marker at byte 128 and no file meta header)"
    except Exception as exc:  # a DICM marker, then a damaged header
        raise EdgesegError(f"{path}: not a readable DICOM file ({describe(exc, 240, typed=True)})") from exc
    meta = ds.get("file_meta")
    media = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
    if media == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        return None, "a DICOMDIR (an index of the files on a medium, no image)"
    modality = _tag(ds, "Modality")
    if modality in NOT_IMAGES:
        return None, f"{NOT_IMAGES[modality]} (Modality {modality}), not an image"
    if not any(tag in ds for tag in PIXEL_TAGS):
        if "SOPClassUID" not in ds:  # not even an object: what pydicom made of a damaged file
            raise EdgesegError(
                f"{path}: not a readable DICOM file (no SOPClassUID and no pixel data;"
                " damaged or truncated); re-export it"
            )
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        return None, f"holds no pixel data{kind}, not an image"
    return ds, ""


def _tag(ds: Any, name: str) -> str:
    value = ds.get(name)
    return "" if value is None else str(value).strip()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def _dcmread(path: Path) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        raise EdgesegError(
            f"{path}: not a DICOM file (no 'DICM' marker at byte 128); if it is"
            " DICOM without its file header, re-export it as a standard DICOM file"
        ) from None
    except Exception as exc:  # truncated header, not a file
        raise EdgesegError(f"{path}: not a readable DICOM file ({describe(exc, 240, typed=True)})") from exc


def _frames(ds: Any, path: Path) -> list[Frame]:
    """The 2-D frames of one dataset (one, or NumberOfFrames of a multi-frame file)."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise EdgesegError(
            f"{path}: colour DICOM ({ds.get('PhotometricInterpretation')}); expected a grayscale MR image"
        )
    _check_pixel_size(ds, path)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # no PixelData, truncated, compressed without a decoder plugin
        raise EdgesegError(f"{path}: cannot decode pixel data ({_decode_why(ds, exc)})") from exc
    count = int(ds.get("NumberOfFrames", 1) or 1)
    stack = pixels.reshape((count, *pixels.shape[-2:]))
    return [_frame(ds, stack[i], i, count, path) for i in range(count)]


def _check_pixel_size(ds: Any, path: Path) -> None:
    """Rows x Columns x frames x BitsAllocated against the PixelData really there (uncompressed)."""
    from edgeseg.sizes import check_claimed_size, check_decoded_size

    bits = int(ds.get("BitsAllocated", 0) or 0)
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    if "PixelData" not in ds or bits not in (8, 16, 32, 64) or syntax is None:
        return
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    shape = (
        int(ds.get("NumberOfFrames", 1) or 1),
        int(ds.get("Rows", 0) or 0),
        int(ds.get("Columns", 0) or 0),
        *((samples,) if samples > 1 else ()),
    )
    dtype = f"u{bits // 8}"
    check_decoded_size(path, shape, dtype)
    if not syntax.is_compressed:  # compressed data has no size to compare before decoding
        check_claimed_size(path, "DICOM file", shape, dtype, holds=len(ds.PixelData))


JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"  # JPEG Extended (Process 2 and 4): 8- or 12-bit samples


def _decode_why(ds: Any, exc: BaseException) -> str:
    """Why pixel data did not decode, naming the extra to install for a missing decoder."""
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    if syntax == JPEG_EXTENDED and int(ds.get("BitsStored", 8) or 8) > 8:
        # GDCM and Pillow decline 12-bit samples; only pylibjpeg-libjpeg (GPL-3) takes them, and
        # this MIT project does not ship it. DCMTK (BSD) converts such files.
        return (
            "12-bit JPEG Extended (Process 4): no decoder in edgeseg[dicom] reads it, only the GPL-3"
            " pylibjpeg-libjpeg, which edgeseg leaves out; decompress it first, e.g. with DCMTK's"
            " `dcmdjpeg IN.dcm OUT.dcm`"
        )
    if "missing dependencies" in str(exc) or "no pixel data handlers" in str(exc).lower():
        name = syntax.name if syntax is not None else "this compression"
        return f"compressed as {name} and no decoder for it is installed; {EXTRA}"
    if "raised by all available plugins" in str(exc):  # each plugin's reason is on its own line
        return " ".join(line.strip() for line in str(exc).splitlines())[:300]
    return describe(exc, 240, typed=True)


def _frame(ds: Any, pixels: np.ndarray, index: int, count: int, path: Path | None = None) -> Frame:
    """Geometry and scaling of frame ``index``: per-frame groups, shared groups, top level."""

    def attr(seq: str, name: str) -> Any:
        for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            items = ds.get(groups)
            item = items[index if groups.startswith("Per") else 0] if items else None
            if item is not None and seq in item and name in item[seq][0]:
                return item[seq][0][name].value
        return ds.get(name)

    ipp, iop = (
        attr("PlanePositionSequence", "ImagePositionPatient"),
        attr("PlaneOrientationSequence", "ImageOrientationPatient"),
    )
    spacing = attr("PixelMeasuresSequence", "PixelSpacing")
    gap = (
        attr("PixelMeasuresSequence", "SpacingBetweenSlices") or attr("PixelMeasuresSequence", "SliceThickness") or 1.0
    )
    position = np.array(ipp, float) if ipp is not None else None
    orientation = np.array(iop, float) if iop is not None else None
    legacy = count > 1 and "PerFrameFunctionalGroupsSequence" not in ds  # one IPP for all
    if legacy and position is not None and orientation is not None:
        position = position + index * float(gap) * np.cross(orientation[:3], orientation[3:])
    slope = attr("PixelValueTransformationSequence", "RescaleSlope")
    inter = attr("PixelValueTransformationSequence", "RescaleIntercept")
    return Frame(
        pixels,
        position,
        orientation,
        (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0),
        float(gap),
        float(1.0 if slope is None else slope),
        float(0.0 if inter is None else inter),
        int(ds.get("InstanceNumber", 0) or 0) * 100000 + index,
        spacing_known=bool(spacing),
        path=path,
        frame=index,
    )


def _has_geometry(frames: list[Frame]) -> bool:
    return all(fr.position is not None and fr.orientation is not None for fr in frames)


def _geometric(source: Path, frames: list[Frame]) -> Series:
    """Sort by position along the normal and build the RAS affine from the geometry."""
    iop = frames[0].orientation
    if any(not np.allclose(fr.orientation, iop, atol=1e-4) for fr in frames):
        raise EdgesegError(f"{source}: slices with different orientations; one series only")
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    frames = sorted(frames, key=lambda fr: (float(fr.position @ normal), fr.instance))
    along = np.array([fr.position @ normal for fr in frames])
    gaps = np.diff(along)
    if gaps.size and gaps.min() < SAME_POSITION_MM:
        raise EdgesegError(
            f"{source}: several slices share one position (echoes or time points in one"
            " folder?); put each volume in its own folder"
        )
    if gaps.size > 1 and np.ptp(gaps) > SPACING_TOLERANCE * gaps.mean() + SAME_POSITION_MM:
        raise EdgesegError(
            f"{source}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm):"
            " missing slices or a tilted gantry; no single affine places them"
        )
    if len(frames) > 1:
        step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    else:
        step = normal * frames[0].thickness
    rows_mm, cols_mm = frames[0].spacing
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row_cos * cols_mm, col_cos * rows_mm
    lps[:3, 2], lps[:3, 3] = step, frames[0].position
    voxel_ml = rows_mm * cols_mm * float(np.linalg.norm(step)) / 1000.0
    return _stack(frames, LPS_TO_RAS @ lps, voxel_ml)


def _by_instance(source: Path, frames: list[Frame]) -> Series:
    """No geometry: InstanceNumber order and an affine holding only the voxel size."""
    frames = sorted(frames, key=lambda fr: fr.instance)
    rows_mm, cols_mm = frames[0].spacing
    affine = np.diag([cols_mm, rows_mm, frames[0].thickness, 1.0])
    series = _stack(frames, affine, rows_mm * cols_mm * frames[0].thickness / 1000.0)
    series.positioned = False
    series.notes.append(
        f"{source}: no ImagePositionPatient/ImageOrientationPatient; slices sorted by"
        " InstanceNumber and the NIfTI affine holds the voxel size only"
    )
    return series


def _stack(frames: list[Frame], affine: np.ndarray, voxel_ml: float) -> Series:
    """Stack (slice, row, col) and expose it as (col, row, slice); scaling shared if it can."""
    scales = {(fr.slope, fr.inter) for fr in frames}
    if len(scales) == 1:
        slope, inter = scales.pop()
        stack = np.stack([fr.pixels for fr in frames])
    else:  # per-slice scaling: apply it now, float32
        slope, inter = 1.0, 0.0
        stack = np.stack([fr.pixels.astype(np.float32) * fr.slope + fr.inter for fr in frames])
    return Series(
        stack.transpose(2, 1, 0),
        affine,
        voxel_ml,
        slope,
        inter,
        sources=tuple((fr.path, fr.frame) for fr in frames if fr.path is not None),
    )
