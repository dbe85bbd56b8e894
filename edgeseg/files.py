"""Files on disk: atomic writes, hashing, and the cache folder.

The bottom of the import graph (standard library and edgeseg.errors only), so training, export and inference
all write through here without pulling each other in. Every write goes to a hidden temp
file beside the target (unique per process and call) and is renamed over it, so a killed
process leaves either the finished file or nothing; a stale temp of a dead process is
removed by the next write of that target. ``EDGESEG_HOME`` is read here and nowhere else.
"""

from __future__ import annotations

import csv
import errno
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeseg.errors import DiskFull, EdgesegError

TMP_MARK = ".edgeseg-tmp"  # in every temp name: ``.x_seg.npy.<pid>-<hex>.edgeseg-tmp.npy``


def cache_dir() -> Path:
    """``$EDGESEG_HOME``, else ``$XDG_CACHE_HOME/edgeseg``, else ``~/.cache/edgeseg``: demo data,
    TensorRT engine caches, the deploy file of the packaged model."""
    home = os.environ.get("EDGESEG_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec: a relative path is invalid and is ignored
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "edgeseg"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(
    target: Path, write: Callable[[Path], None], before_replace: Callable[[Path], None] | None = None
) -> None:
    """Run ``write(tmp)`` on a hidden temp file beside ``target``, then rename it over.

    The temp name holds the writer's pid and a random part, so two processes (or two
    threads) writing the same target never share a temp file; it keeps the target's
    extension because writers such as nibabel pick the format from it. Temps of this
    target left by dead processes (a ``kill -9``) are removed here. ``before_replace(tmp)``
    runs on the finished temp file just before the rename (e.g. to record its hash).
    A full disk raises :class:`DiskFull` (the temp file removed), whichever writer hit it.
    """
    target = Path(target)
    with plain_disk_full(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    remove_stale_temps(target.parent.glob(f".{glob.escape(target.name)}.*edgeseg-tmp*"))
    tmp = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_MARK}{ext}"
    try:
        with plain_disk_full(target):
            write(tmp)
            if before_replace is not None:
                before_replace(tmp)
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# numpy's ``tofile`` reports a short write as ``OSError("931416 requested and 319360 written")``, no errno
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def _is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for want of space (ENOSPC, EDQUOT, a short write)."""
    if not isinstance(exc, OSError):
        return False
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or SHORT_WRITE.fullmatch(str(exc)) is not None


@contextmanager
def plain_disk_full(target: Path) -> Iterator[None]:
    """Turn a disk-full OSError while writing ``target`` into :class:`DiskFull`, in words."""
    try:
        yield
    except OSError as exc:
        if not _is_disk_full(exc):
            raise
        what = "your disk quota is used up" if exc.errno == errno.EDQUOT else "the disk is full"
        raise DiskFull(target, f"{what} ({_free_space(target.parent)} free there)") from exc


def _free_space(folder: Path) -> str:
    """Free space of the file system holding ``folder`` (or its nearest existing parent), in words."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return in_bytes(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"


def in_bytes(n: float) -> str:
    """``1,544 bytes``, ``7.2 GB``."""
    return f"{n:,.0f} bytes" if n < 1e6 else f"{n / 1e9:.3g} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


def write_bytes(path: Path, data: bytes) -> Path:
    """Atomic binary write; returns ``path``."""
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Atomic text write; returns ``path``."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))
    return Path(path)


def write_json(path: Path, obj: Any) -> Path:
    """Atomic JSON write, indented, with a final newline; returns ``path``."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None if it is missing, unreadable or not an object."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_csv(target: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Write ``rows`` as CSV, atomically: ``columns`` (keys outside them are left out), else
    the first row's keys; returns ``target``."""
    fields = columns or (list(rows[0]) if rows else ["key"])

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(Path(target), write)
    return Path(target)


def check_writable_dir(folder: Path, option: str = "--out") -> Path:
    """Create ``folder`` if needed and prove it writable by writing a file there; returns it.

    Done before any work starts, so that a read-only mount, a file where the folder
    should be, or a path under a file is one line up front, not a failure after the work.
    Root passes permission bits, so a real write is the only honest test.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".edgeseg-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise EdgesegError(f"{option} {folder}: is a file, not a folder; choose another {option}") from None
    except NotADirectoryError:
        raise EdgesegError(
            f"{option} {folder}: a part of this path is a file, not a folder; choose another {option}"
        ) from None
    except OSError as exc:  # PermissionError, EROFS (read-only mount), ENOSPC, ...
        raise EdgesegError(
            f"{option} {folder}: cannot write there ({exc.strerror or exc});"
            f" choose a writable {option} or fix its permissions"
        ) from None
    return folder


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` into place as ``out``; ``out`` never holds a partial one.

    A non-empty folder cannot be renamed over another, so an existing ``out`` is first moved
    into a fresh hidden folder beside it and removed once the new one is in place.
    """
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(paths: Iterable[Path]) -> None:
    """Delete temp files (named as by :func:`atomic_write`) whose writing process is gone.

    A temp without a pid comes from an edgeseg before pids were in the name: also stale.
    """
    for path in paths:
        pid = path.name.rsplit(TMP_MARK, 1)[0].rsplit(".", 1)[-1].split("-")[0]
        if not pid.isdigit() or not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """True if a process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
