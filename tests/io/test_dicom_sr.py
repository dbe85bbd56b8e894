"""Tests for edgeseg.io.dicom_sr: the TID 1500 volume report beside the SEG, read back with highdicom.

The real CLI in a subprocess, torch blocked, on an MNI152-built T1 series (6 axial slices: a
partial scan, so its volumes are marked partial) with the shipped fp32 model.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

EDGESEG = Path(sys.executable).parent / "edgeseg"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
QUALITATIVE = ("C0034375", "UMLS")


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory: pytest.TempPathFactory, env_without, mni_dicom_factory) -> tuple:  # noqa: ANN001
    root = tmp_path_factory.mktemp("sr")
    files = mni_dicom_factory(root / "t1", range(84, 90), 7, "T1 MNI")
    env = env_without(root / "shim", "torch")
    cmd = [str(EDGESEG), "infer", str(root / "t1"), "--out", str(root / "out"), "--backend", "ort"]
    proc = subprocess.run([*cmd, "--format", "dicom-seg"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    with open(root / "out" / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    return root / "out", files, row


def items(ds: pydicom.Dataset):  # noqa: ANN201
    """Every content item of an SR tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from items(item)


def texts(ds: pydicom.Dataset) -> list[str]:
    """The TEXT qualitative evaluations of an SR tree."""
    return [
        str(i.TextValue)
        for i in items(ds)
        if i.ValueType == "TEXT"
        and (i.ConceptNameCodeSequence[0].CodeValue, i.ConceptNameCodeSequence[0].CodingSchemeDesignator) == QUALITATIVE
    ]


def test_sr_is_a_tid_1500_report_in_the_source_study(sr_run) -> None:  # noqa: ANN001
    out, files, _ = sr_run
    sr = hd.sr.srread(out / "t1_sr.dcm")
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.Modality == "SR"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    assert sr.SeriesInstanceUID not in (source.SeriesInstanceUID, pydicom.dcmread(out / "t1_seg.dcm").SeriesInstanceUID)
    code = sr.ConceptNameCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("126000", "DCM")  # Imaging Measurement Report


def test_sr_volumes_reference_the_seg_segments_and_source_series(sr_run) -> None:  # noqa: ANN001
    out, files, row = sr_run
    sr = hd.sr.srread(out / "t1_sr.dcm")
    seg = pydicom.dcmread(out / "t1_seg.dcm", stop_before_pixels=True)
    source_series = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["gray_matter", "white_matter"]
    for number, group in enumerate(groups, start=1):
        (volume,) = group.get_measurements()
        assert volume.name.value == "118565006" and volume.unit.value == "ml"
        assert volume.value == pytest.approx(float(row[f"{group.tracking_identifier}_ml"]), abs=1e-3)
        referenced = group.referenced_segment
        assert referenced[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert referenced[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == number
        assert seg.SegmentSequence[number - 1].SegmentLabel == group.tracking_identifier
        assert any(getattr(i, "UID", None) == source_series for i in items(group[0]))
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID


def test_sr_total_brain_qc_and_coverage(sr_run) -> None:  # noqa: ANN001
    out, _, row = sr_run
    sr = pydicom.dcmread(out / "t1_sr.dcm")
    volumes = [float(i.MeasuredValueSequence[0].NumericValue) for i in items(sr) if i.ValueType == "NUM"]
    total = float(row["total_brain_ml"])
    assert len(volumes) == 3 and volumes[2] == pytest.approx(total, abs=1e-3)
    assert total == pytest.approx(float(row["gray_matter_ml"]) + float(row["white_matter_ml"]), abs=2e-3)
    said = texts(sr)
    assert f"QC: {row['qc']}" in said and f"coverage: {row['coverage']}" in said
    assert row["coverage"].startswith("partial") and row["volumes"] == "partial"  # 6 mm of a brain
    assert sum(text.startswith("partial coverage") for text in said) == 2  # each segment's volume


def test_sr_passes_dciodvfy_and_a_damaged_copy_does_not(sr_run, tmp_path: Path, dciodvfy) -> None:  # noqa: ANN001
    out, files, _ = sr_run
    assert dciodvfy(out / "t1_sr.dcm", files[0]) == []
    assert dciodvfy(out / "t1_seg.dcm", files[0]) == []
    damaged = pydicom.dcmread(out / "t1_sr.dcm")
    del damaged.CompletionFlag  # Type 1 in the SR Document General module
    damaged.save_as(tmp_path / "damaged.dcm")
    assert any("CompletionFlag" in m or "Completion Flag" in m for m in dciodvfy(tmp_path / "damaged.dcm", files[0]))
