"""One scan's row of ``summary.csv``: its voxel counts and volumes, and the QC columns.

Torch-free and numpy-only. The scan loop (:class:`edgeseg.infer.segment.Segmenter`) builds a row
for every scan it meets, done, skipped or failed, and a Dask worker builds it where the scan
was segmented; the columns are the same either way because both call these functions. The
QC columns are :mod:`edgeseg.io.qc`'s figures and verdict against the ranges the model's export
measured, plus :mod:`edgeseg.io.qc_anatomy`'s shape figures and the brain's coverage along the
slice axis (which needs the distance between slices, :func:`slice_mm`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgeseg.artifacts import ModelInfo
from edgeseg.errors import EdgesegError, describe
from edgeseg.io.qc import FIGURES, METADATA_KEY, Verdict, coverage, parse_ranges, verdict
from edgeseg.io.qc_anatomy import ANATOMY, anatomy_reasons
from edgeseg.io.scan_files import Scan
from edgeseg.io.scan_readers import Decoded
from edgeseg.metrics import class_counts

# Columns of a skipped scan's row that say what this run found, not what the earlier run wrote.
KEPT_NOW = ("input", "status", "output", "message")


def summary_row(
    info: ModelInfo,
    provider: str,
    scan: Scan,
    status: str,
    labels: np.ndarray | None,
    voxel_ml: float | None,
    ms: float | None,
    dec: Decoded | None = None,
) -> dict[str, Any]:
    """The row of ``scan``: ``provider`` (what ran the model) is shown only where ``ms`` is, i.e.
    the model ran on the scan in this run; the counts and volumes where ``labels`` are known."""
    names = info.class_names
    row: dict[str, Any] = {
        "input": str(scan.path),
        "series": scan.series,
        "status": status,
        "output": str(scan.rel) if scan.rel.parts else "",
        "provider": provider if ms is not None else "",
        "ms": f"{ms:.1f}" if ms is not None else "",
    }
    if dec is not None:
        mm = info.pixel_spacing_mm
        row["spacing_mm"] = "x".join(f"{v:g}" for v in dec.spacing) if dec.spacing else ""
        row["model_spacing_mm"] = f"{mm:g}" if mm is not None else ""
        row["model_shape"] = "x".join(map(str, dec.model_shape))
        row["resampled"] = "yes" if dec.model_size else "no"
    if labels is not None:
        counts = class_counts(labels, len(names))
        row["shape"] = "x".join(map(str, dec.shape if dec else labels.shape))
        row["voxel_ml"] = f"{voxel_ml:.6g}" if voxel_ml else ""
        for name, n in zip(names, counts, strict=True):
            row[f"{name}_voxels"] = int(n)
            row[f"{name}_ml"] = f"{n * voxel_ml:.3f}" if voxel_ml else ""
        row["total_brain_ml"] = f"{counts[1:].sum() * voxel_ml:.3f}" if voxel_ml else ""  # every class but 0
    if dec is not None and dec.identifiers:  # DICOM: what links the result to its study (the stats JSON)
        row["dicom"] = dict(dec.identifiers)
    return row


def qc_columns(figures: dict[str, float], labels: np.ndarray, dec: Decoded, info: ModelInfo) -> dict[str, str]:
    """The QC columns of a row: the figures, the verdict (:class:`edgeseg.io.qc.Verdict`) against
    the model's ranges, and the coverage along the slice axis."""
    shape = {k: figures[k] for k in ANATOMY if k in figures}
    figures = {k: figures[k] for k in FIGURES if k in figures}  # not the mean intensities
    cover = coverage(np.count_nonzero(labels.reshape(len(labels), -1), axis=1), slice_mm(dec))
    ranges = parse_ranges(info.metadata.get(METADATA_KEY))
    judged = verdict(figures, ranges, anatomy_reasons(shape), cover)
    return {**{k: f"{v:.4g}" for k, v in {**figures, **shape}.items()}, **verdict_columns(judged)}


def verdict_columns(judged: Verdict) -> dict[str, str]:
    """A row's verdict columns: ``qc`` (its text), ``qc_status``, ``coverage``, ``coverage_detail``."""
    return {
        "qc": judged.text,
        "qc_status": judged.status,
        "coverage": judged.coverage_text,
        "coverage_detail": judged.coverage_detail,
    }


def slice_mm(dec: Decoded) -> float | None:
    """Distance between slice centres in mm, from the voxel volume and the in-plane spacing; None: unknown."""
    if not dec.voxel_ml or not dec.spacing or not dec.spacing[0] * dec.spacing[1] > 0:
        return None
    return dec.voxel_ml * 1000.0 / (dec.spacing[0] * dec.spacing[1])


def reason(exc: BaseException) -> str:
    """A failed scan's message for its row and its line; ``EDGESEG_DEBUG`` set: raise it, for the traceback."""
    if os.environ.get("EDGESEG_DEBUG"):
        raise exc
    if isinstance(exc, EdgesegError):
        return str(exc)
    return describe(exc, typed=True)
