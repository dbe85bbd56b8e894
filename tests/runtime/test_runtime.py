"""Tests for edgeseg.runtime.runners and edgeseg.runtime.ort_session: model metadata, provider resolution, sessions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeseg.artifacts import read_model_info
from edgeseg.errors import EdgesegError
from edgeseg.runtime.ort_session import (
    PROVIDERS,
    create_session,
    default_trt_options,
    provider_works,
    resolve_providers,
)

CPU, CUDA, TRT = PROVIDERS["cpu"], PROVIDERS["cuda"], PROVIDERS["tensorrt"]


def _identity_onnx(path: Path, in_name: str = "x", out_name: str = "y") -> Path:
    """A valid ONNX file that is not an edgeseg model."""
    x = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", 1, "H", "W"])
    graph = helper.make_graph([helper.make_node("Identity", [in_name], [out_name])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_read_model_info_parses_contract(threshold_onnx: Path) -> None:
    info = read_model_info(threshold_onnx)
    assert info.class_names == ("background", "gray_matter", "white_matter")
    assert (info.num_classes, info.in_channels, info.min_size) == (3, 1, 16)
    assert (info.precision, info.opset, info.train_miou_fg) == ("fp32", 17, 1.0)
    assert info.metadata["edgeseg.format"] == "edgeseg-onnx-v1"


BAD_METADATA = [  # (override, words the error must contain)
    ({"edgeseg.format": None}, "edgeseg.format"),
    ({"edgeseg.min_size": None, "edgeseg.class_names": None}, "edgeseg.class_names"),
    ({"edgeseg.format": "other-v9"}, "other-v9"),
    ({"edgeseg.class_names": "not json"}, "malformed"),
    ({"edgeseg.num_classes": "4"}, "inconsistent"),
    ({"edgeseg.min_size": "sixteen"}, "malformed"),
    ({"edgeseg.pixel_spacing_mm": "half"}, "edgeseg.pixel_spacing_mm is 'half'"),
    ({"edgeseg.pixel_spacing_mm": "-0.5"}, "expected a positive number of mm"),
    ({"edgeseg.pixel_spacing_mm": "nan"}, "expected a positive number of mm"),
    ({"edgeseg.normalization_contract": "4"}, "normalisation contract '4' is unknown"),
]


@pytest.mark.parametrize(("override", "words"), BAD_METADATA)
def test_bad_metadata_is_a_clear_error(tmp_path: Path, threshold_onnx_factory, override: dict, words: str) -> None:
    path = threshold_onnx_factory(tmp_path / "bad.onnx", metadata=override)
    with pytest.raises(EdgesegError) as err:
        read_model_info(path)
    assert str(path) in str(err.value) and words in str(err.value)
    assert "edgeseg export" in str(err.value)


@pytest.mark.parametrize(("value", "mm"), [("0.5", 0.5), ("1.25", 1.25), ("", None), (None, None)])
def test_pixel_spacing_metadata(tmp_path: Path, threshold_onnx_factory, value, mm) -> None:
    path = threshold_onnx_factory(tmp_path / "m.onnx", metadata={"edgeseg.pixel_spacing_mm": value})
    assert read_model_info(path).pixel_spacing_mm == mm


def test_model_with_wrong_io_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="input 'image'"):
        read_model_info(_identity_onnx(tmp_path / "plain.onnx"))
    with pytest.raises(EdgesegError, match="output 'logits'"):
        read_model_info(_identity_onnx(tmp_path / "img.onnx", in_name="image"))


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "model not found"), (b"", "not an edgeseg model"), (b"\x08\xff\x00garbage", "not a")],
)
def test_unreadable_model_file(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(EdgesegError, match=words):
        read_model_info(path)


def test_auto_picks_working_providers_best_first(gpu_here: bool) -> None:
    chain = [c[0] if isinstance(c, tuple) else c for c in resolve_providers("auto")]
    assert chain[-1] == CPU and resolve_providers("cpu") == [CPU]
    if not gpu_here:  # no GPU (found without edgeseg): CPU alone, whatever the build lists
        assert chain == [CPU]
    else:  # best first, among what this onnxruntime build has
        listed = ort.get_available_providers()
        assert chain == [p for p in (TRT, CUDA) if p in listed and p in chain] + [CPU]
        assert CUDA in listed or chain == [CPU]


@pytest.mark.parametrize("choice", ["cuda", "tensorrt"])
def test_explicit_gpu_provider_runs_or_fails_clearly(choice: str, gpu_here: bool) -> None:
    name = PROVIDERS[choice]
    if not gpu_here or name not in ort.get_available_providers():
        # a clear error naming the reason, never a silent CPU run
        with pytest.raises(EdgesegError, match=f"{name} cannot run here"):
            resolve_providers(choice)
    elif provider_works(name):  # a GPU, and a build with the provider: it must be first
        first = resolve_providers(choice)[0]
        assert (first[0] if isinstance(first, tuple) else first) == name
    else:  # a GPU whose CUDA/cuDNN/TensorRT libraries do not load: refused, with the reason
        with pytest.raises(EdgesegError, match=f"{name} cannot run here"):
            resolve_providers(choice)


def test_unknown_provider() -> None:
    with pytest.raises(EdgesegError, match="choose auto, cpu, cuda or tensorrt"):
        resolve_providers("tpu")


def test_create_session_reports_actual_provider(threshold_onnx: Path) -> None:
    session, actual = create_session(threshold_onnx, "cpu", threads=1)
    assert actual == session.get_providers()[0] == CPU
    image = np.array([0.0, 1.2, 2.7, -1.0], np.float32).reshape(1, 1, 2, 2)
    (labels,) = session.run(["labels"], {"image": image})
    assert labels.dtype == np.uint8 and labels.tolist() == [[[0, 1], [2, 0]]]


def test_silent_gpu_fallback_warns_loudly(
    threshold_onnx: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, gpu_here: bool
) -> None:
    """The onnxruntime#11323 case: CUDA looks usable, the real session still runs on CPU."""
    if gpu_here:
        pytest.skip("CUDA really works here, so onnxruntime does not fall back")
    monkeypatch.setattr("edgeseg.runtime.ort_session.provider_works", lambda name: name in (CUDA, CPU))
    _, actual = create_session(threshold_onnx, "cuda", threads=1)
    assert actual == CPU
    assert f"WARNING: {CUDA} was requested but {CPU} is running" in capsys.readouterr().err


def test_model_onnxruntime_cannot_load_is_a_clear_error(tmp_path: Path, threshold_onnx) -> None:
    model = onnx.load(str(threshold_onnx))
    model.ir_version = 99
    onnx.save(model, str(tmp_path / "future.onnx"))
    with pytest.raises(EdgesegError, match="cannot load this model"):
        create_session(tmp_path / "future.onnx", "cpu")


TRT_FLAGS = [("fp32", 0, 0), ("fp16", 0, 0), ("int8", 0, 1)]  # precision, fp16 flag, int8 flag


@pytest.mark.parametrize(("precision", "fp16", "int8"), TRT_FLAGS)
def test_trt_options_follow_model(tmp_path: Path, threshold_onnx_factory, precision: str, fp16: int, int8: int) -> None:
    path = threshold_onnx_factory(tmp_path / "m.onnx", min_size=32, metadata={"edgeseg.precision": precision})
    opts = default_trt_options(read_model_info(path), batch_size=4)
    assert opts["trt_profile_min_shapes"] == "image:1x1x32x32"
    assert opts["trt_profile_max_shapes"] == "image:4x1x1024x1024"
    assert not opts["trt_fp16_enable"]  # fp16 is explicit in the graph; the flag would also demote fp32 layers
    assert opts["trt_int8_enable"] == bool(int8)


@pytest.mark.gpu
def test_gpu_session_runs_on_gpu(threshold_onnx: Path) -> None:
    if not provider_works(CUDA):
        pytest.skip("no working CUDAExecutionProvider on this machine (no GPU or CUDA libs)")
    _, actual = create_session(threshold_onnx, "cuda")
    assert actual == CUDA


def test_runtime_imports_without_torch(tmp_path: Path, threshold_onnx: Path) -> None:
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n")
    code = (
        "import sys; from edgeseg.runtime.runners import create_session;"
        f"s, p = create_session({str(threshold_onnx)!r}, 'auto');"
        "assert 'torch' not in sys.modules; print(p)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ExecutionProvider")


def test_a_gpu_provider_whose_library_cannot_load_is_not_probed_with_a_session() -> None:
    """Issue 24: `edgeseg infer --backend auto` asks whether a GPU provider works; where its library
    cannot load, the answer is that reason, without building a probe session (nor importing onnx,
    27 MB of peak RSS here)."""
    code = (
        "import sys, onnxruntime as ort\n"
        "from edgeseg.runtime.ort_session import PROVIDERS, _library_problem, probe, resolve_providers\n"
        "gpu = [PROVIDERS[k] for k in ('tensorrt', 'cuda') if PROVIDERS[k] in ort.get_available_providers()]\n"
        "broken = [n for n in gpu if _library_problem(n)]\n"
        "chain = resolve_providers('auto')\n"
        "same = all(probe(n) == _library_problem(n) for n in broken)\n"
        "print(len(gpu), len(broken), same, 'onnx' in sys.modules, chain[-1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    gpu, broken, same, onnx_loaded, last = proc.stdout.split()
    if broken == "0":
        pytest.skip("no GPU provider here whose library fails to load (a CPU build, or a working GPU)")
    assert same == "True" and last == PROVIDERS["cpu"]
    if broken == gpu:  # every GPU provider answered by its library: no probe session was built
        assert onnx_loaded == "False"
