"""QC verdicts through the installed CLI (issue 22 item 3, issue 23 item 3): the shipped model and
its own QC ranges, real files.

One `edgeseg infer --force` run over a folder of cases, each a test: a series with no brain,
pydicom's abdomen (``MR-SIEMENS-DICOM-WithOverlays``) and shoulder (``MR2_UNCR``) MR, pydicom's CT
forced through, clean template slices (a stack and one slice), the MNI152 template as a whole
brain at 4 mm and a 40 mm slab of it; and a raw head built around the template by
:mod:`edgeseg.data.synth`, whose verdict must agree with how much of its non-brain tissue came out
labelled brain.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from edgeseg.io.qc import REASON_KINDS, Verdict

EDGESEG = Path(sys.executable).parent / "edgeseg"
SLICE_MM = 4  # the whole-brain case: every 4th axial slice of the 1 mm template


def infer(*args: str | Path) -> subprocess.CompletedProcess:
    cmd = [str(EDGESEG), "infer", *map(str, args), "--backend", "ort", "--no-overlay"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def template_volume(step: int, first: int = 0, count: int | None = None) -> nib.Nifti1Image:
    """The demo's MNI152 T1 (skull-stripped, 1 mm), axial slices ``first::step``, as a NIfTI."""
    from edgeseg.data.volume import load_template

    t1 = load_template().t1[:, :, first::step][:, :, :count]
    return nib.Nifti1Image(np.ascontiguousarray(t1), np.diag([1.0, 1.0, float(step), 1.0]))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, str]], Path, str]:
    """Rows (by input name), --out and stderr of one forced run over every case."""
    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo

    src = tmp_path_factory.mktemp("cases")
    for folder, name in (
        ("abdomen", "MR-SIEMENS-DICOM-WithOverlays.dcm"),
        ("shoulder", "MR2_UNCR.dcm"),
        ("ct", "CT_small.dcm"),
    ):
        (src / folder).mkdir()
        shutil.copy(get_testdata_file(name), src / folder / name)
    nib.save(nib.Nifti1Image(np.zeros((120, 140, 12), np.float32), np.diag([1.5, 1.5, 3.0, 1.0])), src / "none.nii.gz")
    slices = load_slices(build_demo())
    np.save(src / "stack.npy", np.stack(slices.images[200:212]).astype(np.float32))
    np.save(src / "one.npy", np.asarray(slices.images[100], np.float32))
    nib.save(template_volume(SLICE_MM), src / "whole.nii.gz")
    nib.save(template_volume(1, first=80, count=40), src / "slab.nii.gz")  # 40 x 1 mm through the middle
    out = src.parent / "out"
    proc = infer(src, "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr
    with open(out / "summary.csv", newline="") as f:
        rows = {Path(r["input"]).name: r for r in csv.DictReader(f)}
    return rows, out, proc.stderr


def kinds(row: dict[str, str]) -> set[str]:
    """The reason kinds of a row's verdict."""
    return {reason.split(": ", 1)[0] for reason in Verdict.from_row(row).reasons}


def test_a_series_with_no_brain_is_flagged_no_brain(run) -> None:  # noqa: ANN001
    rows, out, stderr = run
    row = rows["none.nii.gz"]
    assert row["qc_status"] == "flagged" and row["qc"].startswith("no brain: ") and kinds(row) == {"no brain"}, row
    assert row["coverage"] == "unknown"
    stats = json.loads((out / "none_stats.json").read_text())["qc"]
    assert stats["status"] == "flagged" and stats["reasons"] == [row["qc"]] and stats["verdict"] == row["qc"]
    assert "none.nii.gz (no brain" in stderr  # the run's closing warning names it


@pytest.mark.parametrize("folder", ["abdomen", "shoulder"])
def test_body_mr_is_not_brain_anatomy(run, folder: str) -> None:  # noqa: ANN001
    row = run[0][folder]
    assert row["qc_status"] == "flagged", row
    assert kinds(row) <= set(REASON_KINDS[1:]) and "not brain anatomy" in kinds(row), row["qc"]
    assert row["coverage"] == "single slice"


def test_a_ct_forced_through_is_flagged(run) -> None:  # noqa: ANN001
    row = run[0]["ct"]
    assert row["qc_status"] == "flagged" and "not brain anatomy" in kinds(row), row["qc"]
    assert "signed" in row["qc"]  # Hounsfield units below zero: no MR


@pytest.mark.parametrize(("name", "coverage"), [("stack.npy", "partial"), ("one.npy", "single slice")])
def test_clean_template_slices_are_ok(run, name: str, coverage: str) -> None:  # noqa: ANN001
    row = run[0][name]
    assert row["qc"] == "ok" and row["qc_status"] == "ok", row
    assert row["coverage"].split(":")[0] == coverage


def test_the_whole_template_is_whole_and_a_40_mm_slab_is_partial(run) -> None:  # noqa: ANN001
    rows, out, _ = run
    whole, slab = rows["whole.nii.gz"], rows["slab.nii.gz"]
    assert whole["qc"] == "ok" and whole["coverage"] == "whole", whole
    assert "brain ends inside the stack" in whole["coverage_detail"]
    assert slab["qc"] == "ok" and slab["coverage"] == "partial: 40.0 mm slab", slab
    assert "reaches the first and last slice" in slab["coverage_detail"]
    stats = json.loads((out / "slab_stats.json").read_text())
    assert stats["qc"]["coverage"] == "partial" and stats["coverage"] == slab["coverage"]


def test_a_raw_head_is_flagged_exactly_when_its_scalp_comes_out_as_brain(tmp_path: Path) -> None:
    """A raw head (edgeseg.data.synth: skull, scalp, eyes, neck around the template brain), 10 axial
    slices 10 mm apart through the brain: QC must flag it if more than 2 % of its non-brain
    tissue is labelled brain, and must pass it if under 0.5 % is."""
    from edgeseg.data.synth import AIR, BRAIN, PAD_MM
    from edgeseg.data.synth_planes import raw_head_volume

    image, _, tissue = raw_head_volume(seed=3)
    picks = np.arange(PAD_MM + 60, PAD_MM + 160, 10)
    nib.save(nib.Nifti1Image(image[:, :, picks], np.diag([1.0, 1.0, 10.0, 1.0])), tmp_path / "head.nii.gz")
    proc = infer(tmp_path / "head.nii.gz", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    seg = np.asarray(nib.load(tmp_path / "out" / "head_seg.nii.gz").dataobj)
    head = (tissue[:, :, picks] != AIR) & (tissue[:, :, picks] != BRAIN)  # skull, scalp, eyes, neck, CSF rim
    wrong = float((seg[head] > 0).mean())
    assert head.any()
    if wrong > 0.02:
        assert row["qc_status"] == "flagged", (wrong, row["qc"])
    elif wrong < 0.005:
        assert row["qc_status"] == "ok", (wrong, row["qc"])
