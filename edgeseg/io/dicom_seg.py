"""DICOM Segmentation (SEG) output of `edgeseg infer` for DICOM inputs, with highdicom. Torch-free.

PACS and viewers (OHIF, Weasis, 3D Slicer) take a DICOM SEG; NIfTI is for research. For a
DICOM series, `edgeseg infer --format both` (the default) writes ``<name>_seg.dcm`` beside
``<name>_seg.nii.gz``, and ``--format dicom-seg`` the SEG alone. The SEG:

* holds one binary segment per foreground class, labelled with the model's class names and
  coded with SNOMED CT (gray matter 389081007, white matter 389080008; other names are coded
  as "Tissue"), each identified as made by the algorithm edgeseg, its version and the
  SHA-256 of the ONNX model;
* references every source SOP instance (per frame, via highdicom), keeps the source's
  StudyInstanceUID and patient/study attributes, and gets Series and SOP Instance UIDs made
  from the source series, the model's hash and the options that change labels
  (:func:`result_uid`), so a rerun or a resent exam replaces the SEG in a PACS instead of
  adding a copy;
* gives each segment the brain (SCT 12738006) as anatomic region and the QC mosaic's colour
  as RecommendedDisplayCIELabValue, names edgeseg as ContentCreatorName, and writes its
  pixel spacing, slice thickness and spacing between slices explicitly (a single slice's
  own thickness, e.g. 4 mm, not highdicom's 1 mm stand-in);
* of a scan that QC flagged, is written only when asked (``--seg-flagged``), its series and
  content descriptions then beginning ``QC FLAGGED: `` and the reasons;
* is written atomically like every other output.

Its labels are exactly the NIfTI's: both are written from the one label array, the SEG
frame of source slice ``k`` being the NIfTI's ``labels[:, :, k]`` transposed to (rows, cols).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

SNOMED = {  # class name -> (SNOMED CT code, meaning), from DICOM PS3.16 (pydicom's codes.SCT)
    "gray_matter": ("389081007", "Gray Matter"),
    "white_matter": ("389080008", "White Matter"),
}
ANATOMICAL_STRUCTURE = ("91723000", "Anatomical Structure")  # category of both (CID 7150)
TISSUE = ("85756007", "Tissue")  # type and category of a class we have no concept for
BRAIN = ("12738006", "Brain")  # the anatomic region of every segment (CID 4031)
# Type 2 (present, may be empty: PS3.5 7.4) in the Patient and General Study modules (PS3.3
# C.7.1.1, C.7.2.1), which highdicom copies from the first source without a default.
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@dataclass(frozen=True)
class SegContent:
    """What a SEG (and the SR beside it) says beyond its labels.

    ``options``: the settings that change the labels (slicing axis, resampling, skull strip,
    crop), which with the source series and the model's hash make the UIDs (:func:`result_uid`).
    ``flagged``: the QC reasons of a flagged scan written anyway (``--seg-flagged``); the
    descriptions then begin ``QC FLAGGED: ``. ``colours``: RGB of each class, as the QC mosaic
    shows it, written as the segments' RecommendedDisplayCIELabValue.
    """

    options: tuple[str, ...] = ()
    flagged: str = ""
    colours: tuple[tuple[int, int, int], ...] = ()


def result_uid(source: Any, kind: str, model_sha256: str, options: tuple[str, ...]) -> str:
    """A UID that is the same on every run for the same source series, model and options.

    ``kind`` names what it identifies (``seg-series``, ``seg-sop``, ``sr-series``, ...). From the
    source's SeriesInstanceUID and, where a series holds several volumes, its EchoNumbers and
    TemporalPositionIdentifier: a rerun, or the same exam sent twice, makes an object with the
    same Series and SOP Instance UIDs, so a PACS holds one copy, never two beside each other: a
    C-STORE of a SOP Instance UID it already has either replaces the stored object or keeps the
    first (PS3.4 B.4.1 leaves it to the SCP; Orthanc 1.10 keeps the first, AlreadyStored, unless
    ``OverwriteInstances`` is true; tests/node/test_node.py measures both).
    pydicom's ``generate_uid`` hashes the sources (SHA-512) under its UID root.
    """
    from pydicom.uid import generate_uid

    volume = [str(source.get(k, "") or "") for k in ("SeriesInstanceUID", "EchoNumbers", "TemporalPositionIdentifier")]
    return str(generate_uid(entropy_srcs=["edgeseg", kind, *volume, model_sha256, *options]))


def write_dicom_seg(
    target: Path,
    labels: np.ndarray,
    sources: tuple[tuple[Path, int], ...],
    class_names: tuple[str, ...],
    model: Path,
    model_sha256: str,
    before_replace: Callable[[Path], None] | None = None,
    content: SegContent | None = None,
    slice_mm: float | None = None,
) -> tuple[Any, Any]:
    """Write ``labels`` of one DICOM series as a DICOM SEG at ``target``, atomically.

    Args:
        target: the ``.dcm`` file to write.
        labels: ``(columns, rows, slices)`` uint8 class indices, the layout of
            :class:`edgeseg.io.dicom.Series` ``raw`` (and of the NIfTI written for it).
        sources: ``(file, frame)`` of each slice, in slice order (``Series.sources``).
        class_names: the model's classes; index 0 is background and gets no segment.
        model, model_sha256: the ONNX file, for the algorithm identification.
        before_replace: as in :func:`edgeseg.io.outputs.atomic_write`.
        content: UIDs' options, QC flag and colours (:class:`SegContent`).
        slice_mm: distance between slice centres, as read (``None``: a single slice's
            SpacingBetweenSlices, else SliceThickness, from its header).

    Returns:
        ``(seg, source)``: the SEG dataset written and its first source's header, which the SR
        (:mod:`edgeseg.io.dicom_sr`) references and takes the identity of its UIDs from.

    Raises:
        EdgesegError: highdicom missing, or the sources cannot carry a SEG.
    """
    from edgeseg.files import atomic_write

    if not sources:
        raise EdgesegError(
            f"{target}: the series lacks PixelSpacing or ImagePositionPatient/Orientation,"
            " which a DICOM SEG needs to place its frames; use --format nifti"
        )
    content = content or SegContent()
    hd = import_highdicom(target)
    images, frames = _source_frames(sources, labels)
    _fill_type2(images)

    def uid(kind: str) -> str:
        return result_uid(images[0], kind, model_sha256, content.options)

    segments = [
        _segment(hd, i, name, model, model_sha256, uid(f"segment-{i}"), _colour(content, i))
        for i, name in enumerate(class_names)
        if i
    ]
    flag = f"QC FLAGGED: {content.flagged} " if content.flagged else ""
    try:
        seg = hd.seg.Segmentation(
            source_images=images,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=uid("seg-series"),
            series_number=result_series_number(images[0]),
            sop_instance_uid=uid("seg-sop"),
            instance_number=1,
            manufacturer="edgeseg",
            manufacturer_model_name=model.name[:64],
            software_versions=software_version(),
            device_serial_number=model_sha256[:16],
            content_label="EDGESEG",
            content_description=f"{flag}edgeseg {', '.join(class_names[1:])}"[:64],
            content_creator_name="edgeseg^",  # a device: family name only (one component is the retired form)
            series_description=f"{flag}edgeseg seg of {images[0].get('SeriesDescription', '') or 'series'}"[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:  # geometry or attributes highdicom refuses
        lacks = re.search(r"has no attribute '(\w+)'", str(exc))  # a Type-1 attribute, which cannot be empty
        why = f"its files lack {lacks[1]}, which a SEG must copy" if lacks else exc
        raise EdgesegError(f"{target}: cannot make a DICOM SEG of this series ({why}); use --format nifti") from exc
    _write_slice_spacing(seg, images[0], slice_mm)
    _same_dimension_uid(seg, uid("seg-dimensions"))
    atomic_write(target, lambda tmp: seg.save_as(tmp), before_replace)
    return seg, images[0]


def _colour(content: SegContent, index: int) -> tuple[int, int, int] | None:
    return content.colours[index % len(content.colours)] if content.colours else None


def _measure(source: Any, name: str) -> Any:
    """``name`` from the source's top level, else its shared Pixel Measures (enhanced MR)."""
    if source.get(name) not in (None, ""):
        return source.get(name)
    shared = source.get("SharedFunctionalGroupsSequence")
    measures = shared[0].get("PixelMeasuresSequence") if shared else None
    return measures[0].get(name) if measures else None


def _same_dimension_uid(seg: Any, dimensions: str) -> None:
    """The DimensionOrganizationUID highdicom mints at random, made the same on every run too."""
    old = {str(item.DimensionOrganizationUID) for item in seg.get("DimensionOrganizationSequence", [])}
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        if str(item.get("DimensionOrganizationUID", "")) in old:
            item.DimensionOrganizationUID = dimensions


def _write_slice_spacing(seg: Any, source: Any, slice_mm: float | None) -> None:
    """Write the SEG's SliceThickness and SpacingBetweenSlices ourselves: highdicom copies the
    source's Pixel Measures and, where the source has no SpacingBetweenSlices, fills it from the
    frame positions, which for a single slice gives 1.0 mm whatever the slice's thickness
    (a 4 mm slice read back as 1 mm: a quarter of its volume). ``slice_mm``: the distance
    between slice centres as read; for one slice its own SpacingBetweenSlices, else
    SliceThickness. With neither known, highdicom's values stay."""
    thickness = _measure(source, "SliceThickness")
    between = slice_mm or _measure(source, "SpacingBetweenSlices") or thickness
    if not between:
        return
    from pydicom.valuerep import format_number_as_ds

    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = format_number_as_ds(float(between))
    measures.SliceThickness = format_number_as_ds(float(thickness or between))


def _fill_type2(images: list) -> None:
    """Add each missing :data:`TYPE2_COPIED` attribute to the source headers, empty, as the
    standard allows a Type-2 attribute to be (the files themselves are not touched)."""
    for ds in images:
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")


def import_highdicom(target: Path) -> Any:
    try:
        import highdicom
    except ImportError:
        raise EdgesegError(
            f"{target}: writing DICOM SEG needs highdicom: pip install 'edgeseg[dicom]', or pass --format nifti"
        ) from None
    return highdicom


def _source_frames(sources: tuple[tuple[Path, int], ...], labels: np.ndarray) -> tuple[list, np.ndarray]:
    """Source datasets (headers) and ``(frames, rows, cols)`` labels in the sources' own order.

    Single-frame sources: one dataset per slice, frames in slice order. A multi-frame source:
    one dataset, frames in its own frame order (which slice order may have permuted).
    """
    import pydicom

    assert len(sources) == labels.shape[2], (len(sources), labels.shape)
    per_slice = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (slices, rows, cols)
    files = list(dict.fromkeys(path for path, _ in sources))
    images = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    if len(files) == len(sources):
        uids = [str(ds.get("SOPInstanceUID", "")) for ds in images]
        if len(set(uids)) < len(uids) or not all(uids):
            raise EdgesegError(
                f"{files[0].parent}: its files do not each have their own SOPInstanceUID,"
                " so a DICOM SEG cannot reference them; use --format nifti"
            )
        return images, per_slice
    if len(files) == 1:
        frames = np.empty_like(per_slice)
        for k, (_, frame) in enumerate(sources):
            frames[frame] = per_slice[k]
        return images, frames
    raise EdgesegError(
        f"{files[0].parent}: several multi-frame files in one series; DICOM SEG needs one; use --format nifti"
    )


def _segment(
    hd: Any,
    index: int,
    name: str,
    model: Path,
    model_sha256: str,
    tracking_uid: str,
    rgb: tuple[int, int, int] | None,
) -> Any:
    """Segment ``index`` (class ``name``): label, SNOMED CT codes, the algorithm that made it,
    the brain as its anatomic region and ``rgb`` as its recommended display colour (CIELab)."""
    from pydicom.sr.coding import Code

    code = SNOMED.get(name)
    category = (
        Code(ANATOMICAL_STRUCTURE[0], "SCT", ANATOMICAL_STRUCTURE[1]) if code else Code(TISSUE[0], "SCT", TISSUE[1])
    )
    kind = Code(code[0], "SCT", code[1]) if code else Code(TISSUE[0], "SCT", TISSUE[1])
    algorithm = hd.AlgorithmIdentificationSequence(
        name="edgeseg",
        family=_ai_family(),
        version=software_version(),
        source=model.name[:64],
        parameters={"model": model.name, "model_sha256": model_sha256},
    )
    return hd.seg.SegmentDescription(
        segment_number=index,
        segment_label=name[:64],
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=tracking_uid,
        tracking_id=name,
        anatomic_regions=[Code(BRAIN[0], "SCT", BRAIN[1])],
        display_color=hd.color.CIELabColor.from_rgb(*rgb) if rgb else None,
    )


def _ai_family() -> Any:
    from pydicom.sr.codedict import codes

    return codes.DCM.ArtificialIntelligence


def software_version() -> str:
    from edgeseg import __version__

    return f"edgeseg {__version__}"


def result_series_number(source: Any) -> int:
    """The source's SeriesNumber + 1000: beside it in a PACS list, never equal to it."""
    try:
        return int(source.get("SeriesNumber", 0) or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def read_dicom_seg(path: Path) -> tuple[np.ndarray, float | None]:
    """Labels ``(frames, rows, cols)`` (segment number per pixel) of a SEG and its voxel volume in mL."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    uids = [uid for _, _, uid in seg.get_source_image_uids()]
    labels = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    thickness = measures.get("SpacingBetweenSlices") or measures.get("SliceThickness")
    rows_mm, cols_mm = (float(v) for v in measures.PixelSpacing)
    return np.asarray(labels), rows_mm * cols_mm * float(thickness) / 1000 if thickness else None
