"""Faults of `edgeseg infer --cluster` (issue 25): each is one line and a clear exit, never a hang.

Real `dask scheduler` and `dask worker` processes on 127.0.0.1 (or the library's LocalCluster),
the real `edgeseg` console script, real SIGKILLs; FIFOs stall a worker exactly where a test needs
it. Waits use a short --cluster-timeout, so the tests stay fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="the cluster extra is not installed: pip install 'edgeseg[cluster]'")

from test_cluster import assert_same_run, closed_port, hold_fifo, npy_slices, reader_pid, summary  # noqa: E402

from edgeseg.infer.run import InferConfig, run_inference  # noqa: E402

BIN = Path(sys.executable).parent
EDGESEG = BIN / "edgeseg"


@contextmanager
def scheduler() -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `dask scheduler` on 127.0.0.1 (dashboard off); ``(address, process)``."""
    port = closed_port()
    proc = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"tcp://127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait(30)


def start_worker(address: str, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A real `dask worker` process (no nanny: a SIGKILL is a death, not a restart), 1 thread."""
    cmd = [str(BIN / "dask"), "worker", address, "--name", name, "--nthreads", "1", "--no-nanny"]
    cmd += ["--host", "127.0.0.1", "--no-dashboard"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def worker_addresses(address: str, names: list[str], timeout: float = 60) -> dict[str, str]:
    """Wait until the workers ``names`` are with the scheduler; name -> address."""
    from distributed import Client

    with Client(address, timeout="10s") as client:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
            if set(names) <= set(found):
                return {n: found[n] for n in names}
            time.sleep(0.2)
    raise AssertionError(f"workers {names} never joined {address}")


def reader(fifo: Path, pids: list[int], timeout: float = 10) -> int | None:
    """The pid among ``pids`` reading ``fifo``, waited for: hold_fifo returns while its open() may still run."""
    deadline = time.time() + timeout
    while (pid := reader_pid(fifo, pids)) is None and time.time() < deadline:
        time.sleep(0.05)
    return pid


def infer_cmd(src: Path, model: Path, out: Path, cluster: str, *extra: str) -> list[str]:
    return [str(EDGESEG), "infer", str(src), "--model", str(model), "--out", str(out), "--cluster", cluster, *extra]


def start_infer(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def error_lines(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert not any("Traceback" in line for line in lines), stderr
    return lines


def test_a_scheduler_without_workers_is_one_line_within_the_timeout(tmp_path: Path, threshold_onnx: Path) -> None:
    npy_slices(tmp_path / "in", ["a"])
    with scheduler() as (address, _):
        start = time.monotonic()
        proc = subprocess.run(
            infer_cmd(tmp_path / "in", threshold_onnx, tmp_path / "out", address, "--cluster-timeout", "2"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1 and time.monotonic() - start < 60
    assert error_lines(proc.stderr) == [
        f"error: --cluster {address}: the scheduler has no workers after 2 s; start some with `dask worker {address}`"
    ]


def test_every_worker_killed_mid_run_is_one_line(tmp_path: Path, threshold_onnx: Path) -> None:
    """SIGKILL the only worker while it reads a scan: no hang, one line after --cluster-timeout, exit 1."""
    src, out = tmp_path / "in", tmp_path / "out"
    npy_slices(src, ["a0", "a1"])
    os.mkfifo(src / "m_stall.npy")
    with scheduler() as (address, _):
        worker = start_worker(address, "only")
        worker_addresses(address, ["only"])
        proc = start_infer(infer_cmd(src, threshold_onnx, out, address, "--cluster-timeout", "2"))
        try:
            writer = hold_fifo(src / "m_stall.npy", time.time() + 60)
            assert reader(src / "m_stall.npy", [worker.pid]) == worker.pid
            worker.kill()
            start = time.monotonic()
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
            worker.kill()
        os.close(writer)
    assert proc.returncode == 1 and time.monotonic() - start < 60
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: --cluster {address}: no Dask worker for 2 s"), stderr
    assert "rerun the same command" in lines[0]
    assert (out / "summary.csv").is_file() and not list(out.glob(".*"))


def test_the_only_worker_without_edgeseg_is_named_in_one_line(
    tmp_path: Path, threshold_onnx: Path, env_without
) -> None:
    """A worker whose Python lacks the edgeseg package (it would die unpickling our task): named, exit 1."""
    npy_slices(tmp_path / "in", ["a"])
    with scheduler() as (address, _):
        worker = start_worker(address, "bare", env_without(tmp_path / "shim", "edgeseg"))
        try:
            bare = worker_addresses(address, ["bare"])["bare"]
            proc = subprocess.run(
                infer_cmd(tmp_path / "in", threshold_onnx, tmp_path / "out", address, "--cluster-timeout", "2"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert worker.poll() is None, "the worker died instead of being left alone"
        finally:
            worker.kill()
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: --cluster {address}: no Dask worker can run edgeseg's tasks ({bare}: ")
    assert "edgeseg cannot be imported there" in lines[0] and "install edgeseg[cluster]" in lines[0]
    assert not list((tmp_path / "out").glob("*_seg.npy"))


def test_unfit_workers_are_named_and_their_scans_move_to_a_healthy_one(
    tmp_path: Path, threshold_onnx: Path, env_without
) -> None:
    """Three workers: one without edgeseg, one whose ONNX Runtime cannot load the model, one healthy.
    Both bad ones are named with their reason, and every scan is done by the healthy one, as a local run."""
    src, out = tmp_path / "in", tmp_path / "out"
    npy_slices(src, [f"s{i}" for i in range(8)])
    with scheduler() as (address, _):
        workers = [
            start_worker(address, "bare", env_without(tmp_path / "shim1", "edgeseg")),
            start_worker(address, "no-ort", env_without(tmp_path / "shim2", "onnxruntime")),
            start_worker(address, "good"),
        ]
        try:
            names = worker_addresses(address, ["bare", "no-ort", "good"])
            proc = subprocess.run(
                infer_cmd(src, threshold_onnx, out, address, "--cluster-timeout", "5"),
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            for worker in workers:
                worker.kill()
    assert proc.returncode == 0, proc.stderr
    lines = error_lines(proc.stderr)
    warned = {line.split()[3]: line for line in lines if line.startswith("warning: Dask worker ")}
    assert set(warned) == {names["bare"], names["no-ort"]}, proc.stderr
    assert "edgeseg cannot be imported there" in warned[names["bare"]]
    assert "onnxruntime" in warned[names["no-ort"]] and "its scans go to the other workers" in warned[names["no-ort"]]
    assert "8 done, 0 failed" in proc.stdout
    local = run_inference([src], InferConfig(model=threshold_onnx, out=tmp_path / "local", quiet=True))
    assert local.done == 8
    assert_same_run(out, tmp_path / "local", rows=False)


def listening(pids: list[int]) -> list[tuple[int, str]]:
    """(pid, ip) of every listening TCP socket of ``pids``."""
    import psutil

    found = []
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                found.append((pid, conn.laddr.ip))
    return found


def test_a_local_cluster_listens_on_loopback_only(tmp_path: Path, threshold_onnx: Path) -> None:
    """While a --cluster local:2 run is stalled mid-scan, every listening socket of the client and its
    worker processes (scheduler, dashboard, workers, nannies) is on 127.0.0.1."""
    import psutil

    src, out = tmp_path / "in", tmp_path / "out"
    npy_slices(src, ["a"])
    os.mkfifo(src / "m_stall.npy")
    proc = start_infer(infer_cmd(src, threshold_onnx, out, "local:2", "--cluster-timeout", "2"))
    try:
        writer = hold_fifo(src / "m_stall.npy", time.time() + 120)
        pids = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        sockets = listening(pids)
        npy_slices(tmp_path / "real", ["m_stall"])  # what the stalled read goes on with
        os.replace(tmp_path / "real" / "m_stall.npy", src / "m_stall.npy")
        os.close(writer)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert len([pid for pid, _ in sockets if pid == proc.pid]) >= 2, sockets  # scheduler and dashboard
    assert len({pid for pid, _ in sockets}) >= 3, sockets  # and the worker processes
    assert {ip for _, ip in sockets} <= {"127.0.0.1"}, sockets


@pytest.mark.parametrize("fault", ["scheduler-killed", "ctrl-c"])
def test_no_writes_after_the_client_lets_go_of_out(tmp_path: Path, threshold_onnx: Path, fault: str) -> None:
    """A worker stalled mid-scan outlives its client (the scheduler SIGKILLed: one line, no Dask
    traceback; or Ctrl-C: cancelled, waited for up to --cluster-timeout). Once the client has
    released --out, the stalled scan goes on and finishes its read on that worker, but writes no
    output and no record; the rerun does it."""
    src, out = tmp_path / "in", tmp_path / "out"
    npy_slices(src, ["a0", "a1"])
    stall = src / "m_stall.npy"
    os.mkfifo(stall)
    with scheduler() as (address, sched):
        worker = start_worker(address, "w")
        try:
            worker_addresses(address, ["w"])
            proc = start_infer(infer_cmd(src, threshold_onnx, out, address, "--cluster-timeout", "2"))
            try:
                writer = hold_fifo(stall, time.time() + 60)
                if fault == "ctrl-c":
                    proc.send_signal(signal.SIGINT)
                else:
                    sched.kill()
                _, stderr = proc.communicate(timeout=60)
            finally:
                proc.kill()
            assert not (out / ".edgeseg.lock").exists(), "the client left its lock"
            assert reader(stall, [worker.pid]) == worker.pid, "the stalled task did not outlive its client"
            npy_slices(tmp_path / "real", ["m_stall"])  # what the stalled task reads once it goes on
            os.replace(tmp_path / "real" / "m_stall.npy", stall)
            os.close(writer)
            deadline = time.time() + 30
            while reader_pid(stall, [worker.pid]) and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(3)  # ample for a 20x24 slice to be segmented and written, were it allowed
        finally:
            worker.kill()
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    if fault == "ctrl-c":
        assert proc.returncode == 130 and lines[0].startswith("interrupted: "), stderr
    else:
        assert proc.returncode == 1, stderr
        assert lines[0].startswith(f"error: --cluster {address}: the Dask scheduler at {address} was lost;")
        assert lines[0].endswith("rerun the same command to resume"), stderr
    assert not (out / "m_stall_seg.npy").exists() and not (out / "m_stall_stats.json").exists()
    written = [json.loads(line)["output"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert not [name for name in written if name.startswith("m_stall")], written
    rerun = subprocess.run(infer_cmd(src, threshold_onnx, out, "local:1"), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and "1 done, 0 failed, 2 skipped" in rerun.stdout, rerun.stderr


def test_backend_openvino_reaches_the_workers(tmp_path: Path, threshold_onnx: Path) -> None:
    """--backend openvino --cluster local:2: every scan ran on OpenVINO, as a local --backend openvino run."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    src = tmp_path / "in"
    npy_slices(src, [f"s{i}" for i in range(4)])
    base = InferConfig(model=threshold_onnx, quiet=True, backend="openvino")
    report = run_inference([src], InferConfig(**{**base.__dict__, "out": tmp_path / "out", "cluster": "local:2"}))
    local = run_inference([src], InferConfig(**{**base.__dict__, "out": tmp_path / "local"}))
    assert report.done == local.done == 4
    providers = {row["provider"] for row in summary(tmp_path / "out")}
    assert len(providers) == 1 and "openvino" in providers.pop().lower(), summary(tmp_path / "out")
    assert summary(tmp_path / "out") == summary(tmp_path / "local")
    assert_same_run(tmp_path / "out", tmp_path / "local")
