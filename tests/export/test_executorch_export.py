"""edgeseg.export.executorch: X.pte / X_int8.pte with dynamic H x W, gated at export time.

The export tests need ExecuTorch (``pip install 'edgeseg[executorch]'``) and skip with that
reason without it; the missing-ExecuTorch error runs everywhere (a shim hides the package).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HAVE_EXECUTORCH = importlib.util.find_spec("executorch") is not None and (
    importlib.util.find_spec("executorch.exir") is not None
)
needs_executorch = pytest.mark.skipif(
    not HAVE_EXECUTORCH, reason="ExecuTorch is not installed (pip install 'edgeseg[executorch]')"
)
EDGESEG = str(Path(sys.executable).parent / "edgeseg")  # the installed console script


def edgeseg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**(env or os.environ), "EDGESEG_DEBUG": "", "COLUMNS": "200"}
    return subprocess.run([EDGESEG, *args], capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def pte_export(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    if not HAVE_EXECUTORCH:
        pytest.skip("ExecuTorch is not installed (pip install 'edgeseg[executorch]')")
    out = tmp_path_factory.mktemp("pte")
    proc = edgeseg(
        "export", str(tiny_checkpoint), "--out", str(out), "--executorch", "--slices", "2", "--size-slices", "1"
    )
    return out, proc


@pytest.mark.slow
@needs_executorch
def test_cli_writes_both_pte_files_and_gates_them(pte_export: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = pte_export
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == {"tiny.onnx", "tiny.pte", "tiny_int8.pte", "parity.json"}
    parity = json.loads((out / "parity.json").read_text())
    rows = [r for r in parity["rows"] if r["model"].endswith(".pte")]
    by_file = {name: {r["size"] for r in rows if r["model"] == name} for name in ("tiny.pte", "tiny_int8.pte")}
    # every size of the parity table, odd and non-square ones included: H and W are dynamic
    assert by_file["tiny.pte"] == by_file["tiny_int8.pte"] >= {"394x394", "393x395", "394x300", "64x64"}
    assert parity["passed"] and all(not r["failures"] for r in rows)
    assert {r["precision"] for r in rows} == {"fp32", "int8"}
    assert all(r["provider"].startswith("ExecuTorch") for r in rows)
    int8 = [r for r in rows if r["precision"] == "int8"]
    assert max(abs(r["d_miou"]) for r in int8 if r["d_miou"] is not None) <= 0.005
    assert "tiny.pte" in proc.stdout and "tiny_int8.pte" in proc.stdout
    # X_int8.pte is the candidate (activation observer) with the smallest worst |ΔmIoU| through ExecuTorch
    choice = parity["pte_int8"]
    scores = {k: v["worst_d_miou"] for k, v in choice["candidates"].items()}
    assert set(scores) == {"minmax", "histogram"} and scores[choice["observer"]] == min(scores.values())
    assert all(set(v["d_miou"]) == {"394x394", "256x257", "64x64"} for v in choice["candidates"].values())
    assert f"int8 .pte: chose {choice['observer']}" in proc.stdout
    assert "Failed to load" not in proc.stderr  # torchao's CUDA-library warnings stay quiet


@pytest.mark.slow
@needs_executorch
def test_pte_runs_at_a_size_export_never_saw(pte_export, tiny_checkpoint: Path) -> None:  # noqa: ANN001
    """97x131 is none of the export's sizes: the .pte must still match PyTorch there."""
    import torch

    from edgeseg.model import load_checkpoint
    from edgeseg.runtime.runners import RunnerSpec, open_runner

    out, _ = pte_export
    model, _ = load_checkpoint(tiny_checkpoint)
    x = np.random.default_rng(0).gamma(2.0, 300.0, (1, 1, 97, 131)).astype(np.float32)
    out_ = open_runner(out / "tiny.pte", RunnerSpec("executorch", outputs=("logits", "labels"))).run(x)
    logits, labels = out_["logits"], out_["labels"]
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert logits.shape == ref.shape and labels.shape == (1, 97, 131) and labels.dtype == np.uint8
    assert np.abs(logits - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert (labels == ref.argmax(1)).mean() >= 0.9999


def test_without_executorch_is_one_line_and_writes_nothing(tiny_checkpoint: Path, tmp_path: Path, env_without) -> None:  # noqa: ANN001
    env = env_without(tmp_path / "shim", "executorch")
    proc = edgeseg("export", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--executorch", env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "--executorch needs ExecuTorch" in lines[0] and "pip install 'edgeseg[executorch]'" in lines[0]
    assert not (tmp_path / "o").exists()
