"""Tests for edgeseg.io.qc: the figures, the ranges stored at export, and the guard in `edgeseg infer`.

The end-to-end cases run the real CLI with the shipped model, given QC ranges that the
export code computes on real demo slices, on the MNI152 example slab, a CT-like and an
ultrasound-like volume, and on pydicom's own CT and ultrasound files.
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
import onnx
import pytest
from pydicom.data import get_testdata_file

from edgeseg import SHIPPED_MODEL
from edgeseg.io.qc import FIGURES, METADATA_KEY, NO_RANGES, QCCounter, judge, max_softmax, parse_ranges

EDGESEG = Path(sys.executable).parent / "edgeseg"
EXAMPLE = Path(__file__).parents[2] / "export" / "example" / "mni152_t1_axial_slab.nii.gz"
NAMES = ("background", "gray_matter", "white_matter")


def infer(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGESEG), "infer", *map(str, args)], capture_output=True, text=True, timeout=300)


def rows_of(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return {Path(r["input"]).name: r for r in csv.DictReader(f)}


def one_hot_logits(labels: np.ndarray, margin: np.ndarray | float) -> np.ndarray:
    """(n, H, W) labels -> (n, 3, H, W) logits whose winner leads the others by ``margin``."""
    logits = np.zeros((labels.shape[0], 3, *labels.shape[1:]), np.float32)
    np.put_along_axis(logits, labels[:, None].astype(np.int64), np.broadcast_to(margin, labels.shape)[:, None], 1)
    return logits


def test_counter_figures_by_hand() -> None:
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[0, :2, :5] = 1  # slice 0: 10 GM + 20 WM of 100 pixels
    labels[0, 2:4, :] = 2
    labels[1, 0, 0] = 1  # slice 1: 1 % brain, below MIN_BRAIN: left out
    labels[2, :5, :] = 2  # slice 2: 50 WM
    margin = np.where(labels > 0, np.log(8.0), 0.0)  # brain pixels: p = 8 / (8 + 1 + 1) = 0.8
    counter = QCCounter.for_classes(NAMES)
    counter.add(one_hot_logits(labels, margin), labels)
    figures = counter.figures()
    assert figures["brain_fraction"] == pytest.approx(80 / 200)
    assert figures["gm_wm_ratio"] == pytest.approx(10 / 70)
    assert figures["conf_mean"] == pytest.approx(0.8, abs=1e-6)
    assert figures["conf_p5"] == pytest.approx(0.8, abs=1e-3)
    assert max_softmax(np.zeros((1, 3, 1, 1), np.float32))[0, 0, 0] == pytest.approx(1 / 3)


def test_counter_equals_a_plain_softmax_and_percentile() -> None:
    """The fused pass (class-by-class softmax, bincount histogram) against scipy's softmax and
    numpy's percentile, on random logits in several batches, one slice nearly empty."""
    from scipy.special import softmax

    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2, (5, 3, 40, 30)).astype(np.float32)
    logits[2, 0] += 30  # slice 2: background everywhere, left out
    labels = logits.argmax(1).astype(np.uint8)
    counter = QCCounter.for_classes(NAMES)
    for start in (0, 2, 3):  # uneven batches, as infer sends them
        stop = {0: 2, 2: 3, 3: 5}[start]
        counter.add(logits[start:stop], labels[start:stop])
    kept = [0, 1, 3, 4]
    brain = labels[kept] > 0
    conf = softmax(logits[kept].astype(np.float64), axis=1).max(1)[brain]
    figures = counter.figures()
    assert figures["brain_fraction"] == pytest.approx(brain.mean())
    assert figures["gm_wm_ratio"] == pytest.approx((labels[kept] == 1).sum() / (labels[kept] == 2).sum())
    assert figures["conf_mean"] == pytest.approx(conf.mean(), rel=1e-6)
    assert abs(figures["conf_p5"] - np.percentile(conf, 5)) <= 1 / 1000  # one histogram bin
    assert np.allclose(max_softmax(logits), softmax(logits.astype(np.float64), axis=1).max(1), atol=1e-6)


JUDGED = [  # figures, ranges, verdict
    ({"conf_mean": 0.95}, None, NO_RANGES),
    ({}, {"conf_mean": [0.9, 1.0]}, "no brain: no slice with >= 2% brain"),
    ({"conf_mean": 0.95, "brain_fraction": 0.3}, {"conf_mean": [0.9, 1.0], "brain_fraction": [0.02, 0.5]}, "ok"),
    ({"conf_mean": 0.8}, {"conf_mean": [0.9, 1.0]}, "outside training range: conf_mean 0.8 outside 0.9-1"),
]


@pytest.mark.parametrize(("figures", "ranges", "verdict"), JUDGED)
def test_judge(figures: dict, ranges: dict | None, verdict: str) -> None:
    assert judge(figures, ranges) == verdict


def test_parse_ranges_tolerates_models_without_them() -> None:
    assert parse_ranges(None) is None and parse_ranges("") is None and parse_ranges("{not json") is None
    assert parse_ranges(json.dumps({"conf_mean": [0.9, 1], "slices": 3})) == {"conf_mean": [0.9, 1.0]}


def test_export_stores_ranges(tiny_onnx: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(str(tiny_onnx), load_external_data=False).metadata_props}
    stored = json.loads(meta[METADATA_KEY])
    assert stored["slices"] == 24 and stored["min_brain"] == 0.02  # every tiny_dataset slice
    ranges = parse_ranges(meta[METADATA_KEY])
    # gm_wm_ratio needs white matter in some slice; the tiny fixture model may predict none
    assert {"brain_fraction", "conf_mean", "conf_p5"} <= set(ranges) <= set(FIGURES)
    assert 0.02 <= ranges["brain_fraction"][0] <= ranges["brain_fraction"][1] <= 1
    assert 1 / 3 <= ranges["conf_p5"][0] <= ranges["conf_p5"][1] <= 1


def _drop_ranges(model: onnx.ModelProto) -> None:
    """Remove the model's QC ranges from its metadata, keeping every other entry."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


@pytest.fixture(scope="module")
def guarded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model with QC ranges from the export code, on every 4th demo slice (real MRI)."""
    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo
    from edgeseg.io.qc import ranges_on_slices

    images = load_slices(build_demo()).images[::4]
    model = onnx.load(str(SHIPPED_MODEL))
    _drop_ranges(model)  # the shipped ones
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(ranges_on_slices(SHIPPED_MODEL.read_bytes(), images, NAMES))
    path = tmp_path_factory.mktemp("guarded") / "model.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def unguarded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model without QC ranges, as every model exported before them."""
    model = onnx.load(str(SHIPPED_MODEL))
    _drop_ranges(model)
    path = tmp_path_factory.mktemp("unguarded") / "model.onnx"
    onnx.save(model, str(path))
    return path


def not_brain_mr(folder: Path) -> None:
    """The example slab as a CT-like head (skull ring, brain 30-40 HU, air -1000) and an
    ultrasound-like fan of Rayleigh speckle; same grid, so only their content differs."""
    from scipy import ndimage

    img = nib.load(EXAMPLE)
    t1 = np.asarray(img.dataobj, np.float32)
    rng = np.random.default_rng(0)
    brain = t1 > 0.1 * t1.max()
    ct = np.full(t1.shape, -1000.0, np.float32)
    ct[ndimage.binary_dilation(brain, iterations=6)] = 1000.0
    ct[ndimage.binary_dilation(brain, iterations=2)] = 5.0
    ct[brain] = 30 + 10 * t1[brain] / t1.max() + rng.normal(0, 4, brain.sum())
    nib.save(nib.Nifti1Image(ct, img.affine), folder / "ct_like.nii.gz")
    h, w = t1.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot(xx - w / 2, yy + 5)
    fan = (np.abs(np.arctan2(xx - w / 2, yy + 5)) < 0.6) & (radius < 0.9 * h)
    us = np.stack(
        [fan * rng.rayleigh(40, (h, w)) * (1 + 0.5 * np.sin(radius / 7)) for _ in range(t1.shape[2])], axis=-1
    ).astype(np.float32)
    nib.save(nib.Nifti1Image(us, img.affine), folder / "us_like.nii.gz")


def test_ct_and_ultrasound_like_are_flagged_and_the_template_is_not(tmp_path: Path, guarded_model: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(EXAMPLE, src / "mni.nii.gz")
    not_brain_mr(src)
    proc = infer(src, "--model", guarded_model, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr  # flagged, not failed
    rows = rows_of(tmp_path / "out")
    assert rows["mni.nii.gz"]["qc"] == "ok"
    for name in ("ct_like.nii.gz", "us_like.nii.gz"):
        assert "outside" in rows[name]["qc"], rows[name]  # (the contract-2 model can be sure of them)
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "2 scan(s)" in warning[0]
    assert "ct_like.nii.gz" in warning[0] and "us_like.nii.gz" in warning[0] and "mni.nii.gz" not in warning[0]


@pytest.mark.parametrize(("name", "modality"), [("CT_small.dcm", "CT"), ("examples_ybr_color.dcm", "US")])
def test_non_mr_dicom_is_skipped_and_force_overrides(
    tmp_path: Path, unguarded_model: Path, name: str, modality: str
) -> None:
    """Triage (edgeseg.io.triage) skips a non-MR series with its reason, not as a failure: exit 0."""
    import pydicom

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file(name), src / name)
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # an MR series beside it, as acquired
    mr.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]  # (the file says DERIVED, which triage skips)
    mr.save_as(src / "MR_small.dcm")
    proc = infer(src, "--out", tmp_path / "out")
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("skipped")]
    assert proc.returncode == 0 and len(skipped) == 1 and "1 done, 0 failed" in proc.stdout, proc.stderr
    assert f"Modality is {modality}, not MR" in skipped[0] and "--force" in skipped[0]
    if modality == "CT":  # forced: segmented, with the QC columns filled
        forced = infer(src, "--out", tmp_path / "forced", "--force", "--model", unguarded_model)
        assert forced.returncode == 0, forced.stderr
        assert "2 done, 0 failed" in forced.stdout
        with open(tmp_path / "forced" / "summary.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 and {r["qc"] for r in rows} == {NO_RANGES} and all(r["conf_mean"] for r in rows)


def test_model_without_ranges_still_runs(tmp_path: Path, unguarded_model: Path) -> None:
    proc = infer(EXAMPLE, "--out", tmp_path / "out", "--model", unguarded_model)
    assert proc.returncode == 0, proc.stderr
    row = rows_of(tmp_path / "out")[EXAMPLE.name]
    assert row["qc"] == NO_RANGES and 0 < float(row["brain_fraction"]) < 1 and float(row["conf_mean"]) > 0.5
