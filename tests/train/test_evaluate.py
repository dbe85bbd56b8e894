"""Evaluation: pooled and per-slice metrics of a checkpoint on its held-out slices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeseg.data.dataset import load_slices
from edgeseg.errors import EdgesegError
from edgeseg.metrics import evaluate_arrays
from edgeseg.model import load_checkpoint
from edgeseg.train.evaluate import evaluate, evaluate_checkpoint


def test_checkpoint_report_is_scored_on_its_held_out_slices(tiny_checkpoint: Path, tiny_dataset) -> None:  # noqa: ANN001
    root, test_keys = tiny_dataset
    report = evaluate_checkpoint(tiny_checkpoint)
    assert report["slices"] == len(test_keys) and "per_slice" not in report
    model, _ = load_checkpoint(tiny_checkpoint)
    slices = load_slices(root)
    held_out = [slices.keys.index(k) for k in test_keys]
    with torch.inference_mode():
        preds = [model(torch.from_numpy(slices.images[i][None, None])).argmax(1)[0].numpy() for i in held_out]
    expected = evaluate_arrays(preds, [slices.masks[i] for i in held_out], 3)
    assert report["miou_fg"] == pytest.approx(expected["miou_fg"])


def test_per_slice_rows_agree_with_single_slice_evaluation(tiny_checkpoint: Path, tiny_dataset) -> None:  # noqa: ANN001
    root, test_keys = tiny_dataset
    report = evaluate_checkpoint(tiny_checkpoint, per_slice=True)
    rows = report["per_slice"]
    assert sorted(r["key"] for r in rows) == sorted(test_keys)
    model, _ = load_checkpoint(tiny_checkpoint)
    slices = load_slices(root)
    index = {k: i for i, k in enumerate(slices.keys)}
    assert sum(r["foreground_px"] for r in rows) == sum(int((slices.masks[index[k]] > 0).sum()) for k in test_keys)
    for row in rows[:: max(1, len(rows) // 3)]:  # a few, each alone through the same evaluate
        alone, _ = evaluate(model, slices, [index[row["key"]]], class_names=model.config.class_names)
        assert row["miou_fg"] == pytest.approx(alone["miou_fg"])
        assert row["iou_gray_matter"] == pytest.approx(alone["iou"]["gray_matter"])


def test_cli_per_slice_into_a_folder_is_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeseg.cli", "evaluate", str(tiny_checkpoint), "--per-slice", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "is a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_a_contract_2_checkpoint_is_reframed_as_contract_3(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from edgeseg.train.evaluate import reframe_checkpoint

    old = torch.load(tiny_checkpoint, weights_only=True)
    old["normalization_contract"], old["model_config"]["aligned"] = 2, False
    torch.save(old, tmp_path / "c2.pt")
    metrics = reframe_checkpoint(tmp_path / "c2.pt", tmp_path / "c3.pt")
    model, ckpt = load_checkpoint(tmp_path / "c3.pt")
    assert ckpt["normalization_contract"] == 3 and model.config.aligned
    assert all(torch.equal(v, old["state_dict"][k]) for k, v in ckpt["state_dict"].items())
    assert ckpt["metrics"] == metrics and ckpt["reframed"]["metrics_contract_2"] == old["metrics"]
    assert metrics["miou_fg"] == pytest.approx(evaluate_checkpoint(tmp_path / "c3.pt")["miou_fg"])
    with pytest.raises(EdgesegError, match="only a contract-2"):
        reframe_checkpoint(tmp_path / "c3.pt", tmp_path / "again.pt")
