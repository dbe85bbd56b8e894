"""The persistent queue of `edgeseg listen`: spooled instances, one state file per series, the audit log.

Torch-free; the standard library and :class:`edgeseg.io.records.OutLock`. Everything lives under the
node's state folder, so a node killed at any moment (``kill -9``, a power cut after the fsyncs) restarts
where it was:

    state/.edgeseg-node.lock     one node per folder (an fcntl lock; the kernel drops it when the holder dies)
    state/audit.jsonl            one JSON line per event (received, completed, segmented, ...)
    state/spool/<series>/<sop>.dcm   each instance as received, fsync'ed before the store is acknowledged
    state/queue/<series>.json    the series' state, replaced atomically (temp file, fsync, rename, fsync)
    state/results/<series>/g<n>/ what `edgeseg infer` wrote for generation n of it (its --out)

A series goes ``receiving`` -> ``complete`` (no instance for the quiet time) -> ``segmented``
(or ``skipped``, ``flagged``, ``failed``: nothing to send) -> ``sent``. Each state file carries a
*generation*, raised when a new instance arrives after the series left ``receiving``; work done for
an older generation is not recorded as done, so a series that grows is segmented again, once it
is quiet. An instance already spooled (same SOP Instance UID) changes nothing: the same exam sent
twice is neither segmented nor sent again. Sent outputs are recorded one by one, by SHA-256, so a
send cut short resends at most the one instance in flight (harmless: its UIDs are deterministic).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError
from edgeseg.io.records import OutLock

LOCK = ".edgeseg-node.lock"
AUDIT = "audit.jsonl"
UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 9.1; also what keeps a UID from naming a path outside state/
TO_SEGMENT, TO_SEND = "complete", "segmented"
STATES = ("receiving", "complete", "segmented", "sent", "skipped", "flagged", "failed")


def valid_uid(text: str) -> bool:
    """Whether ``text`` is a DICOM UID (digits and dots, at most 64 characters)."""
    return len(text) <= 64 and UID.fullmatch(text) is not None


@dataclass
class SeriesState:
    """One series in the queue (``state/queue/<uid>.json``)."""

    uid: str  # SeriesInstanceUID
    study: str = ""  # StudyInstanceUID
    state: str = "receiving"  # one of STATES
    generation: int = 1  # raised by an instance that arrives after `receiving`
    calling_ae: str = ""  # who sent its first instance
    last_received: float = 0.0  # wall-clock time of its newest instance
    outputs: list[dict[str, str]] = field(default_factory=list)  # {"path", "sop", "sha256"} to send
    sent: list[str] = field(default_factory=list)  # SHA-256 of each output sent
    reason: str = ""  # why skipped / flagged / failed, or the last send failure
    retry_at: float = 0.0  # after a failed send: not before this wall-clock time
    failures: int = 0  # failed sends in a row (the wait doubles with each, see edgeseg.node.server)


def durable_write(target: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``target`` so that a crash leaves the old file or the new one, on disk.

    The temp file lives in ``tmp_dir`` (same file system, outside the spool folders that
    `edgeseg infer` walks), is fsync'ed, renamed over ``target``, and the folder is fsync'ed so
    the rename itself survives a power cut.
    """
    tmp = tmp_dir / f"{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Audit:
    """``state/audit.jsonl``: one JSON line per event, appended in one write, safe from any thread."""

    def __init__(self, path: Path, echo: Any = None) -> None:
        self.path, self.echo, self._lock = path, echo, threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = json.dumps({"time": stamp, "event": event, **fields}, ensure_ascii=False)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.echo is not None and event != "received":  # one line per instance would drown the rest
            self.echo(f"{event}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))


class NodeQueue:
    """The state folder: spool instances, move series through their states, keep the audit log."""

    def __init__(self, root: Path, echo: Any = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.spool_dir, self.queue_dir = self.root / "spool", self.root / "queue"
        self.results_dir, self.tmp_dir = self.root / "results", self.root / "tmp"
        self.audit = Audit(self.root / AUDIT, echo)
        self.series: dict[str, SeriesState] = {}
        self._lock = threading.Lock()
        self._lock_file = OutLock(self.root, LOCK, "edgeseg listen", "--state")

    def __enter__(self) -> NodeQueue:
        for folder in (self.spool_dir, self.queue_dir, self.results_dir, self.tmp_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                why = f"cannot create {folder} ({exc.strerror})"
                raise EdgesegError(f"--state {self.root}: {why}; choose another folder") from None
        self._lock_file.__enter__()
        for stale in self.tmp_dir.iterdir():  # temps of a killed node: never acknowledged, so resent
            stale.unlink(missing_ok=True)
        self._load()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock_file.__exit__()

    def _load(self) -> None:
        """Read every state file; a series still ``receiving`` gets a full quiet time from now."""
        for path in sorted(self.queue_dir.glob("*.json")):
            raw = json.loads(path.read_text(encoding="utf-8"))
            state = SeriesState(**raw)
            if state.state == "receiving":  # its senders could not reach a dead node: a full quiet time from now
                state.last_received = time.time()
            if state.state == TO_SEND:  # a restart sends at once: the destination may have been fixed meanwhile
                state.retry_at, state.failures = 0.0, 0
            self.series[state.uid] = state
        for folder in sorted(self.spool_dir.iterdir()):  # killed between its first instance and its state file
            if folder.name not in self.series and valid_uid(folder.name):
                if any(folder.glob("*.dcm")):
                    state = SeriesState(folder.name, last_received=time.time())
                    self.series[state.uid] = state
                    self._save(state)

    def _save(self, state: SeriesState) -> None:
        data = json.dumps(asdict(state), indent=1).encode()
        durable_write(self.queue_dir / f"{state.uid}.json", data, self.tmp_dir)

    def spool(self, data: bytes, series: str, sop: str, study: str, calling_ae: str) -> bool:
        """Store one received instance durably; False if it was already here (nothing changes).

        Called from the association's thread before the C-STORE response is sent.
        """
        folder = self.spool_dir / series
        target = folder / f"{sop}.dcm"
        with self._lock:
            if target.exists():
                return False
            folder.mkdir(exist_ok=True)
            durable_write(target, data, self.tmp_dir)
            state = self.series.get(series)
            if state is None:
                state = SeriesState(series, study=study, calling_ae=calling_ae)
                self.series[series] = state
                self._save(state)
            elif state.state != "receiving":  # grew after it was complete: do it again once quiet
                state.state, state.generation, state.reason = "receiving", state.generation + 1, ""
                self._save(state)
            state.last_received = time.time()
        return True

    def complete_quiet(self, quiet_seconds: float) -> list[SeriesState]:
        """Mark ``complete`` each receiving series with no instance for ``quiet_seconds``; return them."""
        now, done = time.time(), []
        with self._lock:
            for state in self.series.values():
                if state.state == "receiving" and now - state.last_received >= quiet_seconds:
                    state.state = "complete"
                    self._save(state)
                    done.append(state)
        return done

    def pending(self, kind: str) -> list[tuple[str, int]]:
        """(uid, generation) of the series in state ``kind``, oldest first."""
        with self._lock:
            states = sorted(self.series.values(), key=lambda s: s.last_received)
            return [(s.uid, s.generation) for s in states if s.state == kind]

    def results_for(self, uid: str, generation: int) -> Path:
        """``state/results/<uid>/g<generation>``, infer's --out for that content of the series.

        One folder per generation: a rerun after a kill resumes in it (infer skips what is done),
        while a series that grew never finds the outputs of its older content there (a SEG that
        a now-flagged series no longer gets would otherwise be sent). Older generations' folders
        are removed here, since their series left ``segmented`` before this one was asked for.
        """
        series = self.results_dir / uid
        for old in series.glob("g*"):
            if old.name != f"g{generation}":
                shutil.rmtree(old, ignore_errors=True)
        return series / f"g{generation}"

    def get(self, uid: str) -> SeriesState:
        with self._lock:
            return SeriesState(**asdict(self.series[uid]))

    def advance(self, uid: str, generation: int, new: str, **changes: Any) -> bool:
        """Move ``uid`` to state ``new`` if it is still at ``generation``; False if it grew meanwhile."""
        with self._lock:
            state = self.series[uid]
            if state.generation != generation or state.state == "receiving":
                return False
            state.state = new
            for key, value in changes.items():
                setattr(state, key, value)
            self._save(state)
            return True

    def mark_sent(self, uid: str, generation: int, sha256: str) -> None:
        """Record one output as sent (before the next one is sent)."""
        with self._lock:
            state = self.series[uid]
            if state.generation == generation and sha256 not in state.sent:
                state.sent.append(sha256)
                self._save(state)
