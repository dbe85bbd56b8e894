"""Folder watch for `edgeseg listen --watch DIR`: sites that export DICOM files to a share.

Torch-free. DIR is an inbox: each DICOM file that has not changed for ``SETTLE_SECONDS`` (a
copy in progress keeps changing) is spooled exactly as a C-STORE would be
(:meth:`edgeseg.node.queue.NodeQueue.spool`, fsync'ed) and only then removed from DIR, so a
kill between the two leaves the file in DIR and the next pass finds it a duplicate. A file
that is not DICOM, or has no valid Series/SOP Instance UID, is moved to ``DIR/.refused/``
and the audit log says why. Hidden files (names starting with a dot: temps of a copy tool)
are left alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgeseg.errors import describe
from edgeseg.node.queue import NodeQueue, valid_uid

SETTLE_SECONDS = 2.0  # a file unchanged this long is taken as completely written
REFUSED = ".refused"


def watch_once(folder: Path, queue: NodeQueue) -> int:
    """Spool every settled DICOM file under ``folder`` and remove it there; return how many were taken."""
    taken, now = 0, time.time()
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        try:
            if now - path.stat().st_mtime < SETTLE_SECONDS:
                continue
            data = path.read_bytes()
        except OSError:  # removed or unreadable meanwhile: the next pass sees it again
            continue
        why, _ = take(data, queue, f"watch:{folder}", file=str(path))
        if why:
            queue.audit("refused", file=str(path), reason=why)
            _set_aside(folder, path)
        else:
            path.unlink(missing_ok=True)
            taken += 1
    return taken


def take(data: bytes, queue: NodeQueue, source: str, **fields: str) -> tuple[str, tuple[str, str]]:
    """Spool one Part-10 file's bytes as a C-STORE would be, from ``source`` (for the audit log).

    Returns:
        ``(why, (SOPClassUID, SOPInstanceUID))``: ``why`` is the reason it was refused, ``""`` if spooled.
    """
    import io

    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:  # pydicom's InvalidDicomError and parse errors
        return f"not a DICOM file with a file header (Part 10): {describe(exc)}", ("", "")
    series, sop = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
    ids = (str(ds.get("SOPClassUID", "")), sop)
    if not valid_uid(series) or not valid_uid(sop):
        return f"SeriesInstanceUID {series!r} or SOPInstanceUID {sop!r} is not a valid UID", ids
    new = queue.spool(data, series, sop, str(ds.get("StudyInstanceUID", "")), source)
    audited = {"series": series, "sop": sop, "source": source, **fields}
    queue.audit("received", **audited, **({} if new else {"duplicate": True}))
    return "", ids


def _set_aside(folder: Path, path: Path) -> None:
    """Move a refused file to ``folder/.refused/`` (keeping its name unique) so it is not read again."""
    target_dir = folder / REFUSED
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    if target.exists():
        target = target_dir / f"{path.stem}.{time.time_ns()}{path.suffix}"
    os.replace(path, target)
