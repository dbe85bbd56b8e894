"""Tests for the bench stage: edgeseg.bench.suite, edgeseg.runtime.measure, edgeseg.runtime.runners's runners,
edgeseg.bench.report.

Real ONNX Runtime sessions, real files, real child processes and the real CLI; no timed
assertions (the numbers depend on the machine), only on what was measured and written.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from edgeseg import EdgesegError
from edgeseg.artifacts import read_model_info
from edgeseg.bench.report import compute_ratios, print_report, table_rows, to_markdown
from edgeseg.bench.suite import BenchConfig, Result, Target, bench, check_budget, noise_warnings, run_bench
from edgeseg.bench.targets import DEFAULT_TARGETS, load_targets, model_file, runner_spec, select_targets, why_not_here
from edgeseg.data.split import SplitRecord, held_out
from edgeseg.metrics import score
from edgeseg.runtime.measure import (
    count_macs,
    latency_stats,
    peak_rss_mb,
    run_child,
    time_runs,
)
from edgeseg.runtime.ort_session import SessionLevers
from edgeseg.runtime.runners import RunnerSpec, open_runner

EDGESEG = [sys.executable, "-c", "from edgeseg.cli import main; main()"]
FAST = dict(size=48, warmup=1, runs=3, min_runs=2, max_seconds=0.2, peak_size=64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path, tiny_dataset: tuple[Path, list[str]]) -> Path:
    """tiny.onnx + tiny.pt + a real int8 sibling, in a folder of our own."""
    from edgeseg.data.dataset import load_slices
    from edgeseg.export.quantize import quantize_int8

    folder = tmp_path_factory.mktemp("bench_models")
    shutil.copy(tiny_onnx, folder / "tiny.onnx")
    shutil.copy(tiny_onnx.with_suffix(".pt"), folder / "tiny.pt")
    images = load_slices(tiny_dataset[0]).images[:4]
    quantize_int8(folder / "tiny.onnx", folder / "tiny_int8.onnx", images)
    return folder


def write_targets(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# ----------------------------------------------------------------------------- targets


def test_shipped_targets_are_valid_and_have_budgets() -> None:
    targets = load_targets(DEFAULT_TARGETS)
    assert {"edge-x86", "arm-cpu", "jetson-orin", "clinical-gpu", "clinical-cpu"} <= set(targets)
    for t in targets.values():
        assert t.reference or t.p99_ms or t.volume_s, f"{t.name} has no budget"
    assert targets["jetson-orin"].provider == "tensorrt" and targets["jetson-orin"].batch == 1
    assert targets["arm-cpu"].threads == 4 and targets["arm-cpu"].precision == "int8"
    assert targets["clinical-gpu"].batch == 32 and targets["clinical-cpu"].threads == 0


BAD_TARGETS = [
    # toml text, words the error must contain
    ("[a]\nprovider = 'cpu'\nspeed = 3\n", ["[a]", "unknown keys", "speed"]),
    ("[a]\nprovider = 'rocm'\n", ["[a]", "rocm", "choose one of"]),
    ("[a]\nprovider = 'cpu'\nprecision = 'int4'\n", ["[a]", "int4"]),
    ("[a]\nprovider = 'cpu'\nbatch = 0\n", ["[a]", "batch must be >= 1"]),
    ("[a]\nprecision = 'fp32'\n", ["[a]", "provider"]),
    ("[a\nprovider = 'cpu'\n", ["not valid TOML"]),
    ("[a]\nprovider = 'cpu'\nhint = 'throughput'\n", ["[a]", "hint 'throughput'", "provider openvino"]),
    ("[a]\nprovider = 'openvino'\nhint = 'fast'\n", ["[a]", "hint 'fast'"]),
]


@pytest.mark.parametrize("text,words", BAD_TARGETS, ids=[w[-1] for _, w in BAD_TARGETS])
def test_bad_targets_file_names_file_and_target(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write_targets(tmp_path / "t.toml", text)
    with pytest.raises(EdgesegError) as err:
        load_targets(path)
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_a_throughput_target_runs_openvino_streams_and_says_so(tiny_onnx: Path) -> None:
    """The shipped clinical-cpu-openvino profile, on the tiny model: a batch's slices in parallel requests."""
    pytest.importorskip("openvino")
    from edgeseg.bench.suite import _Context, bench_target

    target = load_targets(DEFAULT_TARGETS)["clinical-cpu-openvino"]
    assert (target.provider, target.hint, target.batch) == ("openvino", "throughput", 8)
    config = BenchConfig(**{**FAST, "miou": False, "rss": False})
    row = bench_target(tiny_onnx, target, config, _Context(tiny_onnx, config))
    assert row.status == "ok", row.reason
    assert "throughput:" in row.backend and "streams" in row.backend and row.batch == 8
    assert row.latency_ms["p50"] > 0


def test_missing_targets_file_and_unknown_target(tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="targets file not found"):
        load_targets(tmp_path / "nope.toml")
    with pytest.raises(EdgesegError, match="unknown target 'x'; choose all or one of edge-x86"):
        select_targets(load_targets(), "x")
    assert len(select_targets(load_targets(), "all")) == len(load_targets())


MODEL_FILES = [
    # given, provider, precision, expected file name
    ("m.onnx", "cpu", "fp32", "m.onnx"),
    ("m.onnx", "cpu", "int8", "m_int8.onnx"),
    ("m_int8.onnx", "cpu", "fp16", "m_fp16.onnx"),
    ("m_fp16.onnx", "openvino", "fp32", "m.onnx"),
    ("m.onnx", "tensorrt", "fp16", "m.onnx"),  # fp16 kernels on the fp32 graph
    ("m.onnx", "tensorrt", "int8", "m.engine"),  # TensorRT int8 = the symmetric engine
    ("m.onnx", "cuda", "fp16", "m_fp16.onnx"),
    ("m_int8.onnx", "torch", "fp32", "m.pt"),
]


@pytest.mark.parametrize("given,provider,precision,expected", MODEL_FILES)
def test_model_file_picks_the_precision_sibling(given: str, provider: str, precision: str, expected: str) -> None:
    path = model_file(Path("/x") / given, Target("t", provider, precision))
    assert path == Path("/x") / expected


def test_tensorrt_prefers_an_engine_of_its_precision(tmp_path: Path) -> None:
    from edgeseg.runtime.tensorrt import gpu_problem

    model, engine = tmp_path / "m.onnx", tmp_path / "m.engine"
    fp16 = Target("t", "tensorrt", "fp16")
    assert model_file(model, fp16) == model  # no engine: ORT's TensorRT provider, fp32 graph
    engine.write_bytes(b"engine")
    Path(f"{engine}.json").write_text(json.dumps({"precision": "int8"}))
    assert model_file(model, fp16) == model  # an int8 engine is not an fp16 one
    Path(f"{engine}.json").write_text(json.dumps({"precision": "fp16"}))
    assert model_file(model, fp16) == engine
    assert why_not_here(fp16, engine) == gpu_problem()
    missing = why_not_here(Target("t", "tensorrt", "int8"), tmp_path / "x.engine")
    assert "edgeseg export --trt --int8" in missing


def test_why_not_here(model_dir: Path, gpu_here: bool) -> None:
    model = model_dir / "tiny.onnx"
    assert why_not_here(Target("t", "cpu"), model) is None
    assert "riscv64" in why_not_here(Target("t", "cpu", arch="riscv64"), model)
    missing = why_not_here(Target("t", "cpu", "fp16"), model_dir / "tiny_fp16.onnx")
    assert "tiny_fp16.onnx not found" in missing and "edgeseg export --fp16" in missing
    for provider in ("cuda", "tensorrt"):
        reason = why_not_here(Target("t", provider), model)
        if not gpu_here:  # found without edgeseg: no GPU, so a GPU target must say why it skips
            assert reason is not None and f"provider {provider}: " in reason and "cannot run here" in reason


# ----------------------------------------------------------------------------- measuring


def test_latency_stats_are_linear_percentiles() -> None:
    stats = latency_stats([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats["min"] == pytest.approx(1) and stats["max"] == pytest.approx(100)
    assert stats["mean"] == pytest.approx(50.5) and stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)


@pytest.mark.parametrize(
    "runs,min_runs,max_seconds,expected",
    [
        (7, 2, 60.0, 7),  # the run cap
        (50, 3, 0.0, 3),  # time is up at once: only the minimum
    ],
)
def test_time_runs_counts(runs: int, min_runs: int, max_seconds: float, expected: int) -> None:
    calls = []
    times = time_runs(calls.append, np.zeros(1), 2, runs, min_runs, max_seconds)
    assert len(times) == expected and len(calls) == expected + 2  # + warm-up
    assert all(t >= 0 for t in times)


def test_count_macs_threshold_model(threshold_onnx: Path) -> None:
    assert count_macs(threshold_onnx, 40) == 3 * 40 * 40  # one 1x1 conv, 1 -> 3 channels


@pytest.mark.parametrize("size", [48, 53])
def test_count_macs_matches_torch_hooks(model_dir: Path, size: int) -> None:
    import torch

    from edgeseg.model import load_checkpoint

    model, _ = load_checkpoint(model_dir / "tiny.pt")
    macs = []

    def hook(module, inputs, output) -> None:  # noqa: ANN001
        k = math.prod(module.kernel_size)
        if isinstance(module, torch.nn.ConvTranspose2d):
            macs.append(inputs[0].numel() * module.out_channels // module.groups * k)
        else:
            macs.append(output.numel() * module.in_channels // module.groups * k)

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    assert count_macs(model_dir / "tiny.onnx", size) == sum(macs)
    assert count_macs(model_dir / "tiny_int8.onnx", size) == sum(macs)  # QDQ: same convs


def test_rss_child_is_torch_free(threshold_onnx: Path) -> None:
    spec = {
        "mode": "rss",
        "path": str(threshold_onnx),
        "size": 32,
        "runs": 2,
        "runner": asdict(RunnerSpec("ort", "cpu", threads=1, batch=2)),
        "batch": 2,
    }
    out = run_child(spec, threads=1)
    assert out["torch_loaded"] is False
    assert 10 < out["rss_mb"] < 2000
    assert peak_rss_mb() > 10  # this process, for comparison


def test_matmul_peak_child() -> None:
    out = run_child({"mode": "peak", "size": 64, "threads": 1}, threads=1)
    assert out["lib"] in ("numpy", "torch") and out["gflops"] > 0
    assert out["gflops"] == max(out["all"].values())


def test_score_and_the_models_own_held_out_data(
    threshold_onnx: Path, tiny_onnx: Path, tiny_dataset: tuple[Path, list[str]]
) -> None:
    runner = open_runner(threshold_onnx, RunnerSpec("ort", "cpu", threads=1))
    masks = [np.array([[0, 1], [2, 2]], np.uint8).repeat(8, 0).repeat(8, 1)] * 2
    names = ("bg", "gm", "wm")
    assert score(runner.labels, [m.astype(np.float32) for m in masks], masks, names)["miou_fg"] == pytest.approx(1.0)
    assert score(runner.labels, [np.zeros_like(m, np.float32) for m in masks], masks, names)["miou_fg"] == 0.0
    # An exported file records its held-out slices: bench scores it on those, not on the demo split.
    root, test_keys = tiny_dataset
    record = SplitRecord.from_metadata(read_model_info(tiny_onnx).metadata, tiny_onnx)
    assert record is not None and set(record.test_keys) == set(test_keys) and record.root == str(root)
    held = held_out(record)
    assert held.keys == sorted(test_keys) and "the model's" in held.source
    assert len(held.limited(2).images) == 2 and held.limited(2).images[0].dtype == np.float32
    # A file from before the record: the demo-style slab split, and the report says it may overlap.
    old = held_out(None, root)
    assert "may include its training data" in old.source


# ----------------------------------------------------------------------------- backends

SPECS = [
    RunnerSpec("ort", "cpu", threads=1),
    RunnerSpec("ort", "cpu", threads=1, io_binding=True),
    RunnerSpec("ort", "cpu", threads=1, outputs=("logits", "labels")),
    RunnerSpec("ort", "cpu", threads=1, outputs=("logits",)),
    RunnerSpec(
        "ort", "cpu", threads=1, levers=SessionLevers(nchwc=False, spinning=True, arena=False, mem_pattern=True)
    ),
    RunnerSpec("ort", "cpu", threads=1, levers=SessionLevers(level="ORT_DISABLE_ALL")),
]


@pytest.mark.parametrize("spec", SPECS, ids=[str(i) for i in range(len(SPECS))])
def test_cpu_levers_keep_the_answer(threshold_onnx: Path, spec: RunnerSpec) -> None:
    predict = open_runner(threshold_onnx, spec).labels
    for shape in ((1, 1, 16, 20), (3, 1, 18, 16), (1, 1, 16, 20)):  # a shape seen before, too
        x = np.random.default_rng(0).uniform(-1, 3, shape).astype(np.float32)
        labels = np.asarray(predict(x))
        assert labels.dtype == np.uint8 and labels.shape == (shape[0], *shape[2:])
        np.testing.assert_array_equal(labels, np.clip(np.round(x[:, 0]), 0, 2))


@pytest.mark.parametrize("provider", ["openvino", "torch"])
def test_peer_backends_agree_with_onnxruntime(model_dir: Path, provider: str) -> None:
    pytest.importorskip(provider, reason=f"{provider} is not installed (optional peer)")
    x = np.random.default_rng(1).normal(500, 300, (2, 1, 48, 56)).astype(np.float32)
    reference = open_runner(model_dir / "tiny.onnx", RunnerSpec("ort", "cpu", threads=1)).labels(x)
    path = model_file(model_dir / "tiny.onnx", Target("t", provider))
    peer = open_runner(path, runner_spec(Target("t", provider, threads=1), path))
    assert peer.create_s > 0 and peer.label.split()[0] in ("OpenVINO", "PyTorch")
    assert peer.precision == "fp32"  # OpenVINO: the explicit f32 hint, never its bf16 default
    assert np.mean(np.asarray(peer.labels(x)) == reference) > 0.99


# ----------------------------------------------------------------------------- the report


@pytest.mark.parametrize(
    "p99,volume,latency,ok",
    [
        (100.0, None, {"p99": 90.0, "mean": 80.0}, True),
        (100.0, None, {"p99": 120.0, "mean": 80.0}, False),
        (None, 10.0, {"p99": 90.0, "mean": 40.0}, True),  # 200 x 40 ms = 8 s
        (100.0, 10.0, {"p99": 90.0, "mean": 60.0}, False),  # 12 s
        (None, None, {"p99": 1.0, "mean": 1.0}, None),
    ],
)
def test_check_budget(p99: float | None, volume: float | None, latency: dict[str, float], ok: bool | None) -> None:
    assert check_budget(Target("t", "cpu", p99_ms=p99, volume_s=volume), latency)[0] is ok


def _row(name: str, provider: str, precision: str, p50: float, miou: float) -> Result:
    return Result(
        name,
        provider,
        precision,
        1,
        "2",
        "ok",
        latency_ms={"p50": p50},
        miou_fg=miou,
        rss_mb=100.0,
        peak_pct=50.0,
        cv=0.2 if name == "e" else 0.01,
    )


def test_compare_and_noise_warnings() -> None:
    rows = [
        _row("fp32", "cpu", "fp32", 80, 0.90),
        _row("int8", "cpu", "int8", 50, 0.896),
        _row("e", "torch", "fp32", 200, 0.90),
        _row("ov", "openvino", "fp32", 100, 0.90),
    ]
    targets = {r.target: Target(r.target, r.provider, reference=r.provider != "cpu") for r in rows}
    ratios = compute_ratios(rows, targets)
    assert ratios.best_cpu == "int8"
    assert ratios.vs_eager == pytest.approx(0.25) and ratios.vs_openvino == 0.5
    assert ratios.delta_miou_pt == pytest.approx(-0.4)
    warnings = noise_warnings(rows, 0.1, {"load_avg_end": [3.0], "cores": 2})
    assert len(warnings) == 1 and warnings[0].startswith("e: latency CV 20%")


@pytest.mark.parametrize("with_ort", [True, False])
def test_compare_c_with_python_openvino(with_ort: bool) -> None:
    rows = [_row("ov", "openvino", "fp32", 100, 0.90), _row("c", "c-openvino", "fp32", 90, 0.90)]
    rows += [_row("fp32", "cpu", "fp32", 80, 0.90)] if with_ort else []
    targets = {r.target: Target(r.target, r.provider, reference=r.provider != "cpu") for r in rows}
    ratios = compute_ratios(rows, targets)
    assert ratios.c_vs_python_openvino == pytest.approx(0.9) and ratios.c_p50_ms == 90
    assert (ratios.best_cpu is not None) is with_ort  # the C ratio does not need an ORT row


def test_run_bench_end_to_end(model_dir: Path, tmp_path: Path, tiny_dataset: tuple[Path, list[str]]) -> None:
    targets = write_targets(
        tmp_path / "t.toml",
        """
        [fp32]
        provider = "cpu"
        threads = 1
        p99_ms = 100000.0
        [int8]
        provider = "cpu"
        precision = "int8"
        batch = 2
        threads = 1
        volume_s = 0.000001
        [fp16]
        provider = "cpu"
        precision = "fp16"
        [risc]
        provider = "cpu"
        arch = "riscv64"
        [gpu]
        provider = "tensorrt"
        precision = "fp16"
        batch = 4
    """,
    )
    config = BenchConfig(targets_file=targets, data=tiny_dataset[0], miou_slices=2, **FAST)
    out_json, out_md = tmp_path / "r" / "bench.json", tmp_path / "bench.md"
    report = bench(model_dir / "tiny.onnx", "all", config, out_json, out_md)
    rows = {r.target: r for r in report.results}
    for name in ("fp32", "int8"):
        r = rows[name]
        assert r.status == "ok" and r.backend.startswith("onnxruntime ") and " CPU " in r.backend, r.reason
        assert r.ran_precision == name and r.backend.endswith(name)
        assert set(r.latency_ms) == {"min", "mean", "p50", "p90", "p95", "p99", "max"}
        assert r.latency_ms["min"] <= r.latency_ms["p50"] <= r.latency_ms["max"]
        assert 0 <= r.miou_fg <= 1 and r.torch_free is True and r.rss_mb > 10
        assert r.gflops > 0 and r.create_s > 0 and r.first_ms > 0
    assert rows["fp32"].budget_ok is True and rows["int8"].budget_ok is False
    assert rows["fp32"].slices_per_s == pytest.approx(1e3 / rows["fp32"].latency_ms["mean"])
    assert rows["fp16"].status == "skip" and "edgeseg export --fp16" in rows["fp16"].reason
    assert rows["risc"].status == "skip" and "riscv64" in rows["risc"].reason
    assert rows["gpu"].status in ("skip", "ok") and (rows["gpu"].status == "ok") == (rows["gpu"].reason == "")
    saved = json.loads(out_json.read_text())
    assert [r["target"] for r in saved["results"]] == list(rows)
    assert saved["machine"]["macs_per_slice"] == count_macs(model_dir / "tiny.onnx", 48)
    peak = saved["machine"]["fp32_peak"]["1"]  # the fp32 FMA peak: of fp32 rows only, where it is known
    assert rows["int8"].peak_pct is None and peak["sgemm_gflops"] > 0
    known = pytest.approx(100 * rows["fp32"].gflops / peak["gflops"]) if "gflops" in peak else None
    assert rows["fp32"].peak_pct == known
    assert saved["ratios"]["best_cpu"] == "fp32"  # int8 runs batch 2: not a batch-1 row
    md = out_md.read_text()
    assert sum(ln.startswith("| ") for ln in md.splitlines()) == len(rows) + 1
    assert "riscv64" in md
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files
    assert len(table_rows(report)[0]) == len(md.splitlines()[0].split("|")) - 2
    assert to_markdown(report) == md


def test_run_bench_rejects_foreign_model(threshold_onnx: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(EdgesegError, match="bad.onnx: not a readable ONNX file"):
        run_bench(bad, "all", BenchConfig(**FAST))


# ----------------------------------------------------------------------------- the CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([*EDGESEG, "bench", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_bench_writes_table_json_markdown(model_dir: Path, tmp_path: Path) -> None:
    targets = write_targets(
        tmp_path / "t.toml",
        """
        [edge]
        provider = "cpu"
        precision = "int8"
        threads = 1
        p99_ms = 100000.0
        [jetson]
        provider = "tensorrt"
        precision = "fp16"
        arch = "aarch64"
    """,
    )
    out = tmp_path / "out"
    proc = run_cli(
        str(model_dir / "tiny.onnx"),
        "--targets",
        str(targets),
        "--json",
        str(out / "b.json"),
        "--markdown",
        str(out / "b.md"),
        "--runs",
        "3",
        "--max-seconds",
        "0.1",
        "--no-miou",
        "--no-rss",
    )
    assert proc.returncode == 0, proc.stderr
    assert "edge" in proc.stdout and "✅" in proc.stdout and "p99" in proc.stdout
    assert "jetson: skipped: profile for aarch64" in proc.stdout
    assert json.loads((out / "b.json").read_text())["results"][0]["status"] == "ok"
    assert (out / "b.md").read_text().startswith("| target | backend |")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--target", "nope"], "unknown target 'nope'"),
        (["MISSING"], "MISSING: model not found"),
    ],
)
def test_cli_bench_errors_are_one_line(model_dir: Path, args: list[str], message: str) -> None:
    args = [str(model_dir / "missing.onnx") if a == "MISSING" else a for a in args]
    if args[0].startswith("--"):
        args = [str(model_dir / "tiny.onnx"), *args]
    proc = run_cli(*args)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message.replace("MISSING", "missing.onnx") in lines[0]
    assert "Traceback" not in proc.stderr


def test_bench_times_each_target_on_the_brain_box_too(
    model_dir: Path, tmp_path: Path, tiny_dataset: tuple[Path, list[str]]
) -> None:
    """Issue 24: a crop column per target, the box from the model's own held-out slices, its RSS from
    a process that ran the box only; --no-crop leaves the columns out."""
    from rich.console import Console

    targets = write_targets(tmp_path / "t.toml", '[fp32]\nprovider = "cpu"\nthreads = 1\n')
    config = BenchConfig(targets_file=targets, data=tiny_dataset[0], miou_slices=2, **{**FAST, "size": 394})
    report = run_bench(model_dir / "tiny.onnx", "all", config)
    row = report.results[0]
    assert row.status == "ok", row.reason
    assert 0 < row.crop_latency_ms["min"] <= row.crop_latency_ms["p50"] <= row.crop_latency_ms["max"]
    assert 10 < row.crop_rss_mb and row.rss_mb > 10
    box = r"^\d+x\d+ \(\d+ % of the frame; median of \d held-out slices' brain boxes"
    assert re.search(box, report.machine["crop"])
    assert report.ratios.crop_p50_ms == row.crop_latency_ms["p50"]  # the best row, here the only one
    out = io.StringIO()
    print_report(report, Console(file=out, width=100))
    assert "crop" in out.getvalue() and "crop columns: each target on the brain box" in out.getvalue()
    assert "| crop p50 ms | crop RSS MB |" in to_markdown(report)

    plain = run_bench(model_dir / "tiny.onnx", "all", BenchConfig(**{**config.__dict__, "crop": False}))
    assert plain.results[0].crop_latency_ms == {} and plain.results[0].crop_rss_mb is None
    assert plain.machine["crop"] is None
    out = io.StringIO()
    print_report(plain, Console(file=out, width=100))
    assert "crop" not in out.getvalue()
