"""Tests for edgeseg.io.dicom_seg: DICOM SEG beside the NIfTI, read back with highdicom.

Every case runs the real CLI in a subprocess where torch cannot be imported, on a real MR
series built from nilearn's MNI152 T1, with the shipped model.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from edgeseg import SHIPPED_MODEL

EDGESEG = Path(sys.executable).parent / "edgeseg"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def infer(src: Path, out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EDGESEG), "infer", str(src), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def seg_run(
    tmp_path_factory: pytest.TempPathFactory,
    env_without,
    mni_dicom_factory,  # noqa: ANN001
) -> tuple[Path, Path, list[Path], subprocess.CompletedProcess]:
    """One run on a 6-slice MNI series (file k = slice k, inferior to superior), torch blocked."""
    make_env_without, make_mni_dicom = env_without, mni_dicom_factory
    root = tmp_path_factory.mktemp("seg")
    files = make_mni_dicom(root / "t1", range(84, 90), 7, "T1 MNI", names="IM{:03d}.dcm")
    env = make_env_without(root / "shim", "torch")
    before = {f: sha256(f) for f in files}
    proc = infer(root / "t1", root / "out", env)
    assert {f: sha256(f) for f in files} == before  # inputs untouched
    return root, root / "out", files, proc


def test_seg_labels_equal_the_nifti_voxel_for_voxel(seg_run) -> None:
    _, out, files, proc = seg_run
    assert proc.returncode == 0, proc.stderr
    assert "1 done, 0 failed" in proc.stdout
    nifti = np.asarray(nib.load(out / "t1_seg.nii.gz").dataobj)  # (columns, rows, slices)
    seg = hd.seg.segread(out / "t1_seg.dcm")
    assert nifti.shape == (197, 233, 6) and set(np.unique(nifti)) == {0, 1, 2}
    for k, path in enumerate(files):
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        frame = seg.get_pixels_by_source_instance([uid], combine_segments=True)[0]
        assert np.array_equal(frame, nifti[:, :, k].T), k


def test_seg_references_sources_and_keeps_study(seg_run) -> None:
    _, out, files, _ = seg_run
    seg = hd.seg.segread(out / "t1_seg.dcm")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert seg.SOPClassUID == SEG_STORAGE
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    for name in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyID"):
        assert seg.get(name) == sources[0].get(name), name
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.SOPInstanceUID not in {ds.SOPInstanceUID for ds in sources}
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID


def test_seg_segments_are_coded_and_identify_the_algorithm(seg_run) -> None:
    _, out, _, _ = seg_run
    seg = hd.seg.segread(out / "t1_seg.dcm")
    segments = list(seg.SegmentSequence)
    assert [s.SegmentLabel for s in segments] == ["gray_matter", "white_matter"]
    assert [
        (
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
        )
        for s in segments
    ] == [("389081007", "SCT"), ("389080008", "SCT")]
    # the file that ran: the shipped model, or where `edgeseg tune` ran here, its pick (model_int8.onnx)
    ran = Path(json.loads((out / "t1_stats.json").read_text())["model"])
    assert ran.parent == SHIPPED_MODEL.parent
    model_sha = sha256(ran)
    for segment in segments:
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert segment.SegmentAlgorithmType == "AUTOMATIC" and algorithm.AlgorithmName == "edgeseg"
        assert algorithm.AlgorithmVersion.startswith("edgeseg ")
        assert f"model_sha256={model_sha}" in algorithm.AlgorithmParameters.split(",")


def test_seg_is_recorded_and_resumed(seg_run, tmp_path: Path, env_without) -> None:  # noqa: ANN001
    root, out, _, _ = seg_run
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    by_output = {r["output"]: r for r in records}
    assert by_output["t1_seg.dcm"]["sha256"] == sha256(out / "t1_seg.dcm")
    env = env_without(root / "shim", "torch")
    again = infer(root / "t1", out, env)
    assert again.returncode == 0 and "0 done" in again.stdout and "1 skipped" in again.stdout
    damaged = (out / "t1_seg.dcm").read_bytes()
    (out / "t1_seg.dcm").write_bytes(damaged[:-10] + b"0123456789")
    redo = infer(root / "t1", out, env)
    assert redo.returncode == 0 and "output damaged (output t1_seg.dcm)" in redo.stdout + redo.stderr
    assert sha256(out / "t1_seg.dcm") != hashlib.sha256(damaged[:-10] + b"0123456789").hexdigest()
    hd.seg.segread(out / "t1_seg.dcm")  # whole again


@pytest.mark.parametrize(
    ("fmt", "written"),
    [
        ("nifti", {"t1_seg.nii.gz", "t1_stats.json", "t1_overlay.png"}),
        ("dicom-seg", {"t1_seg.dcm", "t1_sr.dcm", "t1_stats.json", "t1_overlay.png"}),  # a volume: its mosaic too
    ],
)
def test_format_option(seg_run, tmp_path: Path, fmt: str, written: set[str], env_without) -> None:  # noqa: ANN001
    root, _, _, _ = seg_run
    env = env_without(root / "shim", "torch")
    proc = infer(root / "t1", tmp_path / "out", env, "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("t1")} == written
    again = infer(root / "t1", tmp_path / "out", env, "--format", fmt)  # resume reads its own output back
    assert "1 skipped" in again.stdout
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["status"] == "done" and int(rows[0]["gray_matter_voxels"]) > 1000
