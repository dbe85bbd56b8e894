"""DICOM SR volume report of `edgeseg infer` beside its DICOM SEG, with highdicom. Torch-free.

A PACS shows a structured report as text a radiologist can read next to the images; a SEG
alone gives no number. ``<name>_sr.dcm`` is a Comprehensive 3D SR holding a TID 1500
Measurement Report (procedure: LOINC 24590-2 "Brain MRI"), observed by the device edgeseg:

* one volumetric ROI group (TID 1411) per segment of the SEG (gray matter, white matter),
  referencing that segment of the SEG and the source series, with its volume in mL
  (SCT 118565006 "Volume", UCUM ``ml``) and the brain as finding site;
* one group (TID 1501) for the total brain volume (the sum), which also holds the QC verdict
  and the coverage as text qualitative evaluations (UMLS C0034375): ``QC: ok`` or the
  reasons, and ``coverage: whole``, ``coverage: partial: 40.0 mm slab; ...`` or ``single
  slice``. The volumes of a partial scan are those of the part that was scanned, and each
  volume's group says ``partial`` in its text;
* its Series and SOP Instance UIDs come from the same source series, model hash and options
  as the SEG's (:func:`edgeseg.io.dicom_seg.result_uid`), so it is replaced, not duplicated, by
  a rerun; it lives in the source's study, beside the SEG, in a series of its own (SR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError
from edgeseg.io.dicom_seg import (
    BRAIN,
    SNOMED,
    SegContent,
    import_highdicom,
    result_series_number,
    result_uid,
    software_version,
)

QUALITATIVE = ("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1501/1411 TEXT rows
ML = ("ml", "UCUM", "milliliter")
SR_SERIES_OFFSET = 1  # the SR's SeriesNumber: the SEG's (source + 1000) + 1


@dataclass(frozen=True)
class VolumeReport:
    """The numbers the SR carries: mL per segment (by class name), the QC verdict and coverage."""

    volumes_ml: dict[str, float]  # foreground class -> mL, in segment order
    qc: str  # Verdict.text: "ok", "no ranges in model" or the reasons
    coverage: str  # summary.csv's coverage: "whole", "partial: 40.0 mm slab; ...", ...

    @property
    def total_ml(self) -> float:
        """Total brain volume: the sum of the segments' (gray + white matter)."""
        return sum(self.volumes_ml.values())

    @property
    def partial(self) -> bool:
        return self.coverage.startswith(("partial", "single slice"))


def write_dicom_sr(
    target: Path,
    seg: Any,
    source: Any,
    report: VolumeReport,
    model: Path,
    model_sha256: str,
    content: SegContent,
    before_replace: Callable[[Path], None] | None = None,
) -> Any:
    """Write the volume report of ``seg`` (the SEG dataset just written) at ``target``, atomically.

    Args:
        target: the ``_sr.dcm`` file (:func:`edgeseg.names.sr_rel`).
        seg, source: the SEG and its first source header, as :func:`edgeseg.io.dicom_seg.write_dicom_seg`
            returned them: the SR takes its study and patient, segments and source series from
            the SEG, and the identity of its UIDs from the source.
        report: the volumes, QC verdict and coverage.
        model, model_sha256: the ONNX file that made the labels.
        content: the SEG's options (for the UIDs) and QC flag (for the description).
        before_replace: as in :func:`edgeseg.files.atomic_write`.

    Returns:
        The SR dataset written.
    """
    from pydicom.sr.codedict import codes

    from edgeseg.files import atomic_write

    hd = import_highdicom(target)

    def uid(kind: str) -> str:
        return result_uid(source, kind, model_sha256, content.options)

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid("sr-device"), name="edgeseg", manufacturer_name="edgeseg", model_name=model.name[:64]
        ),
    )
    groups = [_segment_group(hd, seg, s, report, uid) for s in seg.SegmentSequence]
    groups.append(_total_group(hd, report, uid, model, model_sha256))
    measurement_report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.BrainMRI,
        imaging_measurements=groups,
    )
    flag = f"QC FLAGGED: {content.flagged} " if content.flagged else ""
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg],
            content=measurement_report,
            series_instance_uid=uid("sr-series"),
            series_number=result_series_number(seg) - 1000 + SR_SERIES_OFFSET,
            sop_instance_uid=uid("sr-sop"),
            instance_number=1,
            manufacturer="edgeseg",
            series_description=f"{flag}edgeseg brain volumes"[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EdgesegError(f"{target}: cannot make a DICOM SR of this series ({exc}); use --format nifti") from exc
    sr.SoftwareVersions = software_version()
    atomic_write(target, lambda tmp: sr.save_as(tmp), before_replace)
    return sr


def _segment_group(hd: Any, seg: Any, segment: Any, report: VolumeReport, uid: Callable) -> Any:
    """TID 1411 for one segment: its volume, referencing the segment and the source series."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    name = str(segment.SegmentLabel)
    number = int(segment.SegmentNumber)
    code = SNOMED.get(name)
    finding = Code(code[0], "SCT", code[1]) if code else Code("85756007", "SCT", "Tissue")
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid(f"sr-track-{number}"), identifier=name),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)),
        ),
        finding_type=finding,
        finding_sites=[hd.sr.FindingSite(Code(BRAIN[0], "SCT", BRAIN[1]))],
        measurements=[_volume(hd, codes, report.volumes_ml.get(name, 0.0))],
    )
    if report.partial:
        _text(hd, group, f"partial coverage: the volume of the part scanned ({report.coverage})")
    return group


def _total_group(hd: Any, report: VolumeReport, uid: Callable, model: Path, model_sha256: str) -> Any:
    """TID 1501: the total brain volume, with the QC verdict and the coverage as text."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid("sr-track-total"), identifier="total brain"),
        finding_type=Code(BRAIN[0], "SCT", BRAIN[1]),
        algorithm_id=hd.sr.AlgorithmIdentification(
            name="edgeseg", version=software_version(), parameters=[model_sha256]
        ),
        measurements=[_volume(hd, codes, report.total_ml)],
    )
    _text(hd, group, f"QC: {report.qc}")
    _text(hd, group, f"coverage: {report.coverage}")
    return group


def _volume(hd: Any, codes: Any, ml: float) -> Any:
    from pydicom.sr.coding import Code

    return hd.sr.Measurement(name=codes.SCT.Volume, value=round(float(ml), 3), unit=Code(*ML))


def _text(hd: Any, group: Any, text: str) -> None:
    """Append a TEXT qualitative evaluation (TID 1501/1411 allow one) to ``group``'s container."""
    from pydicom.sr.coding import Code

    item = hd.sr.TextContentItem(
        name=Code(*QUALITATIVE),
        value=text[:1024],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group[0].ContentSequence.append(item)
