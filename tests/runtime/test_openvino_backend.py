"""edgeseg.runtime.openvino_backend: OpenVINO on our ONNX files, what it refuses, and what really ran."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.machine import fingerprint
from edgeseg.runtime.openvino_backend import openvino_config
from edgeseg.runtime.runners import RunnerSpec, open_runner

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed (pip install 'edgeseg[openvino]')"
)
needs_bf16 = pytest.mark.skipif(
    not fingerprint().has_bf16, reason=f"this CPU ({fingerprint().cpu}) has neither AVX512-BF16 nor AMX"
)


def test_bf16_is_refused_without_avx512_bf16_or_amx() -> None:
    with pytest.raises(
        EdgesegError, match=r"bf16 needs a CPU with AVX512-BF16 or AMX; this one \(AMD EPYC\) has neither"
    ):
        openvino_config("bf16", 2, "fp32", has_bf16=False, cpu="AMD EPYC")


@pytest.mark.parametrize(
    ("precision", "file_precision", "expected"),
    [
        (
            "fp32",
            "fp32",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2},
        ),
        (
            "bf16",
            "fp32",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 2},
        ),
        (
            "int8",
            "int8",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2},
        ),
        ("default", "fp32", {}),
    ],
)
def test_config_per_precision(precision: str, file_precision: str, expected: dict) -> None:
    assert openvino_config(precision, 2, file_precision, has_bf16=True, cpu="x") == expected


@pytest.mark.parametrize(("precision", "file_precision"), [("int8", "fp32"), ("int8", "fp16"), ("fp16", "fp32")])
def test_mismatched_file_or_unknown_precision_is_refused(precision: str, file_precision: str) -> None:
    with pytest.raises(EdgesegError):
        openvino_config(precision, 0, file_precision, has_bf16=True, cpu="x")


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    return open_runner(path, RunnerSpec("ort", "cpu", outputs=("logits",))).run(x)["logits"]


@needs_openvino
def test_fp32_equals_onnx_runtime_and_says_f32(tiny_onnx: Path) -> None:
    runner = open_runner(tiny_onnx, RunnerSpec("openvino", precision="fp32", threads=1, outputs=("logits", "labels")))
    x = np.random.default_rng(0).gamma(2.0, 300.0, (2, 1, 97, 131)).astype(np.float32)
    out = runner.run(x)
    ref = ort_logits(tiny_onnx, x)
    assert np.abs(out["logits"] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert out["labels"].dtype == np.uint8 and (out["labels"] == ref.argmax(1)).mean() >= 0.9999
    assert runner.precision == "fp32" and "convs f32" in runner.label and "bf16" not in runner.label


@needs_openvino
@needs_bf16
def test_bf16_really_runs_bf16_here(tiny_onnx: Path) -> None:
    runner = open_runner(tiny_onnx, RunnerSpec("openvino", precision="bf16", threads=1))
    assert runner.precision == "bf16" and "convs bf16" in runner.label
    x = np.random.default_rng(1).gamma(2.0, 300.0, (1, 1, 64, 64)).astype(np.float32)
    assert (runner.labels(x) == ort_logits(tiny_onnx, x).argmax(1)).mean() >= 0.98  # rounding, not garbage


@needs_openvino
def test_int8_qdq_file_runs_int8_convs(tiny_onnx: Path, tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    from edgeseg.data.dataset import load_slices
    from edgeseg.export.quantize import quantize_int8

    int8 = quantize_int8(tiny_onnx, tmp_path / "tiny_int8.onnx", load_slices(tiny_dataset[0]).images[:4])
    runner = open_runner(int8, RunnerSpec("openvino", precision="int8", threads=1))
    assert runner.precision == "int8" and ("convs u8" in runner.label or "convs i8" in runner.label)
    with pytest.raises(EdgesegError, match="OpenVINO int8 runs the QDQ file"):
        open_runner(tiny_onnx, RunnerSpec("openvino", precision="int8"))


@pytest.mark.parametrize(
    ("hint", "streams", "expected"),
    [
        ("throughput", 0, {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}),
        ("throughput", 2, {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 2}),
        ("latency", 0, {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}),
    ],
)
def test_config_per_mode(hint: str, streams: int, expected: dict) -> None:
    assert openvino_config("fp32", 0, "fp32", has_bf16=False, cpu="x", hint=hint, streams=streams) == expected


@pytest.mark.parametrize(("hint", "streams"), [("fast", 0), ("latency", 2), ("throughput", -1)])
def test_bad_mode_or_streams_is_refused(hint: str, streams: int) -> None:
    with pytest.raises(EdgesegError, match="OpenVINO (mode|streams)"):
        openvino_config("fp32", 0, "fp32", has_bf16=False, cpu="x", hint=hint, streams=streams)


@needs_openvino
@pytest.mark.parametrize("streams", [0, 2])
def test_throughput_mode_runs_the_batch_in_parallel_and_keeps_its_order(tiny_onnx: Path, streams: int) -> None:
    """Each slice of a batch goes to its own request; the results come back in the batch's order."""
    spec = RunnerSpec("openvino", precision="fp32", outputs=("logits", "labels"), hint="throughput", streams=streams)
    runner = open_runner(tiny_onnx, spec)
    assert "throughput:" in runner.label and "streams" in runner.label
    if streams:
        assert f"throughput: {streams} streams" in runner.label
    rng = np.random.default_rng(3)
    x = np.stack([rng.gamma(2.0, 300.0 * (k + 1), (1, 72, 88)) for k in range(5)]).astype(np.float32)
    x[2] = 0.0  # one blank slice among real ones: a mixed-up order would show
    out = runner.run(x)
    ref = ort_logits(tiny_onnx, x)
    assert out["logits"].shape == ref.shape and out["labels"].shape == (5, 72, 88)
    assert np.abs(out["logits"] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    for k in range(5):  # slice by slice, so a swap of two slices cannot hide in a batch-wide figure
        assert (out["labels"][k] == ref[k].argmax(0)).mean() >= 0.9999, k
    again = runner.run(x[:1])  # the queue is reused; a batch of one works too
    assert np.array_equal(again["labels"], out["labels"][:1])


@needs_openvino
def test_static_shapes_compile_per_shape_and_keep_the_last_few(tiny_onnx: Path) -> None:
    """Each new input shape gets its own compiled graph (the fast path); old ones are dropped."""
    from edgeseg.runtime.runners import OV_SHAPES

    runner = open_runner(tiny_onnx, RunnerSpec("openvino", precision="fp32", outputs=("logits",)))
    dynamic = open_runner(tiny_onnx, RunnerSpec("openvino", precision="fp32", outputs=("logits",), shapes="dynamic"))
    assert "static shapes" in runner.label and "dynamic shapes" in dynamic.label
    rng = np.random.default_rng(4)
    shapes = [(1, 1, 64, 80), (3, 1, 64, 80), (1, 1, 97, 131), (1, 1, 64, 80)]
    for shape in shapes:
        x = rng.gamma(2.0, 300.0, shape).astype(np.float32)
        ref = ort_logits(tiny_onnx, x)
        for r in (runner, dynamic):
            out = r.run(x)["logits"]
            assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), shape
        assert shape in runner.compiled and len(runner.compiled) <= OV_SHAPES
    assert list(runner.compiled) == [(1, 1, 97, 131), (1, 1, 64, 80)][-OV_SHAPES:]  # most recent last
    assert list(dynamic.compiled) == [None]  # one graph for every shape


@needs_openvino
def test_label_so_far_compiles_nothing_and_then_reads_back(tiny_onnx: Path) -> None:
    """infer's first line must not cost a probe compile; after a run the label is what ran."""
    runner = open_runner(tiny_onnx, RunnerSpec("openvino", precision="fp32", outputs=("labels",)))
    assert runner.label_so_far.startswith("OpenVINO ") and "fp32 asked (static shapes)" in runner.label_so_far
    assert len(runner.compiled) == 0
    runner.run(np.random.default_rng(5).gamma(2.0, 300.0, (1, 1, 64, 80)).astype(np.float32))
    assert list(runner.compiled) == [(1, 1, 64, 80)]  # no probe shape: only the real one
    assert runner.label_so_far == runner.label and "convs f32" in runner.label
    ort = open_runner(tiny_onnx, RunnerSpec("ort", "cpu", outputs=("labels",)))
    assert ort.label_so_far == "CPUExecutionProvider"  # ONNX Runtime's provider is known at load


@needs_openvino
def test_unknown_shapes_mode_is_refused(tiny_onnx: Path) -> None:
    with pytest.raises(EdgesegError, match="OpenVINO shapes 'fixed'"):
        open_runner(tiny_onnx, RunnerSpec("openvino", shapes="fixed"))


def _cache_runs(path: Path, x: np.ndarray, how: list[str] | None = None) -> tuple[np.ndarray, bool, Path | None]:
    """Labels of a fresh OpenVINO runner (its own ov.Core), whether its graph came from the cache
    (our blob or OpenVINO's CACHE_DIR; ``how`` gets which, and the runner's label), its cache folder."""
    runner = open_runner(path, RunnerSpec("openvino", precision="fp32", outputs=("labels",)))
    labels = runner.run(x)["labels"]
    cached = runner.compiled[tuple(x.shape)]["cached"]
    if how is not None:
        how += [cached, runner.label]
    return labels, bool(cached), runner.cache


@needs_openvino
def test_compiled_graphs_are_cached_in_the_cache_folder(tiny_onnx: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A second runner (a new process's situation: a new Core) imports the graph instead of compiling it."""
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGESEG_OPENVINO_CACHE", raising=False)
    x = np.random.default_rng(6).gamma(2.0, 300.0, (2, 1, 48, 56)).astype(np.float32)
    first, hit1, folder = _cache_runs(tiny_onnx, x)
    assert folder == tmp_path / "home" / "openvino" and any(folder.iterdir())
    second, hit2, _ = _cache_runs(tiny_onnx, x)
    assert (hit1, hit2) == (False, True) and np.array_equal(first, second)


@needs_openvino
def test_a_shape_met_before_is_imported_from_our_blob(tiny_onnx: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Issue 24: the second process imports edgeseg's own blob of (file, shape, properties), with
    the same labels and the same readback of what ran; another shape is not served by that blob."""
    import onnx

    from edgeseg.runtime.openvino_blobs import SUFFIX

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGESEG_OPENVINO_CACHE", str(cache))
    x = np.random.default_rng(11).gamma(2.0, 300.0, (1, 1, 48, 56)).astype(np.float32)
    how: list[str] = []
    first, _, _ = _cache_runs(tiny_onnx, x, how)
    assert how[0] == "" and len(list(cache.glob(f"*{SUFFIX}"))) == 1
    second, _, _ = _cache_runs(tiny_onnx, x, how)
    assert how[2] == "blob" and how[3] == how[1] and np.array_equal(first, second)
    other = np.random.default_rng(12).gamma(2.0, 300.0, (1, 1, 40, 64)).astype(np.float32)
    _cache_runs(tiny_onnx, other, how)
    assert how[4] == "" and len(list(cache.glob(f"*{SUFFIX}"))) == 2
    proto = onnx.load(str(tiny_onnx))  # the same graph in another file (another SHA-256): no blob of it
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "note": "copy"})
    onnx.save(proto, str(tmp_path / "copy.onnx"))
    again, _, _ = _cache_runs(tmp_path / "copy.onnx", x, how)
    assert how[6] != "blob" and np.array_equal(first, again)


@needs_openvino
@pytest.mark.parametrize("setting", ["off", "0"])
def test_the_cache_can_be_turned_off(tiny_onnx: Path, tmp_path: Path, monkeypatch, setting: str) -> None:  # noqa: ANN001
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGESEG_OPENVINO_CACHE", setting)
    x = np.random.default_rng(7).gamma(2.0, 300.0, (1, 1, 48, 56)).astype(np.float32)
    for _ in range(2):
        _, hit, folder = _cache_runs(tiny_onnx, x)
        assert folder is None and not hit
    assert not (tmp_path / "home" / "openvino").exists()


@needs_openvino
def test_a_cache_folder_that_cannot_be_written_means_no_cache(tiny_onnx: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A path through a regular file cannot be made a folder (even by root, unlike a read-only mode)."""
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("EDGESEG_OPENVINO_CACHE", str(tmp_path / "file" / "cache"))
    x = np.random.default_rng(8).gamma(2.0, 300.0, (1, 1, 48, 56)).astype(np.float32)
    labels, hit, folder = _cache_runs(tiny_onnx, x)
    assert folder is None and not hit and labels.shape == (1, 48, 56)


@needs_openvino
def test_a_cache_folder_can_be_named(tiny_onnx: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("EDGESEG_OPENVINO_CACHE", str(tmp_path / "mine"))
    x = np.random.default_rng(9).gamma(2.0, 300.0, (1, 1, 48, 56)).astype(np.float32)
    _, _, folder = _cache_runs(tiny_onnx, x)
    assert folder == tmp_path / "mine" and any(folder.iterdir())


def test_the_cache_is_trimmed_oldest_first(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import os

    from edgeseg.runtime.openvino_backend import model_cache_dir, trim_cache

    for age, name in enumerate(["new", "mid", "old"]):
        (tmp_path / name).write_bytes(b"x" * (400 << 10))
        os.utime(tmp_path / name, (1e9 - age * 100, 1e9 - age * 100))
    assert trim_cache(tmp_path, 900 << 10) == 800 << 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid", "new"]
    monkeypatch.setenv("EDGESEG_OPENVINO_CACHE", str(tmp_path))
    monkeypatch.setenv("EDGESEG_OPENVINO_CACHE_MB", "0")
    assert model_cache_dir() == tmp_path and not any(tmp_path.iterdir())  # opening a runner trims


@needs_openvino
def test_a_damaged_cache_blob_is_compiled_anew(tiny_onnx: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A blob cut short (another process still writing it, a full disk) costs a compile, never a failure."""
    monkeypatch.setenv("EDGESEG_OPENVINO_CACHE", str(tmp_path))
    x = np.random.default_rng(10).gamma(2.0, 300.0, (1, 1, 48, 56)).astype(np.float32)
    first, _, _ = _cache_runs(tiny_onnx, x)
    blobs = [p for p in tmp_path.iterdir() if p.is_file()]
    assert blobs
    for blob in blobs:
        blob.chmod(0o644)
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    how: list[str] = []
    again, hit, _ = _cache_runs(tiny_onnx, x, how)
    assert not hit and np.array_equal(first, again)
    third, _, _ = _cache_runs(tiny_onnx, x, how)  # the damaged blob was replaced by a good one
    assert how[2] == "blob" and np.array_equal(first, third)


def test_the_runner_leaves_out_openvinos_conversion_tools_and_the_defaults_peer_does_not(tiny_onnx: Path) -> None:
    """Issue 24: `import openvino` brings openvino.tools.ovc (convert_model), 9-15 MB of peak RSS that
    inference never uses; a runner leaves it out (and a later import of it still works), while the
    OpenVINO-defaults peer imports openvino as a user does."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from edgeseg.runtime.runners import RunnerSpec, open_runner\n"
        "r = open_runner(Path(sys.argv[1]), RunnerSpec('openvino', precision=sys.argv[2], threads=1))\n"
        "labels = r.labels(np.random.default_rng(0).normal(400, 100, (1, 1, 48, 48)).astype(np.float32))\n"
        "loaded = 'openvino.tools.ovc' in sys.modules\n"
        "import openvino.tools.ovc\n"
        "print(loaded, labels.shape, hasattr(openvino.tools.ovc, 'convert_model'))\n"
    )
    for precision, loaded in (("fp32", "False"), ("default", "True")):
        proc = subprocess.run([sys.executable, "-c", code, str(tiny_onnx), precision], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split() == [loaded, "(1,", "48,", "48)", "True"], (precision, proc.stdout)


@needs_openvino
def test_a_job_on_openvino_does_not_import_onnxruntime(tiny_onnx: Path, tmp_path: Path) -> None:
    """Issue 24: the GPU-provider probe of `--provider auto` looks at onnxruntime's provider libraries
    on disk first, so a job that runs on OpenVINO does not import ONNX Runtime too (where a GPU
    library loads, it still does, to ask whether a session really runs on it)."""
    import subprocess
    import sys

    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "s.npy", np.random.default_rng(13).gamma(2.0, 300.0, (48, 56)).astype(np.float32))
    code = (
        "import sys\nfrom edgeseg.cli import main\n"
        f"sys.argv = ['edgeseg', 'infer', {str(tmp_path / 'in')!r}, '--out', {str(tmp_path / 'out')!r},"
        f" '--model', {str(tiny_onnx)!r}, '--backend', 'openvino']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('ort' if 'onnxruntime' in sys.modules else 'no ort')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "no ort" and (tmp_path / "out" / "s_seg.npy").is_file()


@needs_openvino
def test_a_folder_holding_openvinos_own_entries_still_gives_blob_hits(
    tiny_onnx: Path, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    """OpenVINO 2026.4: a graph that compile_model loaded from its CACHE_DIR exports a blob that
    import_model cannot read ("Unable to read the model"), and earlier edgesegs filled the same folder
    with such entries; so static shapes keep our blobs only, and the second process still imports one."""
    monkeypatch.setenv("EDGESEG_OPENVINO_CACHE", str(tmp_path))
    x = np.random.default_rng(14).gamma(2.0, 300.0, (1, 1, 48, 56)).astype(np.float32)
    runner = open_runner(tiny_onnx, RunnerSpec("openvino", precision="fp32", outputs=("labels",)))
    core = runner.ov.Core()
    core.set_property({"CACHE_DIR": str(tmp_path)})
    for _ in range(2):  # what an earlier edgeseg left behind: OpenVINO's own entry for this shape
        model = core.read_model(str(tiny_onnx))
        model.reshape({"image": list(x.shape)})
        core.compile_model(model, "CPU", runner.config)
    how: list[str] = []
    first, _, _ = _cache_runs(tiny_onnx, x, how)
    second, _, _ = _cache_runs(tiny_onnx, x, how)
    assert how[2] == "blob" and np.array_equal(first, second)
