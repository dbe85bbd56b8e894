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
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeseg.artifacts import read_model_info
from edgeseg.errors import EdgesegError, describe
from edgeseg.runtime import RunnerSpec, open_runner
from edgeseg.scans import Scan
from edgeseg.segment import InferConfig, Segmented, Segmenter, reason

CONNECT_TIMEOUT_S = 5  # to reach the scheduler, and for it to have a worker
EXTRA = "pip install 'edgeseg[cluster]'"


@dataclass(frozen=True)
class Job:
    """What every task of one run needs besides its scan (sent with each task; small)."""

    model: Path  # absolute
    model_stamp: tuple[int, int]  # size and mtime_ns: a changed file gets a new session
    config: InferConfig  # quiet, cluster None: as a worker runs it
    out: Path  # absolute
    host_threads: dict[str, int]  # Dask threads per worker host when the run started


@dataclass
class Outcome:
    """A task's answer: the scan segmented and written, or why not."""

    done: Segmented | None
    reason: str = ""


def local_workers(spec: str) -> int | None:
    """N of ``local:N`` (``local``: one per core); None for a scheduler address."""
    if spec != "local" and not spec.startswith("local:"):
        return None
    count = spec.partition(":")[2] or str(_cores())
    if not count.isdigit() or int(count) < 1:
        raise EdgesegError(
            f"--cluster {spec}: expected local:N with N >= 1 worker processes,"
            " or a Dask scheduler address such as tcp://host:8786"
        )
    return int(count)


def local_cluster(workers: int) -> Any:
    """A ``distributed.LocalCluster`` of ``workers`` processes with one task thread each.

    Worker saturation 1.0: a worker holds only the scan it is running, so the rest wait at
    the scheduler for whichever worker frees first (scans differ in size), and a worker's
    death sends back just that scan.
    """
    import dask
    from distributed import LocalCluster

    # A Ctrl-C in a terminal reaches the whole process group, and only this process should
    # act on it (stop, write summary.csv, close the cluster): workers started while SIGINT is
    # ignored inherit that (a handler would not survive their exec). A Ctrl-C in this second
    # of start-up is lost.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            # Any free port for the scheduler's HTTP server: 8787 may be another cluster's.
            # Its logs stay quiet: what matters to the user comes back through the tasks.
            return LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.CRITICAL,
            )
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def connect(config: InferConfig) -> Iterator[tuple[Any, str]]:
    """Connect to ``config.cluster`` (starting a LocalCluster for ``local:N``).

    Yields:
        ``(client, description)``: a ``distributed.Client`` with at least one worker, and
        what to call it in the report, e.g. ``Dask cluster local:2 (2 workers)``.

    Raises:
        EdgesegError: no ``distributed``, a bad ``local:N``, a scheduler that cannot be
            reached, or one without workers.
    """
    try:
        import distributed
    except ImportError:
        raise EdgesegError(f"--cluster needs Dask distributed, which the core install leaves out: {EXTRA}") from None
    spec = str(config.cluster)
    workers = local_workers(spec)
    with ExitStack() as stack:
        address = stack.enter_context(local_cluster(workers)).scheduler_address if workers else spec
        try:
            client = stack.enter_context(distributed.Client(address, timeout=f"{CONNECT_TIMEOUT_S}s"))
        except (OSError, ValueError) as exc:  # refused/timed out, or an unknown scheme
            raise EdgesegError(
                f"--cluster {spec}: no Dask scheduler answered ({describe(exc)}); check the"
                " address and that `dask scheduler` runs there, or use --cluster local:N"
            ) from None
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise EdgesegError(
                f"--cluster {spec}: the scheduler has no workers after"
                f" {CONNECT_TIMEOUT_S} s; start some with `dask worker {address}`"
            ) from None
        yield client, f"Dask cluster {spec} ({len(client.nthreads())} workers)"


def _cores() -> int:
    """CPU cores this process may run on (a Slurm job's cpuset, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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
        token = uuid.uuid4().hex[:12]
        keys = [f"edgeseg-scan-{token}-{i}" for i in range(len(todo))]
        futures = client.map(_process, [_absolute(s) for s in todo], job=self._job(client), key=keys, pure=False)
        # Only unfinished tasks are held: a released result is not recomputed if its worker dies.
        pending = {f.key: (f, scan) for f, scan in zip(futures, todo, strict=True)}
        done = as_completed(futures, with_results=True, raise_errors=False)
        del futures
        try:
            for future, result in done:
                scan = pending.pop(future.key)[1]
                got[str(scan.rel)] = self._outcome(scan, future, result)
        except KeyboardInterrupt:  # keep the scans whose answers are already here
            for future, result in done.next_batch(block=False):
                if future.status == "finished":
                    scan = pending.pop(future.key)[1]
                    got[str(scan.rel)] = self._outcome(scan, future, result)
            raise
        finally:
            client.cancel([f for f, _ in pending.values()])
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
        return Job(model, (st.st_size, st.st_mtime_ns), config, self.out, host_threads)

    def _outcome(self, scan: Scan, future: Any, result: Any) -> dict[str, Any]:
        """The row of a finished task; a worker that could not start at all stops the run."""
        from distributed import KilledWorker

        here = _Relabel(scan)
        if future.status == "finished":
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
            " and rerun the same command: finished outputs are kept"
        )


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


# --- the worker side ------------------------------------------------------------------------
_RUNNERS: dict[tuple, Segmenter] = {}  # per worker process: one per (model version, options, --out)
_SESSIONS: dict[tuple, tuple[Any, str]] = {}  # per worker process: (session, provider)
_LOCK = threading.Lock()  # a worker may run several tasks at once


def _process(scan: Scan, job: Job) -> Outcome:
    """The task: infer's per-scan function on this worker's cached runner.

    A bad scan is an :class:`Outcome` with its reason, as in a local run; a worker that
    cannot load the model or see ``--out`` raises, which stops the run.
    """
    runner = _worker_runner(job)
    with warnings.catch_warnings():
        warnings.showwarning = runner.warned  # a reader's warning becomes a note of its scan
        try:
            return Outcome(runner.process(scan))
        except Exception as exc:  # any bad scan: its row says why, and the run goes on
            return Outcome(None, reason(exc))


def _worker_runner(job: Job) -> Segmenter:
    """This worker's runner for ``job``, built on its first scan (one ORT session per worker)."""
    config = job.config
    session_key = (
        job.model,
        job.model_stamp,
        config.provider,
        config.threads,
        config.batch_size,
        tuple(sorted(job.host_threads.items())),
    )
    key = (session_key, repr(config), job.out)
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
            session, provider = _SESSIONS[session_key]
            _RUNNERS.clear()
            runner = Segmenter(session, provider, read_model_info(job.model), config, job.out)
            runner.progress = runner._progress(0)  # quiet: never drawn
            _RUNNERS[key] = runner
        return _RUNNERS[key]


def _build_session(job: Job) -> tuple[Any, str]:
    from distributed import get_worker
    from distributed.comm.addressing import get_address_host

    host = get_address_host(get_worker().address)
    threads = job.config.threads or max(1, _cores() // job.host_threads.get(host, 1))
    spec = RunnerSpec("ort", job.config.provider, "fp32", threads, job.config.batch_size, ("logits",))
    net = open_runner(job.model, spec)
    _BUILT.append(job.model)
    return net, net.provider


_BUILT: list[Path] = []  # models of the sessions this worker process built (tests count them)


def sessions_built() -> int:
    """How many ONNX Runtime sessions this process built for cluster tasks."""
    return len(_BUILT)
