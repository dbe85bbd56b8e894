"""edgeseg tune and infer --backend auto: real candidates in child processes, real gates.

The model folder holds the tiny U-Net's fp32 file, its checkpoint and an int8 QDQ file whose
head conv weights were negated after quantisation: a real, fast file that must fail the int8
gate and so must never be picked, however fast it runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.bench.tune import choose
from edgeseg.machine import fingerprint
from edgeseg.runtime.deploy import DeployPlan, choose_backend, deploy_path

EDGESEG = str(Path(sys.executable).parent / "edgeseg")  # the installed console script


def edgeseg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**(env or os.environ), "EDGESEG_DEBUG": "", "COLUMNS": "220"}
    return subprocess.run([EDGESEG, *args], capture_output=True, text=True, timeout=900, env=env)


def corrupted_int8(src: Path, dst: Path, calib: list[np.ndarray]) -> Path:
    """A real QDQ int8 file (edgeseg.export.quantize) with the last Conv's float weights negated."""
    import onnx
    from onnx import numpy_helper

    from edgeseg.artifacts import save_onnx
    from edgeseg.export.quantize import quantize_int8

    quantize_int8(src, dst, calib)
    proto = onnx.load(str(dst))
    last = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    weights = {i.name: i for i in proto.graph.initializer}
    tensor = weights[last.input[1]]
    assert tensor.data_type == onnx.TensorProto.FLOAT  # the head conv stays float (quantize_nodes.float_nodes)
    tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
    return save_onnx(proto, dst)


@pytest.fixture(scope="module")
def tuned(tiny_checkpoint: Path, tiny_onnx: Path, tiny_dataset, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """``(folder, model, proc)``: tiny.onnx, tiny.pt, a corrupted tiny_int8.onnx, and `edgeseg tune` run on them."""
    from edgeseg.data.dataset import load_slices

    folder = tmp_path_factory.mktemp("tune")
    model = Path(shutil.copy(tiny_onnx, folder / "tiny.onnx"))
    shutil.copy(tiny_checkpoint, folder / "tiny.pt")
    corrupted_int8(model, folder / "tiny_int8.onnx", load_slices(tiny_dataset[0]).images[:6])
    proc = edgeseg("tune", str(model), "--runs", "5", "--max-seconds", "1", "--slices", "3")
    return folder, model, proc


@pytest.mark.slow
def test_tune_writes_every_candidate_and_the_machine(tuned) -> None:  # noqa: ANN001
    folder, model, proc = tuned
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = DeployPlan.from_json(json.loads(deploy_path(model).read_text()))
    assert plan.machine == fingerprint() and plan.model == "tiny.onnx"
    names = {(c.backend, c.precision, c.threads) for c in plan.candidates}
    cores = min(fingerprint().cores, 2)  # edge-x86 caps threads at 2
    for threads in sorted({1, cores}):
        assert ("ort", "fp32", threads) in names and ("ort", "int8", threads) in names
    fp16 = [c for c in plan.candidates if c.precision == "fp16"]
    assert fp16 and all(c.status == "skip" and "tiny_fp16.onnx not found" in c.reason for c in fp16)
    ok = [c for c in plan.candidates if c.status == "ok"]
    assert all(c.p50_ms > 0 and c.p99_ms >= c.p50_ms and c.rss_mb > 0 and c.label for c in ok)
    ort = [c for c in ok if c.backend == "ort"]
    assert ort and all(c.torch_free for c in ort)  # the inference process never loaded torch
    eager = [c for c in plan.candidates if c.backend == "torch"]
    assert len(eager) == 1 and eager[0].role == "peer" and eager[0].status == "ok" and not eager[0].torch_free
    assert "machine:" in proc.stdout and "load average" in proc.stdout and "pick:" in proc.stdout


@pytest.mark.slow
def test_a_candidate_that_fails_its_gate_is_never_picked(tuned) -> None:  # noqa: ANN001
    _, model, proc = tuned
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = DeployPlan.from_json(json.loads(deploy_path(model).read_text()))
    bad = [c for c in plan.candidates if c.file == "tiny_int8.onnx" and c.status == "ok"]
    assert bad and all(c.failures for c in bad), [(c.name, c.d_miou, c.agreement) for c in bad]
    assert all("ΔmIoU" in " ".join(c.failures) or "agreement" in " ".join(c.failures) for c in bad)
    assert plan.picked is not None and plan.picked.passed and plan.picked.file == "tiny.onnx"
    # however fast the failing file had run, the rule leaves it out
    faster = [dataclasses.replace(c) for c in plan.candidates]
    for c in faster:
        if c.file == "tiny_int8.onnx" and c.status == "ok":
            c.p50_ms = 1e-3
    assert faster[choose(faster, plan.rss_budget_mb)].file == "tiny.onnx"
    for c in faster:  # and without its failures the same rule would have picked it: the gate decided
        c.failures = []
    assert faster[choose(faster, plan.rss_budget_mb)].file == "tiny_int8.onnx"


@pytest.mark.slow
def test_rss_budget_excludes_what_does_not_fit(tuned) -> None:  # noqa: ANN001
    _, model, _ = tuned
    plan = DeployPlan.from_json(json.loads(deploy_path(model).read_text()))
    smallest = min(c.rss_mb for c in plan.candidates if c.passed and c.role == "candidate")
    assert choose(plan.candidates, smallest - 1) is None
    assert any("budget" in c.reason for c in plan.candidates)
    picked = plan.candidates[choose(plan.candidates, smallest)]
    assert picked.rss_mb <= smallest


@pytest.mark.slow
def test_infer_uses_the_pick_here_and_falls_back_on_a_foreign_fingerprint(tuned, tmp_path: Path) -> None:  # noqa: ANN001
    _, model, _ = tuned
    scan = tmp_path / "slice.npy"
    np.save(scan, np.random.default_rng(0).normal(400, 100, (64, 64)).astype(np.float32))
    plan = DeployPlan.from_json(json.loads(deploy_path(model).read_text()))
    here = edgeseg("infer", str(scan), "--model", str(model), "--out", str(tmp_path / "a"))
    assert here.returncode == 0, here.stderr
    assert f"backend: {plan.picked.label} on {plan.picked.file}" in here.stdout
    assert choose_backend(model).tuned

    record = json.loads(deploy_path(model).read_text())
    record["machine"]["cpu"] = "AMD EPYC 7B13 (another machine)"
    deploy_path(model).write_text(json.dumps(record))
    try:
        away = edgeseg("infer", str(scan), "--model", str(model), "--out", str(tmp_path / "b"))
    finally:
        record["machine"]["cpu"] = plan.machine.cpu
        deploy_path(model).write_text(json.dumps(record))
    assert away.returncode == 0, away.stderr
    notes = [line for line in away.stdout.splitlines() if line.startswith("backend:")]
    assert len(notes) == 1 and "ONNX Runtime fp32" in notes[0] and "tuned on another machine" in notes[0]
    assert f"edgeseg tune {model}" in notes[0] and "AMD EPYC 7B13" in notes[0]
    assert np.array_equal(np.load(tmp_path / "a" / "slice_seg.npy"), np.load(tmp_path / "b" / "slice_seg.npy"))


@pytest.mark.slow
def test_infer_follows_an_openvino_pick_torch_free(tuned, tmp_path: Path) -> None:  # noqa: ANN001
    """Whatever was picked (an OpenVINO candidate here, set in the file), infer runs it with torch unimportable."""
    folder, _, _ = tuned
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    model = copy / "tiny.onnx"
    record = json.loads(deploy_path(model).read_text())
    ov = [i for i, c in enumerate(record["candidates"]) if c["backend"] == "openvino" and c["status"] == "ok"]
    ov = [i for i in ov if not record["candidates"][i]["failures"] and record["candidates"][i]["role"] == "candidate"]
    if not ov:
        pytest.skip("no OpenVINO candidate passed here (openvino not installed?)")
    record["pick"] = ov[0]
    deploy_path(model).write_text(json.dumps(record))
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    scan = tmp_path / "slice.npy"
    np.save(scan, np.random.default_rng(1).normal(400, 100, (80, 72)).astype(np.float32))
    proc = edgeseg("infer", str(scan), "--model", str(model), "--out", str(tmp_path / "o"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "running on OpenVINO" in proc.stdout and "the tuned pick of tiny.deploy.json" in proc.stdout
    ort = edgeseg("infer", str(scan), "--model", str(model), "--out", str(tmp_path / "r"), "--backend", "ort")
    assert ort.returncode == 0 and "running on CPUExecutionProvider" in ort.stdout
    agree = (np.load(tmp_path / "o" / "slice_seg.npy") == np.load(tmp_path / "r" / "slice_seg.npy")).mean()
    assert agree >= 0.99  # the picked candidate passed its gate against ORT fp32


@pytest.mark.slow
def test_a_stale_pick_falls_back(tuned, tmp_path: Path) -> None:  # noqa: ANN001
    """The picked file changed after tuning (a re-shipped model): its timing no longer applies."""
    folder, model, _ = tuned
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    pick = DeployPlan.from_json(json.loads(deploy_path(copy / "tiny.onnx").read_text())).picked
    with open(copy / pick.file, "ab") as fh:
        fh.write(b"\0")
    choice = choose_backend(copy / "tiny.onnx")
    assert not choice.tuned and (choice.backend, choice.precision) == ("ort", "fp32")
    assert "changed since it was tuned" in choice.note


@pytest.mark.slow
def test_tune_at_a_batch_times_openvino_throughput_and_infer_follows_it(tuned, tmp_path: Path) -> None:  # noqa: ANN001
    """``--batch 4``: every candidate times 4-slice batches; OpenVINO also runs in its throughput mode."""
    pytest.importorskip("openvino")
    folder, _, _ = tuned
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    model = copy / "tiny.onnx"
    proc = edgeseg(
        "tune",
        str(model),
        "--target",
        "clinical-cpu",
        "--batch",
        "4",
        "--runs",
        "3",
        "--max-seconds",
        "1",
        "--slices",
        "2",
        "--no-peers",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 4" in proc.stdout and "slices/s" in proc.stdout
    plan = DeployPlan.from_json(json.loads(deploy_path(model).read_text()))
    assert plan.settings["batch"] == 4 and plan.target == "clinical-cpu"
    fast = [c for c in plan.candidates if c.hint == "throughput"]
    assert {c.precision for c in fast} >= {"fp32"} and all(c.backend == "openvino" for c in fast)
    ok = [c for c in fast if c.status == "ok"]
    assert ok and all("throughput:" in c.label and c.name.endswith("throughput") for c in ok)
    fp32 = next(c for c in ok if c.precision == "fp32")
    assert fp32.passed, fp32.failures  # the same logits as ORT fp32, slice by slice
    # a throughput pick reaches infer: the runner it builds runs in that mode
    record = json.loads(deploy_path(model).read_text())
    record["pick"] = plan.candidates.index(fp32)
    deploy_path(model).write_text(json.dumps(record))
    choice = choose_backend(model)
    assert choice.tuned and choice.hint == "throughput" and choice.backend == "openvino"
    scan = tmp_path / "vol.npy"
    np.save(scan, np.random.default_rng(2).normal(400, 100, (6, 64, 72)).astype(np.float32))
    out = edgeseg("infer", str(scan), "--model", str(model), "--out", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr
    assert "throughput:" in out.stdout and "the tuned pick of tiny.deploy.json" in out.stdout


def test_tune_bad_threads_is_one_line(tiny_onnx: Path) -> None:
    proc = edgeseg("tune", str(tiny_onnx), "--threads", "0,x")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "--threads" in lines[0] and "1,2" in lines[0]


@pytest.mark.slow
def test_bench_adds_a_row_per_tuned_candidate_with_what_ran(tuned, tmp_path: Path) -> None:  # noqa: ANN001
    from edgeseg.bench.suite import BenchConfig, _Context, bench_target
    from edgeseg.bench.targets import tuned_targets

    folder, model, _ = tuned
    plan = DeployPlan.from_json(json.loads(deploy_path(model).read_text()))
    ok = [c for c in plan.candidates if c.role == "candidate" and c.status == "ok"]
    targets = tuned_targets(model)
    assert [t.name for t in targets] == [f"tuned {c.name}" for c in ok]
    config = BenchConfig(runs=3, max_seconds=1.0, miou=False, rss=False)
    ov = [t for t in targets if t.provider == "openvino" and t.precision == "int8"]
    if ov:
        row = bench_target(model, ov[0], config, _Context(model, config))
        assert row.status == "ok", row.reason
        assert row.ran_precision == "int8" and "convs u8" in row.backend and row.latency_ms["p50"] > 0
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    record = json.loads(deploy_path(copy / "tiny.onnx").read_text())
    record["machine"]["flags"] = [*record["machine"]["flags"], "not-this-cpu"]  # foreign by construction
    deploy_path(copy / "tiny.onnx").write_text(json.dumps(record))
    assert tuned_targets(copy / "tiny.onnx") == []  # tuned elsewhere: no rows


@pytest.mark.slow
def test_tune_times_every_measured_candidate_on_the_brain_box_too(tuned) -> None:  # noqa: ANN001
    """Issue 24: a crop column per candidate, from a fresh process that ran the box only."""
    _, model, proc = tuned
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = DeployPlan.from_json(json.loads(deploy_path(model).read_text()))
    height, width = plan.settings["crop"]["shape"]
    size = plan.settings["size"]
    assert height * width < size * size and height % 8 == 0 and width % 8 == 0
    ok = [c for c in plan.candidates if c.status == "ok"]
    assert ok and all(c.crop_p50_ms > 0 and c.crop_p99_ms >= c.crop_p50_ms and c.crop_rss_mb > 0 for c in ok)
    assert any(c.role == "peer" for c in ok)  # the peers too: the same box, their own way
    assert all(c.crop_p50_ms is None for c in plan.candidates if c.status != "ok")
    assert "crop p50" in proc.stdout and f"brain box timed (crop columns): {height}x{width}" in proc.stdout
    assert "pick on the brain box: p50" in proc.stdout
    assert set(plan.settings["crop_ratios"]) == set(plan.settings["ratios"])


@pytest.mark.slow
def test_tune_without_crop_has_no_crop_column(tuned, tmp_path: Path) -> None:  # noqa: ANN001
    folder, _, _ = tuned
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    model = copy / "tiny.onnx"
    proc = edgeseg("tune", str(model), "--runs", "3", "--max-seconds", "1", "--slices", "2", "--no-peers", "--no-crop")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = DeployPlan.from_json(json.loads(deploy_path(model).read_text()))
    assert plan.settings["crop"] is None and all(c.crop_p50_ms is None for c in plan.candidates)
    assert "crop p50" not in proc.stdout and "brain box" not in proc.stdout


@pytest.mark.slow
def test_tune_says_what_the_budget_left_out(tuned) -> None:  # noqa: ANN001
    """A budget under the fastest passing candidate's peak: the summary names it with its p50 and peak."""
    from edgeseg.bench.tune_report import over_budget, summary_lines

    _, model, _ = tuned
    plan = DeployPlan.from_json(json.loads(deploy_path(model).read_text()))
    passed = [c for c in plan.candidates if c.role == "candidate" and c.passed]
    fastest = min(passed, key=lambda c: c.p50_ms)
    assert over_budget(plan) is None or over_budget(plan).p50_ms < plan.picked.p50_ms
    plan.rss_budget_mb = fastest.rss_mb - 0.5
    for c in plan.candidates:
        c.reason = ""
    plan.pick = choose(plan.candidates, plan.rss_budget_mb)
    left = over_budget(plan)
    assert left is fastest and "budget" in left.reason
    line = next(x for x in summary_lines(plan) if x.startswith("over budget:"))
    assert f"p50 {fastest.p50_ms:.1f} ms" in line and f"peak RSS {fastest.rss_mb:.0f} MB" in line
    assert f"({fastest.crop_p50_ms:.1f} ms on the brain box)" in line and "target edge-x86" in line
    plan.rss_budget_mb = None  # no budget: nothing left out
    for c in plan.candidates:
        c.reason = ""
    plan.pick = choose(plan.candidates, None)
    assert over_budget(plan) is None and not any(x.startswith("over budget:") for x in summary_lines(plan))


def test_typical_crop_is_the_median_box_of_real_slices_on_the_grid(tiny_dataset) -> None:  # noqa: ANN001
    from edgeseg.bench.crop_bench import typical_crop
    from edgeseg.data.dataset import load_slices
    from edgeseg.infer.crop import plan_crop

    images = load_slices(tiny_dataset[0]).images[:9]
    box = typical_crop(images, 3, 32, 394)
    assert box is not None and box.height % 8 == 0 and box.width % 8 == 0
    areas = sorted((c.shape[0] * c.shape[1] if c else 394 * 394) for c in (plan_crop([i[None]], 8, 32) for i in images))
    assert box.height * box.width == areas[len(areas) // 2]
    assert box.fraction == pytest.approx(box.height * box.width / 394**2) and "median of 9" in box.source
    half = [i[::2, ::2] for i in images]  # 197² slices: their boxes scaled back to a 394² frame, on the grid
    scaled = typical_crop(half, 3, 32, 394)
    assert scaled is not None and scaled.height % 8 == 0 and scaled.width % 8 == 0
    # the margin and the grid step count twice at half resolution: up to 2 x (8 + 8) px wider a side
    assert box.height - 8 <= scaled.height <= box.height + 48 and box.width - 8 <= scaled.width <= box.width + 48
    assert typical_crop(images, 2, 32, 394) is None  # a contract-2 model's labels depend on the framing
    assert typical_crop([], 3, 32, 394) is None
    assert typical_crop([np.zeros((394, 394), np.float32)], 3, 32, 394) is None  # nothing to crop
