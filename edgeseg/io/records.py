"""Bookkeeping of an `edgeseg infer` output folder: one run at a time, and what each output is.

Torch-free. :class:`OutLock` holds ``--out/.edgeseg.lock`` (an ``fcntl`` lock on a file
holding the holder's pid) for the whole run, so a second run on the same ``--out`` is
refused in one line instead of both rewriting ``summary.csv``. The kernel drops the lock
when its holder dies, so a lock left by a killed run is simply taken over. (POSIX only:
without ``fcntl``, on Windows, there is no lock.)

:class:`Records` keeps ``--out/records.jsonl``: one JSON line per finished output with the
size, mtime and SHA-256 of its input files and the SHA-256 of the output (and overlay).
A line is appended, in one write, after the output's temp file is complete and before it
is renamed into place, so every output of this version has its record even after a
``kill -9``; a torn last line is ignored and the file is rewritten atomically (newest
record per output) at the end of each run. A rerun uses it to redo outputs that are
damaged, or whose input changed, instead of counting them as done.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write, plain_disk_full, remove_stale_temps, sha256_file

LOCK = ".edgeseg.lock"
RECORDS = "records.jsonl"


class OutLock:
    """An exclusive, non-blocking lock on an output folder (``with OutLock(out): ...``)."""

    def __init__(self, out: Path, name: str = LOCK, holder: str = "edgeseg infer", option: str = "--out") -> None:
        self.path = Path(out) / name
        self.holder, self.option = holder, option  # who holds such a lock, and the option naming the folder
        self.fd: int | None = None

    def __enter__(self) -> OutLock:
        try:
            import fcntl
        except ImportError:  # Windows: no fcntl; runs on one --out are then not kept apart
            return self
        while True:  # retry if the file we locked was unlinked by a finishing holder meanwhile
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise EdgesegError(
                    f"{self.option} {self.path.parent}: another {self.holder} (pid {holder}) is writing"
                    f" there; wait for it to finish, or choose another {self.option}"
                ) from None
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        # Temps of runs killed mid-write; only a lock holder may judge them stale.
        remove_stale_temps(self.path.parent.rglob(".*.edgeseg-tmp*"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before releasing: the next holder makes a new one
            os.close(self.fd)
            self.fd = None


@dataclass(frozen=True)
class InputStamp:
    """One input file as it was when its output was made."""

    path: str  # absolute
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Record:
    """What one finished output was made from, and what it holds."""

    output: str  # relative to --out
    inputs: tuple[InputStamp, ...]
    sha256: str  # of the output file
    overlay_sha256: str = ""  # of its _overlay.png, when one was written
    ms: str = ""  # a _stats.json's: summary.csv's ms of its scan, kept here as the file is the same each run


def stamp_inputs(files: tuple[Path, ...]) -> tuple[InputStamp, ...]:
    """Size, mtime and SHA-256 of ``files`` (stat first: a change while hashing shows later)."""
    stamps = []
    for f in files:
        st = os.stat(f)
        stamps.append(InputStamp(os.path.abspath(f), st.st_size, st.st_mtime_ns, sha256_file(f)))
    return tuple(stamps)


class Records:
    """``--out/records.jsonl``: the newest :class:`Record` per output; appends are thread-safe."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / RECORDS
        self.latest: dict[str, Record] = {}
        self._lock = threading.Lock()
        if self.path.is_file():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    raw = json.loads(line)
                    inputs = tuple(InputStamp(**i) for i in raw.pop("inputs"))
                    record = Record(inputs=inputs, **raw)
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue  # a line torn by a kill, or not ours
                self.latest[record.output] = record

    def add(self, record: Record) -> None:
        """Append ``record`` as one line in one write (called before the output's rename)."""
        line = (json.dumps(asdict(record), separators=(",", ":")) + "\n").encode()
        with self._lock, plain_disk_full(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                end = os.fstat(fd).st_size
                if os.write(fd, line) != len(line):  # a full disk: no torn line for the next one to join
                    os.ftruncate(fd, end)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            finally:
                os.close(fd)
            self.latest[record.output] = record

    def verdict(self, out: Path, rel: str, files: tuple[Path, ...], overlay: str | None) -> str | None:
        """None if the output ``rel`` (and ``overlay``, when asked) is intact and up to date,
        else why it must be redone: ``output damaged``, ``input changed``, ``no record``."""
        record = self.latest.get(rel)
        if record is None:
            return "no record of how it was made"
        try:
            return self._compare(record, out, files, overlay)
        except OSError as exc:  # an output or input that cannot be read now
            return f"cannot check it ({exc.strerror or exc})"

    @staticmethod
    def _compare(record: Record, out: Path, files: tuple[Path, ...], overlay: str | None) -> str | None:
        if sha256_file(out / record.output) != record.sha256:
            return "output damaged"
        if overlay is not None and (not record.overlay_sha256 or sha256_file(out / overlay) != record.overlay_sha256):
            return "overlay damaged"
        if [i.path for i in record.inputs] != [os.path.abspath(f) for f in files]:
            return "input changed"
        for stamp, f in zip(record.inputs, files, strict=True):
            st = os.stat(f)
            if (st.st_size, st.st_mtime_ns) != (stamp.size, stamp.mtime_ns) and (
                st.st_size != stamp.size or sha256_file(f) != stamp.sha256
            ):
                return "input changed"
        return None

    def compact(self) -> None:
        """Rewrite the file atomically with only the newest record per output that exists."""
        with self._lock:
            kept = [r for r in self.latest.values() if (self.path.parent / r.output).is_file()]
            lines = "".join(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in kept)
            atomic_write(self.path, lambda tmp: tmp.write_text(lines))
