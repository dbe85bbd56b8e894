"""Crop to the brain (edgeseg/infer/crop.py): the box, the paste-back, and `edgeseg infer` with and without it.

Real demo slices, the shipped ONNX model on ONNX Runtime, the real console script. The
agreement figures over the whole demo set and oblique held-out slices are in
tests/export/test_metamorphic.py (slow).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg import SHIPPED_MODEL
from edgeseg.infer.crop import MIN_SAVING, Crop, plan_crop, tissue_mask

GRID, MIN_SIZE = 8, 16  # the shipped model's (contract 3)
FLOOR = 0.999  # brain pixels with the same label cropped and uncropped (issue 24)


@pytest.fixture(scope="module")
def demo() -> tuple[np.ndarray, np.ndarray]:
    """12 real demo slices (394x394, zero background) over the three planes, and their brain masks."""
    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo

    slices = load_slices(build_demo())
    picks = [round(k * (len(slices) - 1) / 11) for k in range(12)]
    return np.stack([slices.images[i] for i in picks]).astype(np.float32), np.stack(
        [slices.masks[i] > 0 for i in picks]
    )


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    """12 neighbouring demo slices of one plane (a volume's worth of one brain), and their brain masks."""
    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo

    slices = load_slices(build_demo())
    return np.stack(slices.images[200:212]).astype(np.float32), np.stack(slices.masks[200:212]) > 0


@pytest.fixture(scope="module")
def runner():  # noqa: ANN201
    from edgeseg.runtime.runners import RunnerSpec, open_runner

    return open_runner(SHIPPED_MODEL, RunnerSpec(outputs=("logits", "labels")))


def _first(mask: np.ndarray, axis: int) -> np.ndarray:
    """(n, H, W) bool -> index of each slice's first row (axis 1) or column (axis 2) with a True."""
    return mask.any(axis=3 - axis).argmax(1)


def _check_box(crop: Crop, stack: np.ndarray) -> None:
    """Everything the graph measures is the same inside the box: tissue, peak, pooling phase."""
    inside = np.zeros(stack.shape, bool)
    inside[:, crop.top : crop.bottom, crop.left : crop.right] = True
    assert not (tissue_mask(stack) & ~inside).any(), "tissue outside the box"
    assert np.array_equal(stack.max((1, 2)), np.where(inside, stack, 0).max((1, 2))), "a slice's peak outside the box"
    nz, cut = stack != 0, (stack != 0)[:, crop.top : crop.bottom, crop.left : crop.right]
    assert np.all((_first(cut, 1) + crop.top - _first(nz, 1)) % GRID == 0), "row phase changed"
    assert np.all((_first(cut, 2) + crop.left - _first(nz, 2)) % GRID == 0), "column phase changed"
    assert min(crop.shape) >= MIN_SIZE


def _chunks(stack: np.ndarray, n: int = 5) -> list[np.ndarray]:
    return [stack[i : i + n] for i in range(0, len(stack), n)]


def test_a_volume_gets_one_grid_aligned_box_around_all_its_tissue(volume) -> None:  # noqa: ANN001
    stack, _ = volume
    crop = plan_crop(_chunks(stack), GRID, MIN_SIZE)
    assert crop is not None and crop.frame == stack.shape[1:]
    assert crop.top % GRID == crop.left % GRID == 0
    _check_box(crop, stack)
    assert crop.fraction <= 1 - MIN_SAVING


@pytest.mark.parametrize("index", range(12))
def test_a_single_slice_gets_its_own_box(demo, index: int) -> None:  # noqa: ANN001
    stack = demo[0][index : index + 1]
    crop = plan_crop([stack], GRID, MIN_SIZE)
    assert crop is not None
    _check_box(crop, stack)


def test_noise_everywhere_keeps_the_phase_and_still_crops(demo) -> None:  # noqa: ANN001
    """A noisy background is nonzero up to the frame's edge: the first nonzero row is row 0, so
    the box must start on the grid counted from there, and the noise must not widen the box."""
    stack = demo[0][3:6]
    noisy = stack + np.random.default_rng(0).uniform(0.1, 2.0, stack.shape).astype(np.float32)
    crop = plan_crop([noisy], GRID, MIN_SIZE)
    assert crop is not None and crop.fraction < 0.8
    _check_box(crop, noisy)


def test_a_slice_shifted_off_the_grid_grows_the_box_until_the_phase_holds(demo) -> None:  # noqa: ANN001
    """A dim speck (nonzero, below the tissue threshold) far from the brain sets the slice's first
    nonzero row; a box around the tissue alone would start the pooling grid elsewhere."""
    stack = demo[0][4:5].copy()
    stack[0, 3, 200] = 0.01 * stack.max()
    crop = plan_crop([stack], GRID, MIN_SIZE)
    _check_box(crop, stack)
    assert crop.top <= 3


def test_empty_or_full_frame_volumes_are_not_cropped(demo) -> None:  # noqa: ANN001
    assert plan_crop([np.zeros((2, 64, 64), np.float32)], GRID, MIN_SIZE) is None
    assert plan_crop([np.full((2, 64, 64), 50.0, np.float32)], GRID, MIN_SIZE) is None  # tissue everywhere
    assert plan_crop([], GRID, MIN_SIZE) is None


def test_paste_puts_the_box_back_and_background_around_it(demo, runner) -> None:  # noqa: ANN001
    stack, brain = demo
    x = stack[:4, None]
    crop = plan_crop([stack[:4]], GRID, MIN_SIZE)
    out = runner.run(crop.cut(x))
    logits, labels = crop.paste(out["logits"], out["labels"])
    assert labels.shape == (4, *stack.shape[1:]) and logits.shape == (4, 3, *stack.shape[1:])
    box = np.s_[:, crop.top : crop.bottom, crop.left : crop.right]
    assert np.array_equal(labels[box], out["labels"])
    outside = np.ones(labels.shape, bool)
    outside[box] = False
    assert not labels[outside].any() and not logits.argmax(1)[outside].any()
    ref = runner.run(x)
    assert not ref["labels"][outside].any(), "the uncropped model labels brain outside the box"
    assert (labels[brain[:4]] == ref["labels"][brain[:4]]).mean() >= FLOOR


def _infer(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("edgeseg")
    return subprocess.run([str(exe), "infer", *args, "--backend", "ort"], capture_output=True, text=True, timeout=600)


def test_infer_crops_by_default_and_runs_whole_slices_with_no_crop(volume, tmp_path: Path) -> None:  # noqa: ANN001
    stack, brain = volume
    np.save(tmp_path / "stack.npy", stack)
    crop = _infer(str(tmp_path / "stack.npy"), "--out", str(tmp_path / "crop"))
    whole = _infer(str(tmp_path / "stack.npy"), "--out", str(tmp_path / "whole"), "--no-crop")
    assert crop.returncode == 0 and whole.returncode == 0, crop.stderr + whole.stderr
    assert "; 1 cropped to the brain;" in crop.stdout and "; 0 cropped to the brain;" in whole.stdout
    a, b = np.load(tmp_path / "crop" / "stack_seg.npy"), np.load(tmp_path / "whole" / "stack_seg.npy")
    assert a.shape == b.shape == stack.shape
    assert (a[brain] == b[brain]).mean() >= FLOOR and (a == b).mean() >= FLOOR


def test_a_resampled_volume_is_cropped_on_the_models_grid(tmp_path: Path) -> None:
    """The example scan (1 mm, resampled to the model's 0.5 mm): same labels and QC verdict either way."""
    import csv

    import nibabel as nib

    from edgeseg import SHIPPED_MODEL_DIR

    scan = SHIPPED_MODEL_DIR / "example"
    crop = _infer(str(scan), "--out", str(tmp_path / "crop"), "--no-overlay")
    whole = _infer(str(scan), "--out", str(tmp_path / "whole"), "--no-overlay", "--no-crop")
    assert crop.returncode == 0 and whole.returncode == 0, crop.stderr + whole.stderr
    assert ", 1 resampled; 1 cropped to the brain;" in crop.stdout
    (name,) = [p.name for p in (tmp_path / "crop").glob("*_seg.nii.gz")]
    a = np.asarray(nib.load(tmp_path / "crop" / name).dataobj)
    b = np.asarray(nib.load(tmp_path / "whole" / name).dataobj)
    either = (a > 0) | (b > 0)
    assert either.any() and (a[either] == b[either]).mean() >= FLOOR
    rows = [next(csv.DictReader((tmp_path / d / "summary.csv").open())) for d in ("crop", "whole")]
    assert rows[0]["qc"] == rows[1]["qc"]
    for key in ("brain_fraction", "conf_mean", "gm_wm_ratio"):
        assert float(rows[0][key]) == pytest.approx(float(rows[1][key]), rel=2e-3), key


def test_signed_intensities_are_not_cropped(demo) -> None:  # noqa: ANN001
    """A CT in HU (air far below zero): the tissue level means nothing there, so no box."""
    stack = demo[0][:3]
    assert plan_crop(_chunks(stack), GRID, MIN_SIZE) is not None
    ct = np.where(stack > 0, stack, -0.5 * stack.max())
    assert plan_crop(_chunks(ct), GRID, MIN_SIZE) is None
    slight = np.where(stack > 0, stack, -0.05 * stack.max())  # above -SIGNED_SHARE x the peak: cropped
    assert plan_crop(_chunks(slight), GRID, MIN_SIZE) is not None


def test_brain_at_an_inner_box_edge_is_caught_and_the_frames_edge_is_not() -> None:
    crop = Crop(8, 40, 16, 48, frame=(64, 48))  # right edge is the frame's
    labels = np.zeros((2, *crop.shape), np.uint8)
    assert not crop.touches(labels)
    labels[1, 10:20, -1] = 2  # the frame's own edge: nothing beyond it
    assert not crop.touches(labels)
    labels[0, 1, 10] = 1  # within RING of the top edge, which has frame above it
    assert crop.touches(labels)


def test_tissue_is_what_the_graphs_normalisation_calls_tissue(demo) -> None:  # noqa: ANN001
    """The numpy mask's mean intensity is the model's own tissue_scale (torch), slice by slice."""
    import torch

    from edgeseg import model_contract
    from edgeseg.infer import crop

    assert (crop.TISSUE_THRESHOLD, crop.TINY) == (model_contract.TISSUE_THRESHOLD, model_contract.TINY)
    stack = demo[0]
    mask = tissue_mask(stack)
    ours = np.array([s[m].mean() for s, m in zip(stack, mask, strict=True)])
    theirs = model_contract.tissue_scale(torch.from_numpy(stack[:, None])).numpy().ravel()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
