"""The worker side of `edgeseg infer --cluster`: the tasks a Dask worker runs, and its cached runner.

A task is infer's own per-scan function (``Segmenter.process``: read, segment, write
atomically, record) on one runner per worker process, built on its first scan and reused,
keyed by the model file's path, size and mtime and by the session options. Its intra-op
threads are ``--threads``, else the worker's cores divided by the Dask threads on its host,
so that N workers on one machine do not oversubscribe it. A worker writes nothing once the
client no longer holds the ``--out`` lock: each output and its record line check it first.

Split from :mod:`edgeseg.infer.cluster` (the client), which sends these functions: Dask workers
unpickle a task function by its module path, so they stay top-level here, and this module
imports nothing of the client's.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeseg.artifacts import read_model_info
from edgeseg.errors import EdgesegError
from edgeseg.infer.cluster_connect import cores
from edgeseg.infer.config import InferConfig, Segmented, choose_runner
from edgeseg.infer.segment import Segmenter
from edgeseg.io.records import LOCK, Record, Records
from edgeseg.io.scan_files import Scan
from edgeseg.io.scan_rows import reason
from edgeseg.runtime.runners import open_runner


@dataclass(frozen=True)
class Job:
    """What every task of one run needs besides its scan (sent with each task; small)."""

    model: Path  # absolute
    model_stamp: tuple[int, int]  # size and mtime_ns: a changed file gets a new session
    config: InferConfig  # quiet, cluster None: as a worker runs it
    out: Path  # absolute
    host_threads: dict[str, int]  # Dask threads per worker host when the run started
    token: str = ""  # this run's: its running tasks are counted under it
    lock: tuple[int, bytes] = (0, b"")  # inode and content of the client's --out lock file


@dataclass
class Outcome:
    """A task's answer: the scan segmented and written, or why not."""

    done: Segmented | None
    reason: str = ""
    unfit: str = ""  # the worker's address when it, not the scan, was the problem


_RUNNERS: dict[tuple, Segmenter] = {}  # per worker process: one per (model version, options, --out)
_SESSIONS: dict[tuple, tuple[Any, str, Path]] = {}  # per worker process: (session, provider, model file)
_LOCK = threading.Lock()  # a worker may run several tasks at once
_ACTIVE: dict[str, int] = {}  # tasks running now, per run token


def check_worker(job: Job) -> str:
    """Run on each worker before its first task: why it cannot run ``job`` ("" if it can)."""
    if not job.model.is_file():
        return f"{job.model}: model not found there; the workers must see it at the same path"
    if not job.out.is_dir():
        return f"--out {job.out}: not found there; the workers must see it at the same path"
    return ""


def running_tasks(token: str) -> int:
    """How many tasks of the run ``token`` this worker process is running."""
    return _ACTIVE.get(token, 0)


def process_scan(scan: Scan, job: Job) -> Outcome:
    """The task: infer's per-scan function on this worker's cached runner.

    A bad scan is an :class:`Outcome` with its reason, as in a local run; a worker that
    cannot load the model or see ``--out`` answers with its address in ``unfit``.
    """
    from distributed import get_worker

    with _LOCK:
        _ACTIVE[job.token] = _ACTIVE.get(job.token, 0) + 1
    try:
        try:
            runner = _worker_runner(job)
        except Exception as exc:  # this worker, not the scan: the client sends it elsewhere
            return Outcome(None, reason(exc), unfit=get_worker().address)
        with warnings.catch_warnings():
            warnings.showwarning = runner.warned  # a reader's warning becomes a note of its scan
            try:
                return Outcome(runner.process(scan))
            except Exception as exc:  # any bad scan: its row says why, and the run goes on
                return Outcome(None, reason(exc))
    finally:
        with _LOCK:
            _ACTIVE[job.token] -= 1


def _worker_runner(job: Job) -> Segmenter:
    """This worker's runner for ``job``, built on its first scan (one session per worker)."""
    config = job.config
    session_key = (
        job.model,
        job.model_stamp,
        config.backend,
        config.provider,
        config.threads,
        config.batch_size,
        tuple(sorted(job.host_threads.items())),
    )
    key = (session_key, repr(config), job.out, job.lock)
    with _LOCK:
        if key not in _RUNNERS:
            if not job.out.is_dir():
                raise EdgesegError(
                    f"--out {job.out}: not found on this Dask worker; the workers must"
                    " see the scans, the model and --out at the same paths"
                )
            if session_key not in _SESSIONS:
                _SESSIONS.clear()  # one model at a time: free the last one's memory
                _SESSIONS[session_key] = _build_session(job)
            session, provider, path = _SESSIONS[session_key]
            _RUNNERS.clear()
            runner = _WorkerSegmenter(session, provider, read_model_info(path), config, job.out, job.lock)
            runner.progress = runner._progress(0)  # quiet: never drawn
            _RUNNERS[key] = runner
        return _RUNNERS[key]


def _build_session(job: Job) -> tuple[Any, str, Path]:
    """The runner ``--backend`` picks on this worker, as a local run on this machine would."""
    from distributed import get_worker
    from distributed.comm.addressing import get_address_host

    host = get_address_host(get_worker().address)
    path, spec, _ = choose_runner(job.model, job.config)
    threads = spec.threads or max(1, cores() // job.host_threads.get(host, 1))
    net = open_runner(path, replace(spec, threads=threads))
    _BUILT.append(path)
    return net, net.label_so_far, path


class _WorkerSegmenter(Segmenter):
    """A worker's Segmenter: writes nothing once the client no longer holds the ``--out`` lock."""

    def __init__(self, session: Any, provider: str, info: Any, config: InferConfig, out: Path, lock: tuple) -> None:
        super().__init__(session, provider, info, config, out)
        self.lock = lock
        self.records = _GuardedRecords(out, self._check_lock)

    def _check_lock(self) -> None:
        path = self.out / LOCK
        try:
            held = (path.stat().st_ino, path.read_bytes())
        except OSError:
            held = (0, b"")
        if held != self.lock:
            raise EdgesegError(f"--out {self.out}: its edgeseg run has stopped; this scan's outputs were not written")

    def _write(self, *args: Any) -> None:
        self._check_lock()
        super()._write(*args)


class _GuardedRecords(Records):
    """records.jsonl whose every append (made just before an output's rename) first checks the lock."""

    def __init__(self, out: Path, check: Any) -> None:
        super().__init__(out)
        self.check = check

    def add(self, record: Record) -> None:
        self.check()
        super().add(record)


_BUILT: list[Path] = []  # models of the sessions this worker process built (tests count them)


def sessions_built() -> int:
    """How many runner sessions this process built for cluster tasks."""
    return len(_BUILT)
