"""Connecting `edgeseg infer --cluster` to Dask: a local cluster on 127.0.0.1, or a running scheduler.

Needs the ``cluster`` extra (``distributed``), imported lazily, so that a run without
``--cluster`` never loads Dask. Split from :mod:`edgeseg.infer.cluster` (the client's scan loop):
getting a client is one concern with its own faults, each one line: no ``distributed``, a
bad ``local:N``, a scheduler that does not answer within :data:`CONNECT_TIMEOUT_S` seconds,
or one with no worker for ``--cluster-timeout`` seconds. A local cluster's workers ignore
Ctrl-C, which only the client acts on, and everything, the dashboard included, listens on
127.0.0.1 only.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from edgeseg.errors import EdgesegError, describe
from edgeseg.infer.config import InferConfig

CONNECT_TIMEOUT_S = 5  # to reach the scheduler
EXTRA = "pip install 'edgeseg[cluster]'"


def local_workers(spec: str) -> int | None:
    """N of ``local:N`` (``local``: one per core); None for a scheduler address."""
    if spec != "local" and not spec.startswith("local:"):
        return None
    count = spec.partition(":")[2] or str(cores())
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
    death sends back just that scan. Scheduler, workers and dashboard listen on 127.0.0.1 only.
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
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
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
            reached, or one without workers for ``config.cluster_timeout`` seconds.
    """
    try:
        import distributed
    except ImportError:
        raise EdgesegError(f"--cluster needs Dask distributed, which the core install leaves out: {EXTRA}") from None
    spec = str(config.cluster)
    workers = local_workers(spec)
    with ExitStack() as stack:
        stack.enter_context(_quiet_dask_logs())  # faults are our one line, not Dask's tracebacks
        address = stack.enter_context(local_cluster(workers)).scheduler_address if workers else spec
        try:
            client = stack.enter_context(distributed.Client(address, timeout=f"{CONNECT_TIMEOUT_S}s"))
        except (OSError, ValueError) as exc:  # refused/timed out, or an unknown scheme
            raise EdgesegError(
                f"--cluster {spec}: no Dask scheduler answered ({describe(exc)}); check the"
                " address and that `dask scheduler` runs there, or use --cluster local:N"
            ) from None
        try:
            client.wait_for_workers(1, timeout=config.cluster_timeout)
        except TimeoutError:
            raise EdgesegError(
                f"--cluster {spec}: the scheduler has no workers after"
                f" {config.cluster_timeout:g} s; start some with `dask worker {address}`"
            ) from None
        yield client, f"Dask cluster {spec} ({len(client.nthreads())} workers)"


@contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """Dask's client logs (a lost scheduler's reconnect errors) silenced for the run, then restored."""
    names = ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def cores() -> int:
    """CPU cores this process may run on (a Slurm job's cpuset, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
