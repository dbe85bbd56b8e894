"""`edgeseg infer --cluster`: the same inference, its scans spread over Dask distributed workers.

    edgeseg infer scans/ --out seg/ --cluster local:2            # 2 worker processes here
    edgeseg infer scans/ --out seg/ --cluster tcp://head:8786    # a running Dask scheduler

or from Python: ``run_inference([Path("scans")], InferConfig(out=Path("seg"), cluster="local:2"))``.
Needs the ``cluster`` extra (``pip install 'edgeseg[cluster]'``, i.e. ``distributed``).

A scan is the unit of work; a volume is never split. Each worker runs infer's own per-scan
function (``Segmenter.process``: read, segment, write atomically, record) with one ONNX
Runtime session per worker process, built on its first scan and reused, keyed by the
model file's path, size and mtime and by the session options. Its intra-op threads are
``--threads``, else the worker's cores divided by the Dask threads on its host, so that N
workers on one machine do not oversubscribe it.

The client (this process) does what a local run does around that: it holds the ``--out``
lock, skips what is finished (resume), shows the progress bar, and writes ``summary.csv``
and the compacted ``records.jsonl``. Workers append each output's record line before the
output's rename, exactly as a local run's writer threads do, so a ``kill -9`` of anything
leaves no output without its record. So the workers must see the scans, the model and
``--out`` at the same absolute paths (one machine, or a shared file system); relative
inputs are made absolute for them, and the summary keeps them as they were given.

A worker that dies mid-scan (killed, out of memory) loses nothing: the scheduler gives its
scans to another worker, and since every write is atomic and records are kept per output,
the result equals a run with no death. A scan during which more than
``distributed.scheduler.allowed-failures`` (default 3) workers died fails with one line
and the run goes on. A scheduler that does not answer within a few seconds is one line.

Faults are one line each, never a hang or Dask's traceback. Every worker is checked before
its first task (``edgeseg`` importable, the model and ``--out`` there): one that fails, or
that cannot build the session later, is named on stderr and its scans go to the others; when
none is left that can, the run stops. No worker at all for ``--cluster-timeout`` seconds
(``InferConfig.cluster_timeout``), or a lost scheduler, stops the run too, with
``summary.csv`` written. ``--backend`` is chosen on each worker as a local run chooses it
(``edgeseg tune``'s pick for that machine under ``auto``). Before the client releases the
``--out`` lock it cancels what is queued and waits (up to the same timeout) for the running
tasks to end; a task that still runs after that (its scheduler lost, or a stalled read)
checks the lock before each output and its record, and writes nothing once it is gone.
The local cluster binds everything, its dashboard included, to 127.0.0.1.

This module is the client's side: :class:`ClusterRunner`, infer's scan loop with the scans
sent out. Connecting is :mod:`edgeseg.infer.cluster_connect`, and what a worker runs is
:mod:`edgeseg.infer.cluster_tasks` (which the workers import, never this module).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError, describe
from edgeseg.infer.cluster_tasks import Job, Outcome, check_worker, process_scan, running_tasks
from edgeseg.infer.segment import Segmenter
from edgeseg.io.records import LOCK
from edgeseg.io.scan_files import Scan

POLL_S = 0.2  # how often the client looks at the cluster while no answer comes
RETRIES = 3  # times a scan is sent again after workers that could not run it


# --- the client side ------------------------------------------------------------------------
class ClusterRunner(Segmenter):
    """infer's scan loop with the scans sent to Dask workers; all the rest as in a local run.

    ``session`` is the ``distributed.Client``. Rows go into the summary in scan order,
    as a local run writes them, whatever order the workers finish in.
    """

    def _loop(self, scans: list[Scan], rows: dict[str, dict[str, Any]]) -> None:
        from distributed import as_completed

        client, got = self.session, {}
        self.progress.update(self.slice_task, visible=False)  # slices are counted on the workers
        todo = []
        for scan in scans:
            if self._finished(scan):
                got[str(scan.rel)] = self._skipped(scan, rows.get(str(scan.rel)))
            else:
                todo.append(scan)
        self.job = self._job(client)
        self.unfit: dict[str, str] = {}  # worker address -> why it cannot run our tasks
        self.checked: set[str] = set()  # workers checked before their first task
        self.no_worker_since: float | None = None
        self._check_workers(client)
        keys = [f"edgeseg-scan-{self.job.token}-{i}" for i in range(len(todo))]
        futures = client.map(
            process_scan, [_absolute(s) for s in todo], job=self.job, key=keys, pure=False, **self._where()
        )
        # Only unfinished tasks are held: a released result is not recomputed if its worker dies.
        self.pending = {f.key: (f, scan, 0) for f, scan in zip(futures, todo, strict=True)}
        self.done = as_completed(futures, with_results=True, raise_errors=False)
        del futures
        try:
            while self.pending:
                batch = self.done.next_batch(block=False)
                if not batch:
                    self._watch(client)
                    time.sleep(POLL_S)
                for future, result in batch:
                    self._answer(future, result, got)
        except KeyboardInterrupt:  # keep the scans whose answers are already here
            for future, result in self.done.next_batch(block=False):
                if isinstance(result, Outcome) and not result.unfit:
                    self._answer(future, result, got)
            raise
        finally:
            self._stop_tasks(client)
            for scan in scans:  # a local run's row order
                if str(scan.rel) in got:
                    rows[str(scan.rel)] = got[str(scan.rel)]
            self.records.latest.update(type(self.records)(self.out).latest)  # the workers' lines

    def _job(self, client: Any) -> Job:
        from distributed.comm.addressing import get_address_host

        model = Path(os.path.abspath(self.info.path))
        st = model.stat()
        host_threads: dict[str, int] = {}
        for address, n in client.nthreads().items():
            host = get_address_host(address)
            host_threads[host] = host_threads.get(host, 0) + n
        config = replace(self.config, model=model, quiet=True, cluster=None)
        lock = self.out / LOCK
        held = (lock.stat().st_ino, lock.read_bytes()) if lock.is_file() else (0, b"")
        token = uuid.uuid4().hex[:12]
        return Job(model, (st.st_size, st.st_mtime_ns), config, self.out, host_threads, token, held)

    def _where(self) -> dict[str, Any]:
        """Placement of new tasks: on the workers not known unfit (others only if none of those is left)."""
        if not self.unfit:
            return {}
        fit = [w for w in self.checked if w not in self.unfit]
        return {"workers": fit, "allow_other_workers": True} if fit else {}

    def _check_workers(self, client: Any, found: dict[str, str] | None = None) -> None:
        """Check the workers not seen yet (edgeseg importable, model and --out there) and add them,
        and ``found`` (workers a task found unfit), to the unfit ones: named once, or, when no
        worker is left that can run a scan, the run stops."""
        found = dict(found or {})
        workers = set(client.nthreads())
        new = sorted(workers - self.checked)
        if new:
            answers = client.run(check_worker, self.job, workers=new, on_error="return")
            for worker in new:
                answer = answers.get(worker, "")
                if answer:
                    found[worker] = _unloadable(answer) if isinstance(answer, BaseException) else answer
            self.checked |= set(new)
        found = {w: why for w, why in found.items() if w not in self.unfit}
        self.unfit.update(found)
        if workers and workers <= set(self.unfit):
            raise EdgesegError(self._none_fit_line())
        for worker, why in found.items():
            self.say(
                f"warning: Dask worker {worker} cannot run edgeseg's tasks ({why}); its scans go to the other workers",
                error=True,
            )

    def _none_fit_line(self) -> str:
        by_reason: dict[str, list[str]] = {}
        for worker, why in self.unfit.items():
            by_reason.setdefault(why, []).append(worker)
        named = "; ".join(f"{', '.join(sorted(ws))}: {why}" for why, ws in list(by_reason.items())[:3])
        return (
            f"--cluster {self.config.cluster}: no Dask worker can run edgeseg's tasks ({named});"
            f" fix that on the workers (the same edgeseg and backend installed, the model and --out at"
            f" the same paths) and rerun the same command: {self._so_far()}"
        )

    def _so_far(self) -> str:
        r = self.report
        return f"{r.done} scan(s) finished in this run, {r.skipped} were already done; finished outputs are kept"

    def _watch(self, client: Any) -> None:
        """Between answers: stop on a lost scheduler, or no worker to run on for too long."""
        if client.status != "running":
            raise EdgesegError(self._lost_line())
        try:
            self._check_workers(client)
        except (OSError, TimeoutError):
            raise EdgesegError(self._lost_line()) from None
        if set(client.nthreads()) - set(self.unfit):
            self.no_worker_since = None
            return
        now = time.monotonic()
        self.no_worker_since = self.no_worker_since or now
        if now - self.no_worker_since > self.config.cluster_timeout:
            raise EdgesegError(
                f"--cluster {self.config.cluster}: no Dask worker for {self.config.cluster_timeout:g} s"
                f" (all died or were stopped); start workers with `dask worker {client.scheduler.address}`"
                f" and rerun the same command: {self._so_far()}"
            )

    def _lost_line(self) -> str:
        return (
            f"--cluster {self.config.cluster}: the Dask scheduler at {self.session.scheduler.address} was lost;"
            f" {self._so_far()}; rerun the same command to resume"
        )

    def _answer(self, future: Any, result: Any, got: dict[str, Any]) -> None:
        """Take one task's answer: its row, or the scan sent again if its worker could not run it."""
        _, scan, tries = self.pending.pop(future.key)
        if isinstance(result, Outcome) and result.unfit:
            self._check_workers(self.session, {result.unfit: result.reason})  # raises when none is left
            if tries < RETRIES + len(self.unfit):
                again = self.session.submit(
                    process_scan,
                    _absolute(scan),
                    job=self.job,
                    key=f"{future.key}-{tries + 1}",
                    pure=False,
                    **self._where(),
                )
                self.pending[again.key] = (again, scan, tries + 1)
                self.done.add(again)
                return
            result = Outcome(None, f"{scan.path}: no Dask worker could run it (last: {result.reason})")
        if not isinstance(result, Outcome) and future.status == "cancelled":  # we cancel only after the loop
            raise EdgesegError(self._lost_line())
        got[str(scan.rel)] = self._outcome(scan, future, result)

    def _stop_tasks(self, client: Any) -> None:
        """Cancel what is queued, then wait (up to the cluster timeout) for running tasks to end."""
        if client.status != "running":
            return  # nothing to ask; a task still running writes nothing once the lock is gone
        client.cancel([f for f, _, _ in self.pending.values()])
        deadline = time.monotonic() + self.config.cluster_timeout
        while time.monotonic() < deadline and client.status == "running":
            try:
                counts = client.run(running_tasks, self.job.token, on_error="return")
            except (OSError, TimeoutError):
                return
            if not any(isinstance(n, int) and n for n in counts.values()):
                return
            time.sleep(POLL_S)

    def _outcome(self, scan: Scan, future: Any, result: Any) -> dict[str, Any]:
        """The row of a finished task."""
        from distributed import KilledWorker

        here = _Relabel(scan)
        if isinstance(result, Outcome):  # its status may read "lost" by now: the answer is here
            if result.done is None:
                return self._failed(scan, here(result.reason))
            result.done.row["input"] = str(scan.path)
            result.done.notes = [here(note) for note in result.done.notes]
            return self._count(result.done)
        exc = future.exception() if future.status == "error" else None
        if isinstance(exc, KilledWorker):
            return self._failed(
                scan,
                f"{scan.path}: {exc.allowed_failures + 1} Dask workers died"
                " while segmenting it (out of memory?); try it alone without --cluster",
            )
        if os.environ.get("EDGESEG_DEBUG") and exc is not None:
            raise exc
        why = here(describe(exc)) if exc is not None else f"its task was {future.status}"
        raise EdgesegError(
            f"a Dask worker could not take {scan.path} ({why}); fix that on the workers"
            f" and rerun the same command: {self._so_far()}"
        )


def _unloadable(exc: BaseException) -> str:
    """Why a worker could not even load our check: most often edgeseg is not installed there."""
    text = describe(exc)
    if "edgeseg" in text and ("ModuleNotFound" in text or "Import" in text or "No module" in text):
        return f"edgeseg cannot be imported there ({text}); install edgeseg[cluster] in the workers' environment"
    return text


class _Relabel:
    """Puts the scan's path back as the user gave it into text a worker wrote with its absolute path."""

    def __init__(self, scan: Scan) -> None:
        self.given, self.absolute = str(scan.path), os.path.abspath(scan.path)

    def __call__(self, text: str) -> str:
        return text if self.given == self.absolute else text.replace(self.absolute, self.given)


def _absolute(scan: Scan) -> Scan:
    """``scan`` with absolute paths: a worker's working directory is not the client's."""
    return Scan(
        Path(os.path.abspath(scan.path)), scan.kind, scan.rel, tuple(Path(os.path.abspath(f)) for f in scan.files)
    )
