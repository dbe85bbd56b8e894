"""The fault matrix: real commands killed or interrupted mid-run, rerun, and compared with a clean run.

Every case checksums its inputs before and after: nothing edgeseg does may touch them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

EDGESEG = shutil.which("edgeseg", path=str(Path(sys.executable).parent))
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def checksums(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under the roots (a file root counts as itself)."""
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def edgeseg(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([EDGESEG, *args], cwd=cwd, capture_output=True, text=True, env=ONE_THREAD,
                          timeout=timeout)


def kill_when(proc: subprocess.Popen, ready, timeout: float) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; fail if it finished or stalled first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the command finished before it could be killed"
        assert time.time() < deadline, "the command never reached the point to kill it"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "tmp" in p.name or p.name.startswith(".")]


# ----------------------------------------------------------------------------- train


def test_kill_9_mid_train_then_resume_equals_an_uninterrupted_run(tiny_dataset, tmp_path: Path) -> None:
    data, _ = tiny_dataset
    before = checksums(data)
    args = ["train", "--data", str(data), "--epochs", "4", "--patch", "32", "--batch-size", "4", "--seed", "3"]
    clean = edgeseg(*args, "--name", "clean", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr

    proc = subprocess.Popen([EDGESEG, *args, "--name", "killed"], cwd=tmp_path, env=ONE_THREAD,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = tmp_path / "runs" / "killed" / "history.json"
    kill_when(proc, history.exists, timeout=300)
    resumed = edgeseg("train", "--resume", str(tmp_path / "runs" / "killed"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    for name in ("best.pt", "last.pt"):
        a = torch.load(tmp_path / "runs" / "clean" / name, weights_only=True)
        b = torch.load(tmp_path / "runs" / "killed" / name, weights_only=True)
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key, tensor in a["state_dict"].items():
            assert torch.equal(tensor, b["state_dict"][key]), (name, key)  # bit for bit
        strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]]
        assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]
    assert not leftovers(tmp_path / "runs")
    assert checksums(data) == before


# ----------------------------------------------------------------------------- export

EXPORTED = ("tiny.onnx", "tiny_fp16.onnx", "tiny_int8.onnx")


def test_kill_9_mid_export_then_rerun_equals_an_uninterrupted_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "in" / "tiny.pt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_checkpoint, ckpt)
    before = checksums(ckpt, tiny_checkpoint)
    args = ["export", str(ckpt), "--fp16", "--int8", "--calib", "4", "--calib-method", "minmax",
            "--slices", "2", "--size-slices", "1"]
    clean = edgeseg(*args, "--out", str(tmp_path / "clean"), cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([EDGESEG, *args, "--out", str(killed)], cwd=tmp_path, env=ONE_THREAD,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, (killed / "tiny.onnx").exists, timeout=300)  # fp32 written, fp16/int8 still to come
    assert not (killed / "parity.json").exists()
    rerun = edgeseg(*args, "--out", str(killed), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr

    for name in EXPORTED:
        assert (killed / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert (killed / "parity.json").is_file()
    assert not leftovers(killed)
    assert checksums(ckpt, tiny_checkpoint) == before


@pytest.mark.parametrize("blocker", ["file", "under-a-file"])
def test_export_to_an_unwritable_out_fails_before_any_work(tiny_checkpoint: Path, tmp_path: Path,
                                                           blocker: str) -> None:
    (tmp_path / "taken").write_text("not a folder")
    out = tmp_path / "taken" if blocker == "file" else tmp_path / "taken" / "sub"
    before = checksums(tiny_checkpoint)
    r = edgeseg("export", str(tiny_checkpoint), "--out", str(out), "--no-validate", cwd=tmp_path, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and str(out) in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "taken").read_text() == "not a folder"
    assert checksums(tiny_checkpoint) == before
