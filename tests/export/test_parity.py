"""Tests for edgeseg/export/parity.py: the checks, the gates, and a validation that can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeseg.data.split import fit_to_size
from edgeseg.errors import EdgesegError
from edgeseg.export.parity import GATES, ParityConfig, gate_failures, size_table, validate
from edgeseg.export.parity_report import parse_providers
from edgeseg.metrics import compare

NAMES = ("background", "gray_matter", "white_matter")
SMALL = ParityConfig(sizes=size_table(full=2, other=1), fp16_torch_slices=1)  # fast in tests


# ----------------------------------------------------------------------------- fit_to_size


@pytest.mark.parametrize(
    "shape,size",
    [
        ((394, 394), (393, 395)),
        ((394, 394), (300, 394)),
        ((394, 394), (64, 64)),
        ((394, 394), (394, 394)),
        ((20, 30), (25, 31)),
        ((21, 30), (16, 40)),
    ],
)
def test_fit_to_size_crops_centre_and_pads_edges(shape: tuple[int, int], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(1, 100, shape).astype(np.float32)
    mask = rng.integers(1, 3, shape).astype(np.uint8)  # no background inside
    out_image, out_mask = fit_to_size(image, mask, *size)
    assert out_image.shape == out_mask.shape == size
    assert out_image.dtype == np.float32 and out_mask.dtype == np.uint8
    pad_h, pad_w = max(size[0] - shape[0], 0), max(size[1] - shape[1], 0)
    top, left = pad_h // 2, pad_w // 2
    crop_top, crop_left = max(shape[0] - size[0], 0) // 2, max(shape[1] - size[1], 0) // 2
    inner_h, inner_w = min(shape[0], size[0]), min(shape[1], size[1])
    np.testing.assert_array_equal(
        out_image[top : top + inner_h, left : left + inner_w],
        image[crop_top : crop_top + inner_h, crop_left : crop_left + inner_w],
    )
    assert (out_mask == 0).sum() == size[0] * size[1] - inner_h * inner_w  # padding is background
    if pad_w:
        np.testing.assert_array_equal(out_image[top : top + inner_h, 0], out_image[top : top + inner_h, left])


# ----------------------------------------------------------------------------- compare + gates


def case(kind: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(reference logits, candidate logits) for one scenario on a 2x3x32x32 batch."""
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 4, (2, 3, 32, 32)).astype(np.float32)
    cand = ref.copy()
    if kind == "tiny":
        cand += 1e-6
    elif kind == "shifted":
        cand[:, 0] += 1e-2  # beyond 1e-4 x |logits|, but labels barely move
    elif kind == "flipped":
        cand[0, :, :4, :4] = -cand[0, :, :4, :4]  # 16 pixels of 2048 change label
    return [ref], [cand]


@pytest.mark.parametrize(
    "kind,precision,fails",
    [
        ("same", "fp32", []),
        ("tiny", "fp32", []),
        ("shifted", "fp32", ["max|Δlogit|"]),
        ("shifted", "fp16", []),
        ("flipped", "fp32", ["max|Δlogit|", "agreement", "ΔmIoU"]),
        ("flipped", "fp16", ["agreement", "ΔmIoU"]),
        ("flipped", "int8", ["ΔmIoU"]),
    ],
)
def test_gates_name_the_failed_checks(kind: str, precision: str, fails: list[str]) -> None:
    ref, cand = case(kind)
    masks = [ref[0].argmax(1).astype(np.uint8)]  # truth = the reference: mIoU_ref = 1
    numbers = compare(ref, cand, [c.argmax(1).astype(np.uint8) for c in cand], masks, NAMES)
    failures = gate_failures(numbers, GATES[precision])
    assert [f.split()[0].strip("|") for f in failures] == [f.strip("|") for f in fails]
    assert numbers["miou_ref"] == 1.0
    assert numbers["max_abs"] >= numbers["min_atol"] >= 0
    assert numbers["agreement"] == pytest.approx(1.0 if kind != "flipped" else 1 - 16 / 2048, abs=1e-3)


def test_parse_providers() -> None:
    assert parse_providers("cpu, CUDA") == ("cpu", "cuda")
    with pytest.raises(EdgesegError, match="openvino"):
        parse_providers("cpu,openvino")


# ----------------------------------------------------------------------------- validate


def test_validate_passes_on_the_export(tiny_onnx: Path, tmp_path: Path) -> None:
    """No --ckpt: the X.pt beside X.onnx is found and hash-checked; data: its held-out keys."""
    report = validate(tiny_onnx, config=SMALL)
    assert report.passed, report.failures
    assert {r.size for r in report.rows} == {"394x394", "393x395", "394x300", "300x394", "256x257", "64x64"}
    assert {r.provider for r in report.rows} == {"CPUExecutionProvider"}
    assert "held-out" in report.data
    assert report.reference_evaluator[tiny_onnx.name]["labels_equal"] == 1.0
    data = json.loads(report.write(tmp_path / "parity.json").read_text())
    assert data["passed"] and data["format"] == "edgeseg-parity-v1" and len(data["rows"]) == 6
    assert set(data["rows"][0]) >= {
        "max_abs",
        "mean_abs",
        "min_atol",
        "agreement",
        "miou_ref",
        "miou_cand",
        "d_miou",
        "provider",
        "batch",
    }


def perturb(src: Path, dst: Path, scale: float) -> Path:
    """Copy an ONNX file with its output conv's weights multiplied by ``scale``."""
    proto = onnx.load(str(src))
    head = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    init = next(i for i in proto.graph.initializer if i.name == head.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale), init.name))
    onnx.save(proto, str(dst))
    return dst


def test_validate_fails_on_a_perturbed_model(tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = perturb(tiny_onnx, tmp_path / "bad.onnx", 1.001)  # 0.1 % on one layer's weights
    report = validate(bad, tiny_checkpoint, config=SMALL)
    assert not report.passed
    # What must fail: the logits, at every size. Which labels a 0.1 % perturbation flips depends on
    # the CPU's kernels (on an AMD EPYC, 99.9756 % agreement at 64x64; on a Xeon, none), so the
    # other per-row gates may fail too, but nothing outside the per-row gates may.
    assert sum("max|Δlogit|" in f for f in report.failures) >= 6
    row_gates = ("max|Δlogit|", "agreement", "|ΔmIoU|")
    assert all(any(g in f for g in row_gates) for f in report.failures), report.failures


def test_validate_refuses_another_checkpoint(tiny_onnx: Path, tmp_path: Path) -> None:
    from edgeseg.model import UNet, save_checkpoint
    from edgeseg.model_contract import ModelConfig

    other = tmp_path / "other.pt"
    save_checkpoint(other, UNet(ModelConfig(widths=(4, 8, 16))))
    with pytest.raises(EdgesegError, match="--ckpt"):
        validate(tiny_onnx, other, config=SMALL)


def test_validate_without_checkpoint_beside_is_clear(tiny_onnx: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(tiny_onnx.read_bytes())
    with pytest.raises(EdgesegError, match="lonely.onnx.*--ckpt"):
        validate(lonely, config=SMALL)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGESEG_DEBUG": ""}
    return subprocess.run(
        [sys.executable, "-m", "edgeseg.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_validate_exit_codes(tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    small = ["--slices", "1", "--size-slices", "1", "--providers", "cpu"]
    good = run_cli("validate", str(tiny_onnx), "--json", str(tmp_path / "good.json"), *small)
    assert good.returncode == 0, good.stderr
    assert "all gates passed" in good.stdout and json.loads((tmp_path / "good.json").read_text())["passed"]
    bad_model = perturb(tiny_onnx, tmp_path / "bad.onnx", 1.001)
    bad = run_cli("validate", str(bad_model), "--ckpt", str(tiny_checkpoint), *small)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "parity gate failed" in bad.stderr and "max|Δlogit|" in bad.stderr
    assert not json.loads((tmp_path / "parity.json").read_text())["passed"]  # written anyway


def test_validating_one_file_keeps_the_record_of_the_others(tiny_onnx: Path, tmp_path: Path) -> None:
    """A standalone validate merges into the export's parity.json instead of erasing it."""
    report = validate(tiny_onnx, config=SMALL)
    path = tmp_path / "parity.json"
    export_record = {**report.to_json(), "formats": {"fp32": {"file": "x"}}}
    export_record["rows"] += [{**export_record["rows"][0], "model": "other_int8.onnx", "failures": []}]
    path.write_text(json.dumps(export_record))
    merged = json.loads(report.write(path, merge=True).read_text())
    assert merged["formats"] == {"fp32": {"file": "x"}}  # the export's per-file scores stay
    assert sorted({r["model"] for r in merged["rows"]}) == sorted({tiny_onnx.name, "other_int8.onnx"})
    assert len(merged["rows"]) == len(report.rows) + 1 and merged["passed"]
    broken = {**export_record, "checkpoint_sha256": "0" * 64}  # another checkpoint: replaced whole
    path.write_text(json.dumps(broken))
    assert "formats" not in json.loads(report.write(path, merge=True).read_text())
