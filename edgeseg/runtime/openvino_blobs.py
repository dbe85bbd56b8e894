"""Compiled OpenVINO graphs kept as blobs of our own, so that a new process pays neither a compile
nor a read of the ONNX file for a shape it has met before.

OpenVINO's model cache (``CACHE_DIR``) already saves the compile, but only after the process has
read the ONNX file, reshaped it to the static shape and hashed the whole graph to find its cache
entry. On the example scan (issue 24: 5 slices, one shape) that was most of what OpenVINO cost
over ONNX Runtime: on the AMD EPYC (AVX2, 2 threads, OpenVINO 2026.4.1, the int8 file at
328x312, a shared machine) reading, reshaping and the cached compile took 0.23-0.39 s, importing
the exported blob 0.14-0.21 s, and ``edgeseg infer export/example/`` with the tuned OpenVINO pick
was 1.07x the time of ``--backend ort`` (1.74 s against 1.63 s, on an idle machine).

A blob is ``CompiledModel.export_model()``'s bytes, written atomically into the same folder as
OpenVINO's cache (:func:`edgeseg.runtime.openvino_backend.model_cache_dir`: same opt-out, same size cap,
same read-only fallback), named by everything that decides the compiled graph: the ONNX file's
SHA-256, the input shape, the compile properties, the OpenVINO version and the CPU. A blob that
does not import (damaged, another build's) is deleted and the graph compiled anew; a folder that
cannot be written only means no blob is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeseg.files import sha256_file

SUFFIX = ".edgeseg-ov"  # beside OpenVINO's own .blob files, trimmed with them


def file_key(path: Path) -> str:
    """The first 16 hex digits of the ONNX file's SHA-256: the prefix of every blob of that file."""
    return sha256_file(path)[:16]


def blob_path(
    folder: Path, file_sha: str, shape: tuple[int, ...], config: dict[str, Any], version: str, cpu: str
) -> Path:
    """Where the blob of (file, shape, properties, OpenVINO, CPU) lives: ``<file>-<rest><SUFFIX>``."""
    rest = json.dumps([list(shape), sorted((str(k), str(v)) for k, v in config.items()), version, cpu])
    return folder / f"{file_sha}-{hashlib.sha256(rest.encode()).hexdigest()[:24]}{SUFFIX}"


def has_blobs(folder: Path | None, file_sha: str) -> bool:
    """Whether any shape of this file was compiled here before (then its file was readable)."""
    return folder is not None and next(folder.glob(f"{file_sha}-*{SUFFIX}"), None) is not None


def load(core: Any, blob: Path, config: dict[str, Any]) -> Any | None:
    """The compiled model imported from ``blob``, or None: no blob, or one that does not import
    (then it is deleted, so the next process does not try it again)."""
    try:
        data = blob.read_bytes()
    except OSError:
        return None
    try:
        return core.import_model(data, "CPU", config)
    except Exception:
        blob.unlink(missing_ok=True)
        return None


def save(compiled: Any, blob: Path) -> bool:
    """Write ``compiled``'s blob atomically (a temporary file in the folder, then a rename);
    False when the folder cannot take it (read-only, full): the run goes on without it."""
    try:
        data = compiled.export_model().getvalue()
        fd, tmp = tempfile.mkstemp(dir=blob.parent, prefix=".tmp-", suffix=SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, blob)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, RuntimeError):
        return False
    return True
