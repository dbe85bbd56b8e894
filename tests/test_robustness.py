"""The robustness report: its perturbations, and `edgeseg evaluate --robustness` on an ONNX file without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeseg.metrics import IGNORE
from edgeseg.robustness import bias_field, gamma, resolution, rician, scale, tight_crop, zero_pad


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
    ]
