"""A DICOM SEG and SR are safe to resend, carry the real slice spacing, and are gated by QC.

Through the installed CLI on real files: pydicom-data's single-slice Siemens abdomen MPR
(MR-SIEMENS-DICOM-WithOverlays, 4 mm thick, BodyPartExamined ABDOMEN) and MNI152-built series.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from edgeseg.io.dicom_seg import read_dicom_seg

EDGESEG = Path(sys.executable).parent / "edgeseg"
SIEMENS = Path(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))  # 484x484, one 4 mm slice
VOLUMES = ("gray_matter_ml", "white_matter_ml", "total_brain_ml", "voxel_ml")


def infer(*args: str | Path) -> subprocess.CompletedProcess:
    """``edgeseg infer`` on the shipped fp32 model (the tuned pick of this machine may be another file)."""
    cmd = [str(EDGESEG), "infer", *map(str, args), "--backend", "ort"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return {row["output"]: row for row in csv.DictReader(f)}


def uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def test_single_slice_rerun_reports_the_same_volumes(tmp_path: Path, dciodvfy) -> None:
    """The issue's case, twice: the resumed run reads its volumes from the record, and the SEG
    itself says 4 mm, the slice's SliceThickness, not highdicom's 1 mm."""
    out = tmp_path / "out"
    args = (SIEMENS, "--out", out, "--format", "dicom-seg", "--force", "--seg-flagged")  # abdomen: forced, flagged
    first = infer(*args)
    assert first.returncode == 0 and "1 done" in first.stdout, first.stderr
    row = summary(out)["MR-SIEMENS-DICOM-WithOverlays_seg.dcm"]
    source = pydicom.dcmread(SIEMENS, stop_before_pixels=True)
    rows_mm, cols_mm = (float(v) for v in source.PixelSpacing)
    assert float(source.SliceThickness) == 4.0 and "SpacingBetweenSlices" not in source
    assert float(row["voxel_ml"]) == pytest.approx(rows_mm * cols_mm * 4.0 / 1000, rel=1e-5)
    assert float(row["gray_matter_ml"]) > 0 and row["volumes"] == "partial"  # a single slice
    second = infer(*args)
    assert second.returncode == 0 and "1 skipped" in second.stdout, second.stderr
    again = summary(out)["MR-SIEMENS-DICOM-WithOverlays_seg.dcm"]
    assert {k: again[k] for k in VOLUMES} == {k: row[k] for k in VOLUMES}
    seg = pydicom.dcmread(out / "MR-SIEMENS-DICOM-WithOverlays_seg.dcm")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == 4.0 and float(measures.SpacingBetweenSlices) == 4.0
    labels, voxel_ml = read_dicom_seg(out / "MR-SIEMENS-DICOM-WithOverlays_seg.dcm")  # its own header agrees
    assert voxel_ml == pytest.approx(float(row["voxel_ml"]), rel=1e-5)
    assert int((labels == 1).sum()) == int(row["gray_matter_voxels"])
    for name in ("seg", "sr"):
        written = out / f"MR-SIEMENS-DICOM-WithOverlays_{name}.dcm"
        assert dciodvfy(written, SIEMENS) == [], name


@pytest.fixture(scope="module")
def t1(tmp_path_factory: pytest.TempPathFactory, mni_dicom_factory) -> Path:  # noqa: ANN001
    root = tmp_path_factory.mktemp("resend")
    mni_dicom_factory(root / "t1", range(84, 90), 7, "T1 MNI")
    return root / "t1"


def test_two_runs_give_the_same_seg_and_sr_uids(t1: Path, tmp_path: Path, dciodvfy) -> None:
    outs = [tmp_path / "a", tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    extra = [(), ("--overwrite",), (), ("--no-resample",)]  # a rerun, another --out, other labels
    found = []
    for out, more in zip(outs, extra, strict=True):
        proc = infer(t1, "--out", out, *more)
        assert proc.returncode == 0 and "1 done" in proc.stdout, proc.stderr
        seg = pydicom.dcmread(out / "t1_seg.dcm", stop_before_pixels=True)
        tracking = [s.TrackingUID for s in seg.SegmentSequence]
        found.append((uids(out / "t1_seg.dcm"), uids(out / "t1_sr.dcm"), tracking))
        for name in ("t1_seg.dcm", "t1_sr.dcm"):
            assert dciodvfy(out / name, next(t1.iterdir())) == [], name
    assert found[0] == found[1] == found[2]  # the same source, model and options: the same objects
    assert found[3][0] != found[0][0] and found[3][1] != found[0][1]  # --no-resample changes the labels
    (seg_series, seg_sop), (sr_series, sr_sop), tracking = found[0]
    source = pydicom.dcmread(next(t1.iterdir()), stop_before_pixels=True)
    assert len({seg_series, seg_sop, sr_series, sr_sop, *tracking, source.SeriesInstanceUID}) == 7
    assert all(pydicom.uid.UID(u).is_valid for u in (seg_series, seg_sop, sr_series, sr_sop))


def test_seg_names_its_creator_region_and_colours(t1: Path, tmp_path: Path, dciodvfy) -> None:
    import highdicom as hd

    from edgeseg.io.outputs import PALETTE

    proc = infer(t1, "--out", tmp_path / "out", "--format", "dicom-seg")
    assert proc.returncode == 0, proc.stderr
    seg = pydicom.dcmread(tmp_path / "out" / "t1_seg.dcm")
    assert dciodvfy(tmp_path / "out" / "t1_seg.dcm", next(t1.iterdir())) == []
    assert str(seg.ContentCreatorName) == "edgeseg^"
    for segment in seg.SegmentSequence:
        region = segment.AnatomicRegionSequence[0]
        assert (region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning) == ("12738006", "SCT", "Brain")
        rgb = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue).to_rgb()
        assert tuple(rgb) == PALETTE[segment.SegmentNumber]  # the mosaic's colour of that class


@pytest.fixture(scope="module")
def flagged(tmp_path_factory: pytest.TempPathFactory, mni_dicom_factory) -> Path:  # noqa: ANN001
    """no_brain: MNI slices below the brain; shoulder: a series saying BodyPartExamined SHOULDER;
    abdomen: the Siemens abdomen MPR."""
    root = tmp_path_factory.mktemp("flagged") / "in"
    mni_dicom_factory(root / "no_brain", range(2, 8), 9, "T1 low")
    for path in mni_dicom_factory(root / "shoulder", range(86, 89), 10, "t1 cor"):
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = "SHOULDER"
        ds.save_as(path)
    (root / "abdomen").mkdir()
    (root / "abdomen" / SIEMENS.name).write_bytes(SIEMENS.read_bytes())
    return root


def test_no_brain_abdomen_and_shoulder_write_no_seg_by_default(flagged: Path, tmp_path: Path) -> None:
    proc = infer(flagged, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "1 done" in proc.stdout  # no_brain; abdomen and shoulder are skipped by triage
    assert not list((tmp_path / "out").rglob("*.dcm"))
    said = proc.stdout + proc.stderr  # (notes go to stderr while the progress bar runs)
    assert "no brain: no slice with >= 2% brain" in said and "no DICOM SEG or SR written" in said
    skipped = "\n".join(line for line in proc.stdout.splitlines() if line.startswith("skipped"))
    assert "BodyPartExamined is ABDOMEN" in skipped and "BodyPartExamined is SHOULDER" in skipped
    assert (tmp_path / "out" / "no_brain_seg.nii.gz").is_file()  # for a person to look at
    assert summary(tmp_path / "out")["no_brain_seg.nii.gz"]["message"].startswith("QC flagged: no DICOM SEG")
    forced = infer(flagged / "abdomen", "--out", tmp_path / "forced", "--force", "--format", "dicom-seg")
    assert forced.returncode == 0 and "1 done" in forced.stdout, forced.stderr  # past triage: QC flags it
    assert "QC flagged it (" in forced.stdout + forced.stderr
    assert not list((tmp_path / "forced").rglob("*.dcm"))
    (row,) = summary(tmp_path / "forced").values()  # the SEG was its only labels file: no output
    assert row["output"] == "" and row["status"] == "done" and row["qc_status"] == "flagged"


def test_seg_flagged_writes_them_marked(flagged: Path, tmp_path: Path, dciodvfy) -> None:
    out = tmp_path / "out"
    proc = infer(flagged / "no_brain", "--out", out, "--seg-flagged")
    assert proc.returncode == 0, proc.stderr
    reason = summary(out)["no_brain_seg.nii.gz"]["qc"]
    assert reason.startswith("no brain")
    seg = pydicom.dcmread(out / "no_brain_seg.dcm", stop_before_pixels=True)
    sr = pydicom.dcmread(out / "no_brain_sr.dcm", stop_before_pixels=True)
    for text in (seg.SeriesDescription, seg.ContentDescription, sr.SeriesDescription):
        assert text.startswith(f"QC FLAGGED: {reason}"[:64]), text
    source = next((flagged / "no_brain").iterdir())
    assert dciodvfy(out / "no_brain_seg.dcm", source) == [] and dciodvfy(out / "no_brain_sr.dcm", source) == []
    again = infer(flagged / "no_brain", "--out", out, "--overwrite")  # redone without it: SEG and SR withdrawn
    assert again.returncode == 0 and "1 done" in again.stdout, again.stdout
    assert not (out / "no_brain_seg.dcm").exists() and not (out / "no_brain_sr.dcm").exists()
    stats = json.loads((out / "no_brain_stats.json").read_text())
    assert stats["qc"]["status"] == "flagged"
    assert stats["dicom"]["SeriesInstanceUID"] == seg.ReferencedSeriesSequence[0].SeriesInstanceUID
