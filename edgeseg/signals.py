"""Stopping a run from outside: SIGTERM is handled as Ctrl-C is, and only the first signal counts.

Within :func:`stop_on_signals` the first SIGINT or SIGTERM raises :class:`Stopped`, a
``KeyboardInterrupt``, so the code that finishes the writes in flight and writes ``summary.csv``
on Ctrl-C serves both. Later ones are ignored: all they could do is break that cleanup, or
Python's join of reader threads at exit, with a traceback (a third Ctrl-C did, 1 time in 5).
``kill -9`` and Ctrl-\\ still stop at once; outputs are written atomically, so a rerun redoes
what was in flight. Standard library only.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``code`` is the exit status a shell gives it (128 + number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: the first SIGINT or SIGTERM raises :class:`Stopped` and every later one is ignored,
    to the end of the process. Does nothing outside the main thread (Python runs handlers there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is stop:  # none came: as before
            for sig, handler in previous.items():
                signal.signal(sig, handler)
