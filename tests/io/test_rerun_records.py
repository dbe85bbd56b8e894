"""Reruns keep every record, outputs never share a name, and edgeseg never segments its own outputs.

Issue 21, cases 2-4, through the installed `edgeseg` console script on real files: summary.csv
is rebuilt from records.jsonl and the ``_stats.json`` files (a rerun, a deleted summary), two
inputs whose outputs would share a name keep their extensions (or one is refused in one line),
and an earlier run's outputs inside the input tree are not taken as scans.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

EDGESEG = shutil.which("edgeseg", path=str(Path(sys.executable).parent))
RNG = np.random.default_rng(21)
# brain_fraction of a scan is about its share of pixels >= 0.5 (the threshold model's classes 1, 2)
RANGES = json.dumps({"brain_fraction": [0.0, 0.5]})
# Columns the bug left blank after a rerun or a deleted summary; each is set for every scan here.
ALWAYS_SET = ("qc", "provider", "ms", "model_spacing_mm", "model_shape", "resampled", "brain_fraction")


def infer(*args: str | Path) -> subprocess.CompletedProcess:
    assert EDGESEG, "the edgeseg console script is not installed beside this python"
    return subprocess.run([EDGESEG, "infer", *map(str, args)], capture_output=True, text=True, timeout=120)


def summary(out: Path) -> dict[str, dict[str, str]]:
    """summary.csv's rows, keyed by output."""
    with open(out / "summary.csv", newline="") as f:
        return {row["output"]: row for row in csv.DictReader(f)}


def scan(brain: float, shape: tuple[int, ...] = (24, 24)) -> np.ndarray:
    """Intensities whose share ``brain`` of pixels is 1 or 2 (brain) under the threshold model."""
    x = RNG.uniform(1.0, 2.4, shape) * (RNG.random(shape) < brain)
    return x.astype(np.float32)


def disk(radius: int, shape: tuple[int, int] = (24, 24)) -> np.ndarray:
    """A brain-like slice under the threshold model: a disk of white matter (2) in a 1 px rim of gray (1),
    so that QC's anatomy figures (edgeseg.io.qc_anatomy) see a compact brain with a gray outline."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] - (np.array(shape) / 2 - 0.5)[:, None, None]
    r = np.hypot(yy, xx)
    x = np.where(r <= radius, RNG.uniform(1.0, 1.4, shape), 0.0)
    return np.where(r <= radius - 1, RNG.uniform(1.6, 2.4, shape), x).astype(np.float32)


@pytest.fixture
def model(tmp_path: Path, threshold_onnx_factory) -> Path:  # noqa: ANN001
    """The threshold model with QC ranges and a 0.5 mm training pixel size."""
    meta = {"edgeseg.qc_ranges": RANGES, "edgeseg.pixel_spacing_mm": "0.5"}
    return threshold_onnx_factory(tmp_path / "guarded.onnx", metadata=meta)


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """A clean slice, a flagged one (too much brain), and a 1 mm NIfTI volume (resampled)."""
    root = tmp_path / "in"
    root.mkdir()
    np.save(root / "clean.npy", disk(6))  # 20 % of the frame
    np.save(root / "flagged.npy", scan(0.9))
    nib.save(nib.Nifti1Image(scan(0.3, (20, 18, 2)), np.eye(4)), root / "vol.nii.gz")
    return root


def test_rerun_and_a_deleted_summary_keep_every_column(tmp_path: Path, model: Path, scans: Path) -> None:
    out = tmp_path / "out"
    first = infer(scans, "--model", model, "--out", out)
    assert first.returncode == 0, first.stderr
    made = summary(out)
    assert len(made) == 3 and all(row[k] for row in made.values() for k in ALWAYS_SET)
    assert all(made[o]["gray_matter_mean_intensity"] for o in made)
    assert (
        "outside training range: brain_fraction 0.8" in made["flagged_seg.npy"]["qc"]
        and made["clean_seg.npy"]["qc"] == "ok"
    )
    assert made["vol_seg.nii.gz"]["spacing_mm"] and made["vol_seg.nii.gz"]["resampled"] == "yes"

    rerun = infer(scans, "--model", model, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    assert "0 done, 0 failed, 3 skipped" in rerun.stdout
    assert summary(out) == made
    assert f"flagged.npy ({made['flagged_seg.npy']['qc']})" in rerun.stderr  # the verdict is still named at the end

    (out / "summary.csv").unlink()
    rebuilt = infer(scans, "--model", model, "--out", out)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "0 done, 0 failed, 3 skipped" in rebuilt.stdout
    assert summary(out) == made
    verdict = json.loads((out / "flagged_stats.json").read_text())["qc"]["verdict"]
    assert summary(out)["flagged_seg.npy"]["qc"] == verdict != "ok"


def test_a_summary_is_rebuilt_for_scans_not_in_this_run(tmp_path: Path, model: Path, scans: Path) -> None:
    out = tmp_path / "out"
    assert infer(scans, "--model", model, "--out", out).returncode == 0
    made = summary(out)
    (out / "summary.csv").unlink()
    one = infer(scans / "clean.npy", "--model", model, "--out", out)
    assert one.returncode == 0, one.stderr
    assert summary(out) == made


def test_stats_from_before_they_held_their_row_keep_the_qc_verdict(tmp_path: Path, model: Path, scans: Path) -> None:
    """An --out made before stats files held the summary row: the verdict comes from its stats."""
    out = tmp_path / "out"
    assert infer(scans, "--model", model, "--out", out).returncode == 0
    stats_path = out / "flagged_stats.json"
    stats = json.loads(stats_path.read_text())
    del stats["summary"]
    stats_path.write_text(json.dumps(stats, indent=2) + "\n")
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for record in records:  # as that version recorded it
        if record["output"] == stats_path.name:
            record["sha256"] = hashlib.sha256(stats_path.read_bytes()).hexdigest()
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "summary.csv").unlink()
    rerun = infer(scans, "--model", model, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    assert "0 done, 0 failed, 3 skipped" in rerun.stdout
    assert summary(out)["flagged_seg.npy"]["qc"] == stats["qc"]["verdict"] != "ok"


def save(path: Path, brain: float = 0.3) -> None:
    """A small scan at ``path``: .npy, or an 8-bit image of class indices."""
    x = disk(round(float(np.sqrt(brain * 24 * 24 / np.pi))))  # brain-shaped: QC passes it
    if path.suffix == ".npy":
        np.save(path, x)
    else:
        Image.fromarray(np.round(x).astype(np.uint8)).save(path)


@pytest.mark.parametrize(
    ("names", "outputs"),
    [
        (["a.npy", "a.png", "b.npy"], ["a.npy_seg.npy", "a.png_seg.png", "b_seg.npy"]),
        (["a.png", "a.tif"], ["a.png_seg.png", "a.tif_seg.png"]),
        (["scan.npy", "sub/scan.npy"], ["scan_seg.npy", "sub/scan_seg.npy"]),  # other folders: no clash
    ],
)
def test_inputs_that_would_share_outputs_keep_their_extensions(
    tmp_path: Path, model: Path, names: list[str], outputs: list[str]
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        save(src / name)
    first = infer(src, "--model", model, "--out", out)
    assert first.returncode == 0, first.stderr
    assert f"{len(names)} done, 0 failed" in first.stdout
    assert sorted(summary(out)) == outputs
    for output, name in zip(outputs, names, strict=True):
        stats = json.loads((out / re.sub(r"_seg\.(npy|png)$", "_stats.json", output)).read_text())
        assert stats["input"] == str((src / name).resolve()) and stats["output"] == output
    rerun = infer(src, "--model", model, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    assert f"0 done, 0 failed, {len(names)} skipped" in rerun.stdout and "redoing" not in rerun.stdout


@pytest.mark.parametrize(
    ("given", "kept", "refused"),
    [
        (["x/a.npy", "y/a.npy"], "x/a.npy", "y/a.npy"),  # both named at the top of --out
        (["x/A.npy", "x/a.npy"], "x/A.npy", "x/a.npy"),  # one on a case-insensitive --out
    ],
)
def test_outputs_that_cannot_be_kept_apart_are_refused_in_one_line(
    tmp_path: Path, model: Path, given: list[str], kept: str, refused: str
) -> None:
    for name in given:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        save(tmp_path / name)
    out = tmp_path / "out"
    r = infer(*(tmp_path / g for g in given), "--model", model, "--out", out)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0] == (
        f"FAILED {tmp_path / refused}: its outputs would take the names of {tmp_path / kept}'s"
        f" ({Path(kept).name}_seg.npy); rename one"
    )
    assert lines[1].startswith("error: 1 of 2 scans failed") and "Traceback" not in r.stderr
    assert sorted(p.name for p in out.glob("*_seg.npy")) == [f"{Path(kept).name}_seg.npy"]


def test_a_dicom_folder_and_a_nifti_of_one_name_get_outputs_of_their_own(
    tmp_path: Path, model: Path, dicom_series_factory
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    dicom_series_factory(src / "a")
    nib.save(nib.Nifti1Image(scan(0.3, (20, 18, 2)), np.eye(4)), src / "a.nii.gz")
    r = infer(src, "--model", model, "--out", out, "--format", "nifti")
    assert r.returncode == 0, r.stderr
    assert sorted(summary(out)) == ["a.nii.gz_seg.nii.gz", "a_seg.nii.gz"]
    assert json.loads((out / "a_stats.json").read_text())["input"] == str((src / "a").resolve())
    assert json.loads((out / "a.nii.gz_stats.json").read_text())["input"] == str((src / "a.nii.gz").resolve())


def test_an_earlier_runs_outputs_in_the_input_tree_are_not_segmented(tmp_path: Path, model: Path, scans: Path) -> None:
    first = infer(scans, "--model", model, "--out", scans / "seg")  # --out inside the input tree
    assert first.returncode == 0, first.stderr
    wrote = sorted(p.name for p in (scans / "seg").iterdir() if p.name.endswith(("_seg.npy", ".png", ".nii.gz")))
    assert "vol_overlay.png" in wrote and len(wrote) == 4

    out = tmp_path / "other"
    again = infer(scans, "--model", model, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "3 done, 0 failed, 0 skipped" in again.stdout
    assert "ignored 7 file(s) that edgeseg wrote (never segmented again): " in again.stdout
    assert sorted(summary(out)) == ["clean_seg.npy", "flagged_seg.npy", "vol_seg.nii.gz"]
    assert not (out / "seg").exists()


def test_an_output_named_as_input_is_refused_in_one_line(tmp_path: Path, model: Path, scans: Path) -> None:
    assert infer(scans, "--model", model, "--out", tmp_path / "out").returncode == 0
    labels = tmp_path / "out" / "clean_seg.npy"
    r = infer(labels, "--model", model, "--out", tmp_path / "again")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: {labels}: an output of edgeseg, not a scan: never segmented again (its name ends in"
        " _seg.npy); rename it if it is a scan; nothing to segment"
    ]
    assert not (tmp_path / "again").exists()
