"""Fault matrix, round two (issue 21, cases 8-10): empty paths, a full disk, SIGTERM and
repeated Ctrl-C, and the backend line of a non-fp32 model.

Like tests/cli/test_faults.py, every case runs the installed `edgeseg` console script in a
subprocess and reuses that file's helpers; the model is conftest's threshold model
(labels = clip(round(x), 0, 2)), so every expected output is known. The full disk is a real
one: a small tmpfs mounted as --out (this needs root; the test skips where mount is refused).
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from test_faults import edgeseg, slices, stalled_run, stderr_lines, unstall


def infer(src: Path, out: Path, model: Path, *extra: str | Path) -> subprocess.CompletedProcess:
    return edgeseg("infer", src, "--model", model, "--out", out, *extra)


# --- case 8: an empty path (an unset variable) ---------------------------------------------
EMPTY = [  # (arguments, what the line names)
    (("infer", "in", "--out", ""), "--out"),
    (("infer", "in", "--out="), "--out"),
    (("infer", "in", "--model", "", "--out", "o"), "--model"),
    (("infer", "--overwrite", ""), "an argument"),  # an empty scan after a flag
    (("data", "example", "--out", ""), "--out"),
    (("data", "demo", "--out", ""), "--out"),
    (("export", "--out", ""), "--out"),
    (("train", "--runs-dir", ""), "--runs-dir"),
    (("evaluate", "--per-slice", ""), "--per-slice"),
    (("bench", "--json", ""), "--json"),
    (("validate", ""), "an argument"),
    (("triton", "m.onnx", "--out", ""), "--out"),
]


@pytest.mark.parametrize(("args", "named"), EMPTY, ids=[" ".join(a) for a, _ in EMPTY])
def test_an_empty_path_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], named: str
) -> None:
    """Python reads "" as the current folder: `--out ""` wrote every output there and exited 0."""
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", np.ones((20, 20), np.float32))
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    proc = edgeseg(*args)
    lines = stderr_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {named} is empty") and f"'edgeseg {args[0]}" in lines[0], lines[0]
    assert sorted(tmp_path.rglob("*")) == before, "something was written"


# --- case 10: the backend line names the file's real precision ------------------------------
@pytest.mark.parametrize("precision", ["fp16", "int8", "fp32"])
def test_backend_line_names_the_models_own_precision(tmp_path: Path, threshold_onnx_factory, precision: str) -> None:
    """`--model X_int8.onnx` (no deploy file) said `backend: ONNX Runtime fp32`."""
    model = threshold_onnx_factory(tmp_path / f"m_{precision}.onnx", metadata={"edgeseg.precision": precision})
    src = tmp_path / "in"
    slices(src, 1)
    proc = infer(src, tmp_path / "out", model)
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("backend:")]
    assert line.startswith(f"backend: ONNX Runtime {precision} (no deploy file)"), line
    assert not [other for other in ("fp16", "int8", "fp32") if other != precision and other in line], line


# --- case 9: a full disk ----------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    """A 700 kB tmpfs (a real file system that fills up), and a function that resizes it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the disk-full test needs root")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def noisy_slices(root: Path, n: int) -> dict[str, np.ndarray]:
    """``n`` .npy stacks (4x160x160, incompressible overlays); returns output name -> expected labels."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    want = {}
    for i in range(n):
        arr = (rng.integers(0, 3, (4, 160, 160)) + rng.uniform(-0.3, 0.3, (4, 160, 160))).astype(np.float32)
        np.save(root / f"s{i}.npy", arr)
        want[f"s{i}_seg.npy"] = np.clip(np.round(arr), 0, 2).astype(np.uint8)
    return want


def test_disk_full_stops_in_one_line_and_leaves_nothing_orphaned(
    tmp_path: Path, threshold_onnx: Path, small_disk
) -> None:
    """It said `OSError: 931416 requested and 319360 written` per scan, and left a _stats.json
    (and overlay) beside no labels. Now: the scans that fit are complete, the one that did not
    fit has no file at all, the run stops with one line, and a rerun with space does the rest."""
    out, resize = small_disk
    want = noisy_slices(tmp_path / "in", 8)
    proc = infer(tmp_path / "in", out, threshold_onnx, "--overlay")
    lines = stderr_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "the disk is full" in lines[0] and "rerun the same command" in lines[0], lines[0]
    assert "OSError" not in proc.stderr and "requested and" not in proc.stderr

    rows = list(csv.DictReader(open(out / "summary.csv")))
    done = {r["output"] for r in rows if r["status"] == "done"}
    failed = [r for r in rows if r["status"] == "failed"]
    assert done and failed and len(done) + len(failed) < len(want), rows  # stopped before the end
    assert all("the disk is full" in r["message"] and not r["output"] for r in failed), failed
    assert f"{len(done)} scan(s) finished in this run" in lines[0]
    names = {p.name for p in out.iterdir()}  # hidden ones too: temps, the lock
    scans = [{f"s{i}_seg.npy", f"s{i}_overlay.png", f"s{i}_stats.json"} for i in range(len(want))]
    for mine in scans:  # a scan has all of its outputs, or none
        assert mine <= names if mine & done else not mine & names, (mine, sorted(names))
    assert names - set().union(*scans) == {"records.jsonl", "summary.csv"}, "a temp or lock file was left"
    recorded = {json.loads(line)["output"] for line in (out / "records.jsonl").read_text().splitlines()}
    assert recorded <= names, recorded - names  # no record of an output that does not exist
    for name in done:
        assert np.array_equal(np.load(out / name), want[name])

    resize("8m")
    rerun = infer(tmp_path / "in", out, threshold_onnx, "--overlay")
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(want) - len(done)} done, 0 failed, {len(done)} skipped" in rerun.stdout, rerun.stdout
    for name, labels in want.items():
        assert np.array_equal(np.load(out / name), labels)


# --- case 9: SIGTERM and repeated Ctrl-C ----------------------------------------------------
def stalled(tmp_path: Path, model: Path) -> tuple[Path, Path, subprocess.Popen]:
    """A run whose FIFO ``m_stall.npy`` holds it after a0..a2 are written (see test_faults)."""
    src, out = tmp_path / f"in-{uuid.uuid4().hex[:6]}", tmp_path / f"out-{uuid.uuid4().hex[:6]}"
    src.mkdir()
    for name in ("a0", "a1", "a2", "z0"):
        np.save(src / f"{name}.npy", np.ones((20, 20), np.float32))
    return src, out, stalled_run(src, out, model, finished=3)


def summary_outputs(out: Path) -> set[str]:
    return {r["output"] for r in csv.DictReader(open(out / "summary.csv"))}


def test_sigterm_is_handled_as_ctrl_c(tmp_path: Path, threshold_onnx: Path) -> None:
    """SIGTERM (systemd, docker stop, a batch queue) killed it silently with exit 143 and no summary.csv."""
    src, out, proc = stalled(tmp_path, threshold_onnx)
    proc.send_signal(signal.SIGTERM)
    _, stderr = unstall(src, proc)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 143 and len(lines) == 1, stderr
    assert lines[0].startswith("terminated (SIGTERM): 3 scan(s) finished in this run"), lines[0]
    assert "summary.csv is written" in lines[0] and "rerun the same command" in lines[0]
    assert summary_outputs(out) == {"a0_seg.npy", "a1_seg.npy", "a2_seg.npy"}
    assert not [p for p in out.rglob(".*")], "a temp or lock file was left"
    rerun = infer(src, out, threshold_onnx)
    assert rerun.returncode == 0 and "1 done, 0 failed, 3 skipped" in rerun.stdout, rerun.stderr


@pytest.mark.parametrize("try_", range(5))
def test_repeated_ctrl_c_prints_one_line_and_no_traceback(tmp_path: Path, threshold_onnx: Path, try_: int) -> None:
    """Ctrl-C pressed three times printed a 6-line `threading._shutdown` traceback 1 time in 5:
    the later presses landed in the cleanup, or in Python's join of the reader thread at exit.
    Odd tries press again only once summary.csv is written (the process is on its way out,
    still joining the reader stalled on the FIFO: the old race, every time); even tries press
    three times at once."""
    src, out, proc = stalled(tmp_path, threshold_onnx)
    proc.send_signal(signal.SIGINT)
    if try_ % 2:
        deadline = time.monotonic() + 60  # a bound against hanging, not a timing assertion
        while not (out / "summary.csv").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no summary.csv after Ctrl-C"
            time.sleep(0.02)
        time.sleep(0.2)  # past the final line, into the exit
    for _ in range(2):
        proc.send_signal(signal.SIGINT)
    _, stderr = unstall(src, proc)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, stderr
    assert lines[0].startswith("interrupted: 3 scan(s) finished in this run"), lines[0]
    assert summary_outputs(out) == {"a0_seg.npy", "a1_seg.npy", "a2_seg.npy"}
    assert not [p for p in out.rglob(".*")], "a temp or lock file was left"
