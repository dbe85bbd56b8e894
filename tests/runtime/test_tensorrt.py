"""Tests for edgeseg/runtime/tensorrt.py: profiles, version-pinned sidecars, and the GPU build where one exists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeseg.artifacts import SIDECAR_FORMAT, read_sidecar
from edgeseg.errors import EdgesegError
from edgeseg.runtime.tensorrt import gpu_problem, load_engine, make_profile, parse_nhw, sidecar_mismatch

HERE = {"tensorrt": "10.8.0", "cuda": "12.8", "gpu": "NVIDIA H100", "compute_capability": "9.0", "driver": "570.1"}


@pytest.mark.parametrize("text,expected", [("4x394x394", (4, 394, 394)), (" 1X16x16 ", (1, 16, 16))])
def test_parse_nhw(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_nhw(text) == expected


@pytest.mark.parametrize("bad", ["394x394", "4x394x", "axbxc", "4*394*394", ""])
def test_parse_nhw_rejects_with_the_option_name(bad: str) -> None:
    with pytest.raises(EdgesegError, match="--trt-max .*NxHxW"):
        parse_nhw(bad, "--trt-max")


@pytest.mark.parametrize(
    "lo,opt,hi,ok",
    [
        ("1x16x16", "4x394x394", "8x1024x1024", True),
        ("1x394x394", "1x394x394", "1x394x394", True),
        ("1x8x8", "4x394x394", "8x1024x1024", False),  # below the model's minimum size
        ("1x16x16", "4x394x394", "2x1024x1024", False),  # opt batch > max batch
        ("0x16x16", "4x394x394", "8x1024x1024", False),  # empty batch
        ("1x400x16", "4x394x394", "8x1024x1024", False),  # min H > opt H
    ],
)
def test_make_profile_checks_order_and_minimum(lo: str, opt: str, hi: str, ok: bool) -> None:
    if ok:
        profile = make_profile(lo, opt, hi, 16)
        assert profile.shapes()[1] == (*parse_nhw(opt)[:1], 1, *parse_nhw(opt)[1:])
    else:
        with pytest.raises(EdgesegError, match="TensorRT profile"):
            make_profile(lo, opt, hi, 16)


@pytest.mark.parametrize(
    "changes,bad_keys",
    [
        ({}, []),
        ({"driver": "999.9"}, []),  # drivers are recorded but do not invalidate an engine
        ({"tensorrt": "10.3.0"}, ["tensorrt"]),
        ({"gpu": "NVIDIA Jetson Orin", "compute_capability": "8.7"}, ["gpu", "compute_capability"]),
        ({"cuda": "11.8"}, ["cuda"]),
    ],
)
def test_sidecar_mismatch_names_each_difference(changes: dict[str, str], bad_keys: list[str]) -> None:
    mismatch = sidecar_mismatch({**HERE, **changes}, HERE)
    assert [m.split()[0] for m in mismatch] == bad_keys
    assert all("(engine) !=" in m and "(here)" in m for m in mismatch)


def write_engine(tmp_path: Path, sidecar: dict | None) -> Path:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00not really an engine")
    if sidecar is not None:
        Path(f"{engine}.json").write_text(json.dumps(sidecar))
    return engine


def test_engine_without_sidecar_is_refused(tmp_path: Path) -> None:
    engine = write_engine(tmp_path, None)
    with pytest.raises(EdgesegError, match="model.engine: no readable sidecar .*rebuild"):
        load_engine(engine)


def test_foreign_sidecar_is_refused(tmp_path: Path) -> None:
    engine = write_engine(tmp_path, {"format": "ultralytics", **HERE})
    with pytest.raises(EdgesegError, match="not an edgeseg engine sidecar"):
        read_sidecar(engine)


def test_engine_from_elsewhere_is_refused_here(tmp_path: Path) -> None:
    """Without a GPU: the one-line no-TensorRT error; with one: the version mismatch."""
    engine = write_engine(tmp_path, {"format": SIDECAR_FORMAT, **HERE, "tensorrt": "0.0.1"})
    match = "TensorRT needs an NVIDIA GPU" if gpu_problem() else "tensorrt 0.0.1 \\(engine\\)"
    with pytest.raises(EdgesegError, match=match):
        load_engine(engine)


@pytest.mark.gpu
@pytest.mark.skipif(gpu_problem() is not None, reason=f"TensorRT cannot run here: {gpu_problem()}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_and_matches_pytorch(
    tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path, precision: str
) -> None:
    from edgeseg.export.parity import ParityConfig, size_table, validate
    from edgeseg.export.quantize_fp16 import convert_fp16
    from edgeseg.runtime.tensorrt import EngineSession, build_engine

    source = tiny_onnx if precision == "fp32" else convert_fp16(tiny_onnx, tmp_path / "tiny_fp16.onnx")
    engine = build_engine(source, tmp_path / "tiny.engine", make_profile("1x16x16", "2x394x394", "4x512x512", 16))
    sidecar = read_sidecar(engine)
    assert sidecar["precision"] == precision and not sidecar_mismatch(sidecar, sidecar)
    logits, labels = EngineSession(engine).run(None, {"image": np.zeros((1, 1, 64, 64), np.float32)})
    assert logits.shape == (1, 3, 64, 64) and labels.dtype == np.uint8
    report = validate(engine, tiny_checkpoint, config=ParityConfig(sizes=size_table(2, 1)))
    assert report.passed, report.failures
