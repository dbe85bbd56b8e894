"""bench/gpu_check.py in its CPU rehearsal: the real script in a subprocess, up to the CUDA calls.

No GPU here: these runs prove the sections, the per-section budgets, the fallbacks and the
JSON/Markdown it writes, not any GPU figure.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
EXAMPLE = REPO / "export" / "example" / "mni152_t1_axial_slab.nii.gz"
SECTIONS = ["environment", "parity", "infer_eager", "infer_compiled", "train_eager", "train_compiled", "ort_cuda"]


def run_check(
    out: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 420
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )


def load_script():  # noqa: ANN201
    """bench/gpu_check.py as a module."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
    try:
        spec.loader.exec_module(gpu_check)
    finally:
        del sys.modules["gpu_check"]
    return gpu_check


def test_cpu_rehearsal_writes_the_report(tmp_path: Path) -> None:
    r = run_check(tmp_path, "--data", "example")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert report["format"] == "edgeseg-gpu-check-v1" and list(sections) == SECTIONS
    status = {name: s["status"] for name, s in sections.items()}
    ran = ("environment", "parity", "infer_eager", "infer_compiled", "train_eager", "train_compiled")
    assert all(status[name] == "ok" for name in ran), {n: (s["status"], s["reason"]) for n, s in sections.items()}
    assert status["ort_cuda"] == "skipped" and "CUDAExecutionProvider" in sections["ort_cuda"]["reason"]
    # torch.compile really ran on CPU (aot_eager: Dynamo + AOTAutograd of the real model and step)
    assert report["config"]["compile_backend"] == "aot_eager"
    compiled = sections["infer_compiled"]["measurements"]
    assert [(m["name"], m["batch"], m["backend"]) for m in compiled] == [
        ("compiled default fp32", 1, "aot_eager"),
        ("compiled default fp32", 2, "aot_eager"),
    ]
    assert all(m["compile_s"] > 0 and m["runs"] >= 3 and m["items_per_s"] > 0 for m in compiled)
    assert sections["infer_compiled"]["skipped"] == {"compiled reduce-overhead": "CUDA graphs need a CUDA device"}
    (step,) = sections["train_compiled"]["measurements"]
    assert (step["name"], step["batch"], step["backend"]) == ("train compiled fp32 channels_last", 2, "aot_eager")
    assert step["first_step_s"] > 0 and step["items_per_s"] > 0

    env = sections["environment"]
    assert env["info"]["torch"] and env["info"]["cuda_available"] is False
    assert {"onnxruntime CUDA", "TensorRT"} <= set(env["skipped"]) and all(env["skipped"].values())

    (fp32,) = sections["parity"]["measurements"]  # fp16 autocast is CUDA-only
    assert "shipped example" in sections["parity"]["info"]["data"] and "nibabel" in sections["parity"]["info"]["data"]
    assert fp32["max_abs"] == 0.0 and fp32["agreement"] == 1.0 and fp32["failures"] == []  # CPU against itself
    assert fp32["d_miou"] is None  # the example scan has no ground truth
    assert "fp16 autocast is checked on CUDA only" in sections["parity"]["skipped"].values()

    infer = sections["infer_eager"]["measurements"]
    assert [(m["name"], m["batch"]) for m in infer] == [("eager fp32", 1), ("eager fp32", 2)]
    assert all(m["items_per_s"] > 0 and m["runs"] >= 3 and m["size"] == 32 for m in infer)
    assert any("CUDA graphs need a CUDA device" == why for why in sections["infer_eager"]["skipped"].values())
    (train,) = sections["train_eager"]["measurements"]
    assert train["batch"] == 2 and train["items_per_s"] > 0

    timed = [m for n in ("infer_eager", "infer_compiled") for m in sections[n]["measurements"]]
    goals = report["goals"]
    assert goals["latency_b1_ms"]["best"] == min(m["latency_ms"]["p50"] for m in timed if m["batch"] == 1)
    assert goals["throughput_b32"]["best"] == max(m["items_per_s"] for m in timed if m["batch"] == 2)
    assert [g["target"] for g in goals.values()] == [1.0, 10_000.0, 500.0]
    assert goals["train_img_s"]["met"] is False  # 2 img/s on 2 shared cores

    md = (tmp_path / "gpu_check.md").read_text()
    assert "# edgeseg GPU check: no GPU (cpu mode)" in md and "say nothing about a GPU" in md
    assert "torch.compile with the aot_eager backend" in md
    for name, section in sections.items():
        rows = [line for line in md.splitlines() if line.startswith(f"| {name} | ")]
        assert len(rows) == len([m for m in section["measurements"] if "latency_ms" in m]) + 1, name
    assert "| latency_b1_ms | 1 ms p50 at batch 1 |" in md and "| fp32 | 0.00e+00 |" in md
    assert not list(tmp_path.glob(".*"))  # no section files or temp files left


def test_without_nilearn_nibabel_scipy_it_says_which_data_it_used(tmp_path: Path, env_without) -> None:  # noqa: ANN001
    """As on the GPU machine, which may lack them: the example scan is read from its raw header."""
    env = env_without(tmp_path / "shim", "nilearn")
    for module in ("nibabel", "scipy"):
        env_without(tmp_path / "shim", module)
    r = run_check(tmp_path / "out", "--sections", "environment,parity", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    sections = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["sections"]
    assert list(sections) == ["environment", "parity"]
    assert "not importable" in sections["environment"]["skipped"]["nilearn (demo slices)"]
    data = sections["parity"]["info"]["data"]
    assert "read from its raw header" in data and "the demo set needs nilearn" in data, data
    (fp32,) = sections["parity"]["measurements"]
    assert fp32["failures"] == [] and fp32["agreement"] == 1.0


def test_the_gpu_check_still_compiles_with_inductor_within_its_budgets() -> None:
    """The CPU rehearsal's cheaper backend and longer budgets never reach the GPU check."""
    gpu_check = load_script()
    cuda = gpu_check.make_config("cuda")
    assert cuda.compile_backend == "inductor" and (cuda.size, cuda.infer_batch, cuda.train_batch) == (394, 32, 32)
    assert (cuda.budgets["infer_compiled"], cuda.budgets["train_compiled"], cuda.max_total) == (110, 100, 470.0)
    cpu = gpu_check.make_config("cpu")
    assert cpu.compile_backend == "aot_eager" and cpu.budgets["infer_compiled"] == 90
    inductor = gpu_check.make_config("cpu", compile_backend="inductor")
    assert inductor.budgets["infer_compiled"] == inductor.budgets["train_compiled"] == 300


@pytest.mark.slow
def test_cpu_rehearsal_with_inductor_compiles_within_its_budget(tmp_path: Path) -> None:
    """``--compile-backend inductor`` on CPU: inductor's C++ build, minutes on 2 shared cores."""
    r = run_check(tmp_path, "--sections", "infer_compiled", "--compile-backend", "inductor", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    section = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["infer_compiled"]
    assert section["status"] == "ok", section
    assert [(m["batch"], m["backend"]) for m in section["measurements"]] == [(1, "inductor"), (2, "inductor")]


def test_raw_nifti_reader_equals_nibabel() -> None:
    import nibabel as nib

    gpu_check = load_script()
    volume, zooms = gpu_check.read_nifti_raw(EXAMPLE)
    img = nib.load(EXAMPLE)
    assert volume.shape == img.shape == (197, 233, 5)
    assert np.array_equal(volume, img.get_fdata(dtype=np.float32)) and volume.max() > 0
    assert zooms == pytest.approx(img.header.get_zooms()[:3])


def test_unknown_section_is_a_usage_error(tmp_path: Path) -> None:
    r = run_check(tmp_path, "--sections", "environment,warp_drive")
    assert r.returncode == 2 and "warp_drive" in r.stderr


def _no_cuda() -> str | None:
    import torch

    return None if torch.cuda.is_available() else f"PyTorch {torch.__version__} sees no CUDA device"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(_no_cuda() is not None, reason=f"the GPU check needs CUDA: {_no_cuda()}")
def test_gpu_check_on_cuda(tmp_path: Path) -> None:
    """The real check (under 8 minutes): every CUDA section measures, and CUDA agrees with the CPU."""
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert sections["environment"]["info"]["gpu"] and report["total_seconds"] < 480
    parity = {m["precision"]: m for m in sections["parity"]["measurements"]}
    assert set(parity) == {"fp32", "fp16"} and all(not m["failures"] for m in parity.values()), parity
    names = {m["name"] for m in sections["infer_eager"]["measurements"]}
    assert {"eager fp32", "eager fp16", "CUDA graph fp16"} <= names
    assert all(g["best"] is not None for g in report["goals"].values())
