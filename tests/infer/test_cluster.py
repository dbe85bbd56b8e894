"""Tests for edgeseg.infer.cluster and `edgeseg infer --cluster`: a real Dask LocalCluster of 2 worker
processes, real ONNX Runtime sessions on them, real subprocesses and real kills.

The model is the threshold model of conftest (labels = clip(round(x), 0, 2)). Every cluster
run is compared with a local run of the same inputs: outputs byte for byte, records.jsonl
line for line, summary.csv apart from its timing column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("distributed", reason="the cluster extra is not installed: pip install 'edgeseg[cluster]'")

from edgeseg.errors import EdgesegError  # noqa: E402
from edgeseg.infer.cluster_connect import local_cluster  # noqa: E402
from edgeseg.infer.cluster_tasks import sessions_built  # noqa: E402
from edgeseg.infer.run import InferConfig, run_inference  # noqa: E402
from edgeseg.io.dicom_seg import read_dicom_seg  # noqa: E402

EDGESEG = Path(sys.executable).parent / "edgeseg"  # the console script of this environment


@pytest.fixture(scope="module")
def cluster():  # noqa: ANN201
    """``(address, client)`` of a LocalCluster of 2 worker processes, 1 thread each (the library's)."""
    from distributed import Client

    with local_cluster(2) as lc, Client(lc.scheduler_address) as client:
        yield lc.scheduler_address, client


def npy_slices(root: Path, names: list[str], shape: tuple[int, ...] = (20, 24)) -> None:
    """Class-index intensities with sub-threshold noise, one .npy per name."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        rng = np.random.default_rng(i)
        np.save(root / f"{name}.npy", (rng.integers(0, 3, shape) + rng.uniform(-0.3, 0.3, shape)).astype(np.float32))


def every_format(root: Path, dicom_series_factory) -> None:  # noqa: ANN001
    """npy slices and a stack, PNG, TIFF, NIfTI, a DICOM series and a bad file."""
    npy_slices(root, [f"s{i}" for i in range(4)])
    npy_slices(root / "sub", ["stack"], (3, 20, 24))
    lab = np.random.default_rng(7).integers(0, 3, (18, 30)).astype(np.uint8)
    Image.fromarray(lab).save(root / "gray.png")
    Image.fromarray(np.repeat(lab[..., None], 3, 2)).save(root / "colour.tif")
    vol = np.random.default_rng(8).integers(0, 3, (20, 17, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.5, 2.0, 1.0])), root / "sub" / "vol.nii.gz")
    dicom_series_factory(root / "patient" / "series1", slopes=[(0.01, 0.0)] * 4)
    (root / "bad.npy").write_bytes(b"not an array")


def outputs(out: Path) -> dict[str, str]:
    """SHA-256 of every output file (summary.csv and records.jsonl compared apart).

    A DICOM SEG gets a content time on every write, by design: it is compared by the SHA-256 of
    its decoded labels instead of its bytes, and a DICOM SR by its content without its times.
    """
    from edgeseg.names import SEG_SUFFIX, SR_SUFFIX

    def digest(p: Path) -> str:
        if p.name.endswith(SEG_SUFFIX):
            return hashlib.sha256(read_dicom_seg(p)[0].tobytes()).hexdigest()
        return hashlib.sha256(sr_content(p) if p.name.endswith(SR_SUFFIX) else p.read_bytes()).hexdigest()

    return {
        str(p.relative_to(out)): digest(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("summary.csv", "records.jsonl")
    }


def sr_content(path: Path) -> bytes:
    """A DICOM SR without what changes with the moment it was written (its times)."""
    import pydicom

    ds = pydicom.dcmread(path)
    for keyword in ("InstanceCreationTime", "InstanceCreationDate", "ContentTime", "ContentDate"):
        ds.pop(keyword, None)
    ds.pop("ContributingEquipmentSequence", None)  # holds the time it was made
    return ds.to_json().encode()


def records(out: Path) -> list[dict]:
    """records.jsonl, sorted by output (a cluster finishes in its own order); SEG hashes and each
    run's own time in the model (``ms``) left out."""
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("ms", None)
        if row["output"].endswith(("_seg.dcm", "_sr.dcm")):
            row.pop("sha256", None)
    return sorted(rows, key=lambda r: r["output"])


def summary(out: Path) -> list[dict]:
    """summary.csv rows in file order, without the timing column."""
    with open(out / "summary.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "ms"} for row in csv.DictReader(f)]


def assert_same_run(out: Path, local: Path, rows: bool = True) -> None:
    assert outputs(out) == outputs(local)
    assert records(out) == records(local)
    if rows:
        assert summary(out) == summary(local)
    assert not [p for p in out.rglob(".*")], "a temp or lock file was left"


def test_cluster_run_equals_a_local_run(
    tmp_path: Path, threshold_onnx: Path, cluster, dicom_series_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every format, a bad file and relative input paths (workers run elsewhere): byte for byte."""
    address, client = cluster
    every_format(tmp_path / "in", dicom_series_factory)
    monkeypatch.chdir(tmp_path)  # relative inputs: the workers' working directory is not ours
    base = InferConfig(model=threshold_onnx, overlay=True, quiet=True)
    local = run_inference([Path("in")], replace(base, out=tmp_path / "local"))
    report = run_inference([Path("in")], replace(base, out=tmp_path / "out", cluster=address))
    assert (report.done, report.failed, report.skipped) == (local.done, local.failed, 0) == (9, 1, 0)
    assert report.slices == local.slices
    assert_same_run(tmp_path / "out", tmp_path / "local")
    failed = [r for r in summary(tmp_path / "out") if r["status"] == "failed"]
    assert [r["input"] for r in failed] == [str(Path("in") / "bad.npy")]
    assert failed[0]["message"].startswith(f"{Path('in') / 'bad.npy'}: ")
    # Each worker built one session for all its scans, and never imported torch.
    assert set(client.run(sessions_built).values()) <= {0, 1}
    assert sum(client.run(sessions_built).values()) >= 1
    assert not any(client.run(lambda: "torch" in sys.modules).values())
    again = run_inference([Path("in")], replace(base, out=tmp_path / "out", cluster=address))
    assert (again.done, again.skipped, again.failed) == (0, 9, 1)


def reader_pid(fifo: Path, pids: list[int]) -> int | None:
    """The pid among ``pids`` that has ``fifo`` open, else None."""
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir() if fds.is_dir() else ():
            try:
                if os.readlink(fd) == str(fifo):
                    return pid
            except OSError:
                continue
    return None


def hold_fifo(fifo: Path, deadline: float) -> int:
    """Open ``fifo`` for writing once a reader has it open; the reader then waits for data."""
    while time.time() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody is reading it yet
            time.sleep(0.05)
    raise AssertionError(f"nobody opened {fifo}")


def test_a_killed_worker_s_scan_is_retried_elsewhere(tmp_path: Path, threshold_onnx: Path, cluster) -> None:
    """SIGKILL the worker that is reading a scan (a FIFO stalls it there): the run still
    finishes every scan once, and equals a local run byte for byte."""
    address, client = cluster
    src = tmp_path / "in"
    npy_slices(src, [f"a{i}" for i in range(6)] + [f"z{i}" for i in range(3)])
    stall = src / "m_stall.npy"
    os.mkfifo(stall)
    config = InferConfig(model=threshold_onnx, out=tmp_path / "out", quiet=True, cluster=address)
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(report=run_inference([src], config)))
    run.start()
    writer = hold_fifo(stall, time.time() + 120)
    pids = list(client.run(os.getpid).values())
    victim = reader_pid(stall, pids)
    assert victim is not None, "no worker is reading the stalled scan"
    npy_slices(tmp_path / "real", ["m_stall"])  # what the retry will read instead
    os.replace(tmp_path / "real" / "m_stall.npy", stall)
    os.kill(victim, signal.SIGKILL)
    os.close(writer)
    run.join(180)
    assert not run.is_alive(), "the cluster run did not finish after a worker was killed"
    report = result["report"]
    assert (report.done, report.failed, report.skipped) == (10, 0, 0)
    assert victim not in client.run(os.getpid).values()
    local = run_inference([src], InferConfig(model=threshold_onnx, out=tmp_path / "local", quiet=True))
    assert local.done == 10
    assert_same_run(tmp_path / "out", tmp_path / "local")


def test_killed_client_then_rerun_resumes(tmp_path: Path, threshold_onnx: Path, env_without) -> None:
    """The real CLI with --cluster local:2 and torch unimportable: two FIFOs stall both workers
    after a0..a3, SIGKILL the client there; its workers exit with it; the rerun does the rest."""
    import psutil

    src, out = tmp_path / "in", tmp_path / "out"
    npy_slices(src, [f"a{i}" for i in range(4)] + [f"z{i}" for i in range(4)])
    stalls = [src / "m_stall1.npy", src / "m_stall2.npy"]
    for fifo in stalls:
        os.mkfifo(fifo)
    env = env_without(tmp_path / "shim", "torch")  # the infer path, workers included, is torch-free
    cmd = [str(EDGESEG), "infer", str(src), "--model", str(threshold_onnx), "--out", str(out), "--cluster", "local:2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        writers = [hold_fifo(fifo, time.time() + 120) for fifo in stalls]  # both workers stuck
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    for fd in writers:
        os.close(fd)
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"worker processes outlived their client: {alive}"
    assert sorted(p.name for p in out.glob("*_seg.npy")) == [f"a{i}_seg.npy" for i in range(4)]
    assert not (out / "summary.csv").exists()
    for fifo in stalls:  # the stalled scans become real ones for the rerun
        fifo.unlink()
    npy_slices(src, [f.stem for f in stalls])
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "6 done, 0 failed, 4 skipped" in rerun.stdout, rerun.stdout
    local = run_inference([src], InferConfig(model=threshold_onnx, out=tmp_path / "local", quiet=True))
    assert local.done == 10
    assert_same_run(out, tmp_path / "local", rows=False)  # the killed run wrote no timings to keep


def test_ctrl_c_in_the_terminal_is_one_line_and_leaves_nothing(tmp_path: Path, threshold_onnx: Path) -> None:
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) while a worker is
    stalled: the client alone reports, exit 130, summary.csv has what it says, no worker is
    left, and the rerun does the rest."""
    import psutil

    src, out = tmp_path / "in", tmp_path / "out"
    npy_slices(src, [f"a{i}" for i in range(3)])
    os.mkfifo(src / "m_stall.npy")
    cmd = [str(EDGESEG), "infer", str(src), "--model", str(threshold_onnx), "--out", str(out), "--cluster", "local:2"]
    proc = subprocess.Popen(
        [*cmd, "--cluster-timeout", "3"],  # how long it waits for the stalled task before it lets go of --out
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        writer = hold_fifo(src / "m_stall.npy", time.time() + 120)
        deadline = time.time() + 60
        while len(list(out.glob("a*_seg.npy"))) < 3 and time.time() < deadline:
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    os.close(writer)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    finished = re.fullmatch(
        r"interrupted: (\d) scan\(s\) finished in this run, 0 were already done, 0 failed,"
        r" of 4; finished outputs are complete and summary\.csv is written; rerun the same"
        r" command to do the rest",
        lines[0],
    )
    assert finished, stderr
    rows = {r["output"] for r in csv.DictReader(open(out / "summary.csv"))}
    assert len(rows) == int(finished[1]) and rows <= {f"a{i}_seg.npy" for i in range(3)}
    assert not [p for p in out.rglob(".*")], "a temp or lock file was left"
    assert not psutil.wait_procs(workers, timeout=30)[1], "worker processes outlived their client"
    (src / "m_stall.npy").unlink()
    npy_slices(src, ["m_stall"])
    rerun = subprocess.run(
        [str(EDGESEG), "infer", str(src), "--model", str(threshold_onnx), "--out", str(out), "--cluster", "local:2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0 and "1 done, 0 failed, 3 skipped" in rerun.stdout, rerun.stderr


def test_when_no_worker_can_run_the_job_the_run_stops_in_one_line(
    tmp_path: Path, threshold_onnx: Path, cluster, gpu_here: bool
) -> None:
    """--provider cuda on CPU-only workers: each worker's session fails; the first is named as it
    fails (its scans went to the other), the last stops the run in one line naming both; exit 1,
    nothing written."""
    if gpu_here:
        pytest.skip("CUDA works here; the no-GPU error path cannot be shown")
    npy_slices(tmp_path / "in", ["a", "b"])
    proc = subprocess.run(
        [
            str(EDGESEG),
            "infer",
            str(tmp_path / "in"),
            "--model",
            str(threshold_onnx),
            "--out",
            str(tmp_path / "out"),
            "--provider",
            "cuda",
            "--cluster",
            cluster[0],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    workers = sorted(cluster[1].nthreads())
    error = f"error: --cluster {cluster[0]}: no Dask worker can run edgeseg's tasks ({', '.join(workers)}: "
    assert lines[-1].startswith(error), proc.stderr
    assert "CUDAExecutionProvider cannot run here" in lines[-1] and "rerun the same command" in lines[-1]
    assert all(line.startswith("warning: Dask worker tcp://") for line in lines[:-1]) and len(lines) <= 2, proc.stderr
    assert not list((tmp_path / "out").glob("*_seg.npy"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line(tmp_path: Path, threshold_onnx: Path) -> None:
    npy_slices(tmp_path / "in", ["a"])
    address = f"tcp://127.0.0.1:{closed_port()}"
    proc = subprocess.run(
        [
            str(EDGESEG),
            "infer",
            str(tmp_path / "in"),
            "--model",
            str(threshold_onnx),
            "--out",
            str(tmp_path / "out"),
            "--cluster",
            address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --cluster {address}: no Dask scheduler"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_without_the_extra_cluster_is_one_line(tmp_path: Path, threshold_onnx: Path, env_without) -> None:
    npy_slices(tmp_path / "in", ["a"])
    proc = subprocess.run(
        [
            str(EDGESEG),
            "infer",
            str(tmp_path / "in"),
            "--model",
            str(threshold_onnx),
            "--out",
            str(tmp_path / "out"),
            "--cluster",
            "local:2",
        ],
        env=env_without(tmp_path / "shim", "distributed"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: --cluster needs Dask distributed, which the core install leaves out: pip install 'edgeseg[cluster]'"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["local:0", "local:two", "local:-1"])
def test_bad_local_spec_is_one_error(tmp_path: Path, threshold_onnx: Path, spec: str) -> None:
    npy_slices(tmp_path / "in", ["a"])
    with pytest.raises(EdgesegError, match=rf"^--cluster {spec}: expected local:N with N >= 1"):
        run_inference([tmp_path / "in"], InferConfig(model=threshold_onnx, out=tmp_path / "out", cluster=spec))
    assert not (tmp_path / "out").exists()
