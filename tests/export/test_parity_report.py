"""Tests for edgeseg/export/parity_report.py: the model card written beside an export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from edgeseg.export.parity import ParityConfig, load_eval_data, size_table, validate
from edgeseg.export.parity_report import write_model_card
from edgeseg.files import sha256_file


def test_write_model_card(tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A user's own export folder: every file scored, the splits that apply, robustness, the commands."""
    folder = tmp_path / "card"
    folder.mkdir()
    for path in (tiny_checkpoint, tiny_onnx):
        shutil.copy(path, folder / path.name)
    checkpoint, model = folder / tiny_checkpoint.name, folder / tiny_onnx.name
    report = validate(model, config=ParityConfig(sizes=size_table(full=1, other=1), fp16_torch_slices=0))
    assert report.passed, report.failures
    report.write(folder / "parity.json")
    held = load_eval_data(torch.load(checkpoint, weights_only=True))
    readme = write_model_card(folder, checkpoint, ["edgeseg export my.pt --int8"], held, robustness_slices=2)

    parity = json.loads((folder / "parity.json").read_text())
    fp32 = parity["formats"]["fp32"]
    assert fp32["file"] == model.name and fp32["sha256"] == sha256_file(model) and fp32["slices"] == len(held.images)
    assert 0.0 <= fp32["miou_fg"] <= 1.0 and set(fp32["iou"]) == {"background", "gray_matter", "white_matter"}
    assert set(parity["formats"]) == {"fp32"}  # no fp16/int8 files here: none scored, none invented
    assert parity["splits"]["slabs"]["slices"] > 0
    assert "demo" in parity["splits"]["regions"]["skipped"]  # not the demo set: said, not faked
    assert "100" in parity["splits"]["tutorial"]["skipped"]  # 24 slices cannot hold out the last 100
    families = [row["family"] for row in parity["robustness"]]
    assert families[0] == "clean" and "intensity scale" in families
    text = readme.read_text()
    assert readme == folder / "README.md" and sha256_file(checkpoint) in text and model.name in text
    assert "edgeseg export my.pt --int8" in text and "not applicable" in text and "intensity scale" in text
    assert not list(folder.glob(".*tmp*"))  # written atomically, no temp left
