"""The robustness report: its perturbations, and `edgeseg evaluate --robustness` on an ONNX file without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.metrics import IGNORE
from edgeseg.train.robustness import bias_field, gamma, resolution, rician, scale, tight_crop, zero_pad
from edgeseg.train.robustness_heads import (
    CONTRASTS,
    EMPTY_KINDS,
    HEAD_MARGIN_PX,
    HEADS,
    contrast,
    deformed,
    empty_slices,
    head_on,
)


def _slice() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((60, 80), np.float32)
    image[10:40, 20:70] = np.linspace(10, 200, 50, dtype=np.float32)[None, :]
    mask = (image > 0).astype(np.uint8) + (image > 100)
    return image, mask


def test_tight_crop_keeps_all_tissue_and_a_4px_margin() -> None:
    image, mask = _slice()
    cropped, cmask = tight_crop(image, mask)
    assert cropped.shape == (30 + 8, 50 + 8) and cmask.shape == cropped.shape
    assert cropped.sum() == image.sum() and (cmask > 0).sum() == (mask > 0).sum()


def test_zero_padding_is_not_scored() -> None:
    image, mask = _slice()
    padded, pmask = zero_pad(100)(image, mask)
    assert padded.shape == (260, 280) and (pmask == IGNORE).sum() == 260 * 280 - 60 * 80


def test_intensity_perturbations_keep_the_mask_and_change_the_image() -> None:
    image, mask = _slice()
    for perturb in (bias_field(0.4), gamma(0.7), rician(0.05), scale(100.0), resolution(3.0)):
        out, out_mask = perturb(image, mask)
        assert out.shape == image.shape and out.dtype == np.float32 and out_mask is mask
        assert np.isfinite(out).all() and not np.allclose(out, image)
    assert resolution(0.5)(image, mask)[0] is image  # the model's own pixel size: unchanged


def test_robustness_cli_on_onnx_runs_without_torch(tiny_onnx: Path) -> None:
    code = (
        "import sys; from edgeseg.cli import app\n"
        f"try:\n    app(['evaluate', '--robustness', {str(tiny_onnx)!r}, '--robustness-slices', '2'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    families = [line.split("|")[1].strip() for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert families == [
        "clean",
        "tight crop",
        "wide pad",
        "oblique",
        "bias field",
        "gamma",
        "noise",
        "intensity scale",
        "resolution",
        "head on",
        "contrast",
        "deformed",
        "empty",
    ]
    empty = [line for line in result.stdout.splitlines() if line.startswith("| empty |")][0]
    assert "background" in empty and empty.split("|")[6].strip() == str(2 * len(EMPTY_KINDS))


def _brain() -> tuple[np.ndarray, np.ndarray]:
    """A round 'brain': CSF-dark rim, gray ring, white core (T1 order), labels 1 and 2."""
    yy, xx = np.mgrid[:120, :120] - 60.0
    r = np.hypot(yy, xx)
    image = np.select([r < 25, r < 38, r < 42], [220.0, 160.0, 80.0], 0.0).astype(np.float32)
    mask = np.select([r < 25, r < 38], [2, 1], 0).astype(np.uint8)
    return image, mask


@pytest.mark.parametrize("kind", [name for name, _ in HEADS])
def test_head_on_wraps_the_brain_in_tissue_scored_as_background(kind: str) -> None:
    image, mask = _brain()
    out, out_mask = head_on(kind)(image, mask)
    pad = HEAD_MARGIN_PX
    assert out.shape == (120 + 2 * pad, 120 + 2 * pad) and out.dtype == np.float32
    inner = (slice(pad, pad + 120), slice(pad, pad + 120))
    assert np.array_equal(out[inner][image > 0], image[image > 0])  # the brain is untouched
    assert np.array_equal(out_mask[inner][image > 0], mask[image > 0])
    added = (out > 0) & (np.pad(image, pad) == 0)
    thickness_mm = sum(mm for _, mm, _ in dict(HEADS)[kind])
    assert added.sum() > 2 * np.pi * 42 * thickness_mm  # a ring of at least the layers' thickness, in px
    assert (out_mask[added] == 0).all()  # scored as background
    margin_air = (out == 0) & (np.pad(np.ones_like(mask), pad) == 0)
    assert margin_air.any() and (out_mask[margin_air] == IGNORE).all()  # the added margin's air: not scored


def test_contrasts_reorder_the_tissues_as_named() -> None:
    image, mask = _brain()
    means = {}
    for kind in CONTRASTS:
        out, out_mask = contrast(kind)(image, mask)
        assert out_mask is mask and (out[image == 0] == 0).all() and (out[image > 0] > 0).all()
        means[kind] = [float(out[(mask == c) & (image > 0)].mean()) for c in (0, 1, 2)]  # CSF rim, GM, WM
    csf, gm, wm = means["inverted"]
    assert csf > gm > wm  # T1 inverted
    csf, gm, wm = means["T2-like"]
    assert csf > gm > wm
    _, gm, wm = means["compressed"]
    assert 0 < wm - gm < 0.5 * (220 - 160)  # GM/WM contrast compressed, order kept


@pytest.mark.parametrize("mm", [2.0, 4.0])
def test_deformed_moves_image_and_mask_together_by_at_most_its_amplitude(mm: float) -> None:
    image, mask = _brain()
    out, out_mask = deformed(mm)(image, mask)
    assert out.shape == image.shape and out_mask.dtype == np.uint8
    assert not np.array_equal(out_mask, mask)
    assert set(np.unique(out_mask).tolist()) <= {0, 1, 2, IGNORE}
    # every warped white-matter pixel came from within mm / 0.5 px of the white core (radius 25 px)
    r = np.hypot(*(np.argwhere(out_mask == 2) - 60.0).T)
    assert r.max() <= 25 + mm / 0.5 + 1


@pytest.mark.parametrize("kind", EMPTY_KINDS)
def test_empty_slices_hold_no_brain_and_are_seeded(kind: str) -> None:
    a, b = empty_slices(kind, 2), empty_slices(kind, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)) and not np.array_equal(a[0], a[1])
    assert all(s.shape == (394, 394) and s.dtype == np.float32 and s.min() >= 0 and s.max() > 0 for s in a)
