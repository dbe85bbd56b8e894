"""Tests for edgeseg/export/triton.py: the Triton model repository, read back with Triton's own schema.

No Triton server and no TensorRT run here: configs are checked against the protobuf schema
tritonclient ships and against real ONNX Runtime sessions of the served files. The engine
cases use a dummy ``.engine`` byte file with a sidecar, and test only the generated config.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb2
from tritonclient.utils import InferenceServerException

import edgeseg
from edgeseg.artifacts import SIDECAR_FORMAT, ArtifactPaths, read_model_info
from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.export.triton import MARKER, TritonConfig, write_model_repository

EDGESEG = shutil.which("edgeseg", path=str(Path(sys.executable).parent))
# What ONNX Runtime calls the element types, and what Triton calls them (written out here,
# not taken from the module under test).
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8"}
PROFILE = {"min": [1, 16, 16], "opt": [4, 394, 394], "max": [8, 1024, 1024]}


def read_config(path: Path) -> pb2.ModelConfig:
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def sources(tiny_onnx: Path) -> dict[str, Path]:
    return {"tiny": tiny_onnx, "shipped": edgeseg.SHIPPED_MODEL}


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_config_matches_the_onnxruntime_session(which: str, tiny_onnx: Path, tmp_path: Path) -> None:
    source = sources(tiny_onnx)[which]
    repo = tmp_path / "repo"
    (model,) = write_model_repository(source, repo)
    config = read_config(repo / source.stem / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == (source.stem, "onnxruntime_onnx", 32)
    served = repo / source.stem / "1" / "model.onnx"
    assert model.model_file == served and served.read_bytes() == source.read_bytes()
    session = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [t.name for t in actual]
        for tensor, io in zip(declared, actual, strict=True):
            assert pb2.DataType.Name(tensor.data_type) == ORT_TO_TRITON[io.type], tensor.name
            assert not isinstance(io.shape[0], int)  # the batch dim Triton leaves implicit is symbolic
            assert list(tensor.dims) == [d if isinstance(d, int) else -1 for d in io.shape[1:]], tensor.name
    assert [list(t.dims) for t in [*config.input, *config.output]] == [[1, -1, -1], [3, -1, -1], [-1, -1]]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = config.instance_group
    assert (group.count, pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (1, "KIND_AUTO")
    # A batch of the config's shape (N within max_batch_size, odd H and W) runs on the served file.
    image = np.random.default_rng(0).normal(500, 150, (3, 1, 37, 45)).astype(np.float32)
    logits, labels = session.run(["logits", "labels"], {"image": image})
    assert logits.shape == (3, 3, 37, 45) and labels.shape == (3, 37, 45) and labels.dtype == np.uint8


def _labels(session: ort.InferenceSession, images: np.ndarray, batch: int) -> np.ndarray:
    """The served file's labels of ``images`` (N, 1, H, W), run ``batch`` slices at a time."""
    return np.concatenate(
        [session.run(["labels"], {"image": images[k : k + batch]})[0] for k in range(0, len(images), batch)]
    )


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_served_labels_do_not_depend_on_the_batch(precision: str, tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """Each shipped model, run by ONNX Runtime in the largest batch its config lets the server form
    and one slice at a time, gives the same labels on 24 real slices (issue 25, case 9).

    int8 would not at 24 (its labels change with the batch: the check below), so it is served one
    slice per run, without dynamic batching, whatever --max-batch-size says.
    """
    source = ArtifactPaths.of(edgeseg.SHIPPED_MODEL).onnx(precision)
    (model,) = write_model_repository(source, tmp_path / "repo", TritonConfig(max_batch_size=32))
    config = read_config(model.config)
    images = np.stack([np.load(f) for f in sorted((tiny_dataset[0] / "MRIs").glob("*.npy"))])[:, None]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model.model_file), options, providers=["CPUExecutionProvider"])
    one = _labels(session, images.astype(np.float32), 1)
    largest = config.max_batch_size
    assert np.array_equal(_labels(session, images.astype(np.float32), largest), one)
    batched = config.HasField("dynamic_batching")
    if precision == "int8":
        assert (largest, batched) == (1, False) and "one slice per run" in model.note
        assert model.note in model.config.read_text()
        differ = _labels(session, images.astype(np.float32), len(images)) != one
        assert differ.any(), "int8 labels no longer depend on the batch: it could be batched again"
    else:
        assert (largest, batched, model.note) == (32, True, "")


def test_triton_command_says_int8_is_served_one_slice_per_run(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """`edgeseg triton model_int8.onnx --max-batch-size 8` says why it serves max batch 1 instead."""
    source = ArtifactPaths.of(edgeseg.SHIPPED_MODEL).onnx("int8")
    main(["triton", str(source), "--out", str(tmp_path / "repo"), "--max-batch-size", "8"])
    out = capsys.readouterr().out
    assert "int8: served one slice per run (max_batch_size 1, no dynamic batching)" in out
    config = read_config(tmp_path / "repo" / "model_int8" / "config.pbtxt")
    assert config.max_batch_size == 1 and not config.HasField("dynamic_batching")


def test_readme_client_example_asks_the_served_model_for_labels(tiny_dataset, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The tritonclient example of docs/scaling.md, run up to the network (no server here: it must fail to
    connect, not before): its request fits the config `edgeseg triton export/model.onnx` writes,
    and it asks for `labels` alone."""
    repo = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    page = (repo / "docs" / "scaling.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "tritonclient" in block]
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8001)) == 0:
            pytest.skip("something listens on port 8001 here: the example would reach it")
    slice_file = sorted((tiny_dataset[0] / "MRIs").glob("*.npy"))[0]
    shutil.copy(slice_file, tmp_path / "slice.npy")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
        exec(compile(code, "docs/scaling.md", "exec"), namespace)
    (model,) = write_model_repository(edgeseg.SHIPPED_MODEL, tmp_path / "models")
    config = read_config(model.config)
    assert re.findall(r'client\.infer\("(\w+)"', code) == [model.name] == ["model"]
    request = namespace["request"]
    (declared,) = config.input
    assert (request.name(), request.datatype()) == (declared.name, "FP32") and declared.data_type == pb2.TYPE_FP32
    n, *dims = request.shape()
    assert n <= config.max_batch_size and len(dims) == len(declared.dims)
    assert all(want in (-1, got) for want, got in zip(declared.dims, dims, strict=True))
    assert re.findall(r'InferRequestedOutput\("(\w+)"\)', code) == ["labels"]
    assert "labels" in [t.name for t in config.output]


def test_versioned_layout_and_rewrite_in_place(tiny_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model_repository(tiny_onnx, repo)
    (repo / ".tiny.edgeseg-tmp").mkdir()  # what a run killed mid-write leaves
    write_model_repository(tiny_onnx, repo, TritonConfig(max_batch_size=4, instances=2, kind="cpu"))
    assert sorted(p.name for p in repo.iterdir()) == ["tiny"]
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == ["tiny/1/model.onnx", "tiny/config.pbtxt"]
    text = (repo / "tiny" / "config.pbtxt").read_text()
    assert text.startswith(MARKER + "\n")
    config = read_config(repo / "tiny" / "config.pbtxt")
    assert config.max_batch_size == 4
    assert [(g.count, pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [(2, "KIND_CPU")]


def test_a_folder_edgeseg_did_not_write_is_never_replaced(tiny_onnx: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "repo" / "tiny"
    (theirs / "1").mkdir(parents=True)
    (theirs / "config.pbtxt").write_text('name: "tiny"\nplatform: "pytorch_libtorch"\n')
    (theirs / "1" / "model.pt").write_bytes(b"someone else's model")
    with pytest.raises(EdgesegError) as err:
        write_model_repository(tiny_onnx, tmp_path / "repo")
    message = str(err.value)
    assert "\n" not in message and str(theirs) in message and "not written by edgeseg" in message
    assert (theirs / "1" / "model.pt").read_bytes() == b"someone else's model"
    assert sorted(p.name for p in theirs.iterdir()) == ["1", "config.pbtxt"]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ".."])
def test_model_name_must_be_a_plain_folder_name(tiny_onnx: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(EdgesegError, match="plain folder name"):
        write_model_repository(tiny_onnx, tmp_path / "repo", TritonConfig(name=name))
    assert not any(tmp_path.rglob("config.pbtxt"))


def with_engine(
    tiny_onnx: Path, folder: Path, profile: dict[str, list[int]] | None, checkpoint_sha256: str | None = None
) -> Path:
    """tiny.onnx beside a dummy tiny.engine (bytes only: no TensorRT here) and, if given, its sidecar.

    The sidecar is what ``build_engine`` writes; its metadata names the ONNX file's checkpoint
    unless ``checkpoint_sha256`` says otherwise.
    """
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = Path(shutil.copy(tiny_onnx, folder / "tiny.onnx"))
    (folder / "tiny.engine").write_bytes(b"dummy engine bytes: a config-generation test, not an engine")
    if profile is not None:
        (folder / "tiny.engine.json").write_text(
            json.dumps(
                {
                    "format": SIDECAR_FORMAT,
                    "tensorrt": "10.8.0",
                    "cuda": "12.8",
                    "gpu": "NVIDIA H100 80GB HBM3",
                    "compute_capability": "9.0",
                    "driver": "570.1",
                    "precision": "fp32",
                    "onnx": "tiny.onnx",
                    "profile": profile,
                    "metadata": {
                        **read_model_info(onnx_path).metadata,
                        **({"edgeseg.checkpoint_sha256": checkpoint_sha256} if checkpoint_sha256 else {}),
                    },
                }
            )
        )
    return onnx_path


@pytest.mark.parametrize(
    "profile,dims",
    [
        (PROFILE, [[1, -1, -1], [3, -1, -1], [-1, -1]]),
        (
            {"min": [1, 394, 394], "opt": [1, 394, 394], "max": [16, 394, 394]},
            [[1, 394, 394], [3, 394, 394], [394, 394]],
        ),
        ({"min": [1, 394, 16], "opt": [2, 394, 256], "max": [2, 394, 512]}, [[1, 394, -1], [3, 394, -1], [394, -1]]),
    ],
)
def test_engine_beside_the_model_is_served_as_a_tensorrt_plan(
    tiny_onnx: Path, tmp_path: Path, profile: dict, dims: list
) -> None:
    """Config generation only: the .engine is a dummy byte file, nothing runs it."""
    onnx_path = with_engine(tiny_onnx, tmp_path / "export", profile)
    models = write_model_repository(onnx_path, tmp_path / "repo")
    assert [(m.name, m.platform) for m in models] == [("tiny", "onnxruntime_onnx"), ("tiny_trt", "tensorrt_plan")]
    plan = tmp_path / "repo" / "tiny_trt"
    assert (plan / "1" / "model.plan").read_bytes() == (onnx_path.parent / "tiny.engine").read_bytes()
    config = read_config(plan / "config.pbtxt")
    assert (config.name, config.platform) == ("tiny_trt", "tensorrt_plan")
    assert config.max_batch_size == profile["max"][0]
    onnx_config = read_config(tmp_path / "repo" / "tiny" / "config.pbtxt")
    assert [(t.name, t.data_type) for t in [*config.input, *config.output]] == [
        (t.name, t.data_type) for t in [*onnx_config.input, *onnx_config.output]
    ]
    assert [list(t.dims) for t in [*config.input, *config.output]] == dims
    (group,) = config.instance_group
    assert pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU" and list(group.profile) == ["0"]
    opt_n = profile["opt"][0]
    assert list(config.dynamic_batching.preferred_batch_size) == ([opt_n] if opt_n > 1 else [])
    text = (plan / "config.pbtxt").read_text()
    assert "TensorRT 10.8.0" in text and "max {}".format("x".join(map(str, profile["max"]))) in text


def test_engine_without_sidecar_is_refused_before_anything_is_written(tiny_onnx: Path, tmp_path: Path) -> None:
    onnx_path = with_engine(tiny_onnx, tmp_path / "export", None)
    with pytest.raises(EdgesegError, match="tiny.engine: no readable sidecar"):
        write_model_repository(onnx_path, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
    models = write_model_repository(onnx_path, tmp_path / "repo", TritonConfig(engine=False))
    assert [m.name for m in models] == ["tiny"]


def test_engine_from_another_checkpoint_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    """A stale X.engine left beside a re-exported X.onnx (config generation only, dummy engine)."""
    onnx_path = with_engine(tiny_onnx, tmp_path / "export", PROFILE, checkpoint_sha256="f" * 64)
    with pytest.raises(EdgesegError, match=r"tiny.engine: built from checkpoint ffffffffffff\.\.\., but tiny.onnx"):
        write_model_repository(onnx_path, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_export_triton_writes_the_repository(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`edgeseg export --triton` through the CLI's entry point, on a real checkpoint."""
    repo = tmp_path / "repo"
    main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "out"), "--no-validate", "--triton", str(repo)])
    config = read_config(repo / "tiny" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and [t.name for t in config.output] == ["logits", "labels"]
    assert (repo / "tiny" / "1" / "model.onnx").read_bytes() == (tmp_path / "out" / "tiny.onnx").read_bytes()


@pytest.fixture
def no_tritonclient(env_without, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:  # noqa: ANN001
    """An environment in which `import tritonclient` fails, as on an install without the extra."""
    return env_without(tmp_path_factory.mktemp("no_tritonclient"), "tritonclient")


@pytest.mark.parametrize("command", ["triton", "export"])
def test_without_the_extra_it_is_one_line_naming_it(
    command: str, no_tritonclient: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    repo, out = tmp_path / "repo", tmp_path / "out"
    args = {
        "triton": ["triton", str(edgeseg.SHIPPED_MODEL), "--out", str(repo)],
        "export": ["export", str(tiny_checkpoint), "--out", str(out), "--triton", str(repo)],
    }[command]
    assert EDGESEG, "the edgeseg console script is not installed beside this python"
    r = subprocess.run([EDGESEG, *args], capture_output=True, text=True, env=no_tritonclient, timeout=180)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "edgeseg[triton]" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not repo.exists() and not out.exists()  # export fails before exporting anything
