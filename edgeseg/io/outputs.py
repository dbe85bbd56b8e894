"""Outputs of `edgeseg infer`: label files, overlays, summary.csv, all written atomically.

Torch-free. Labels keep the input's layout: ``.npy`` uint8 of the input's shape, a
palette PNG whose pixel values are the class indices, or a uint8 NIfTI carrying the
input's header, affine, qform and sform (with their codes). Every file is written to a
hidden temp file in the target folder (unique per process and call) and renamed over
the target, so a killed run leaves either the finished file or nothing (a stale temp of a
dead process is removed by the next write). Output paths are checked to stay inside
``--out``, and ``--out`` is checked writable before any work (:func:`check_writable_dir`).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.artifacts import ModelInfo
from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write, write_csv
from edgeseg.io.qc import FIGURES, MEAN_SUFFIX, Verdict
from edgeseg.io.qc_anatomy import ANATOMY
from edgeseg.io.records import Record
from edgeseg.io.scan_readers import Decoded, nifti_zooms_mm
from edgeseg.names import STATS_SUFFIX

SUMMARY = "summary.csv"
# Per-scan resolution: in-plane mm of the scan's slices (rows x cols) and of the model, the
# (H, W) slices the model saw, and whether they were resampled to get there.
RESAMPLE_COLUMNS = ("spacing_mm", "model_spacing_mm", "model_shape", "resampled")
# Okabe-Ito colour-blind-safe colours for classes 1.. (background is black/transparent).
# quality figures of each scan, their verdict (edgeseg.io.qc.Verdict: text, status) and its coverage
QC_COLUMNS = (*FIGURES, *ANATOMY, "qc", "qc_status", "coverage", "coverage_detail")
PALETTE = [
    (0, 0, 0),
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
]


def safe_output_path(out: Path, rel: Path) -> Path:
    """``out / rel``, refusing absolute paths, ``..`` and symlinks that leave ``out``."""
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise EdgesegError(f"{rel}: output name would escape --out {out}; refusing to write it")
    target = out / rel
    root = out.resolve()
    if not target.resolve().is_relative_to(root):
        raise EdgesegError(f"{target}: resolves to {target.resolve()}, outside --out {root}; refusing to write")
    return target


def write_labels(
    target: Path,
    kind: str,
    labels: np.ndarray,
    dec: Decoded,
    class_names: tuple[str, ...],
    before_replace: Callable[[Path], None] | None = None,
) -> None:
    """Write labels in the input's layout: .npy, palette PNG, or NIfTI beside the input.

    ``before_replace``: as in :func:`atomic_write`.
    """
    if kind == "npy":
        atomic_write(target, lambda tmp: _save_npy(tmp, labels), before_replace)
    elif kind == "image":
        atomic_write(target, lambda tmp: label_png(labels).save(tmp, format="PNG"), before_replace)
    else:
        img = label_nifti(labels, dec.template, len(class_names), size_known=dec.voxel_ml is not None)
        atomic_write(target, lambda tmp: img.to_filename(str(tmp)), before_replace)


def _save_npy(tmp: Path, labels: np.ndarray) -> None:
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(labels, dtype=np.uint8), allow_pickle=False)


def label_png(labels: np.ndarray) -> Any:
    """A palette PNG whose pixel values are the class indices, coloured per class."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L")
    img.putpalette([c for rgb in PALETTE for c in rgb] * (256 // len(PALETTE)))
    return img


UNKNOWN_SIZE = b"edgeseg labels; pixel size unknown"  # descrip of labels whose mm are a stand-in


def label_nifti(labels: np.ndarray, template: Any, num_classes: int, size_known: bool = True) -> Any:
    """A uint8 label image with the template's header, affine, qform and sform (and codes).

    ``size_known=False`` (a DICOM series without PixelSpacing) says so in ``descrip``, so a
    resumed run does not read the stand-in 1 mm as a voxel volume.
    """
    header = template.header.copy()
    header.set_data_dtype(np.uint8)
    img = type(template)(np.asarray(labels, dtype=np.uint8), None, header)
    qform, qcode = template.get_qform(coded=True)
    sform, scode = template.get_sform(coded=True)
    img.set_qform(qform, code=int(qcode))
    img.set_sform(sform, code=int(scode))
    img.header.set_slope_inter(1.0, 0.0)  # never inherit the input's intensity scaling
    img.header.set_intent("label")
    img.header["cal_min"], img.header["cal_max"] = 0, num_classes - 1
    img.header["descrip"] = b"edgeseg labels" if size_known else UNKNOWN_SIZE
    return img


def write_overlay(
    target: Path,
    dec: Decoded,
    labels: np.ndarray,
    source: Path,
    class_names: tuple[str, ...],
    before_replace: Callable[[Path], None] | None = None,
) -> None:
    """The QC mosaic PNG of ``labels`` over the scan, in :data:`PALETTE`'s colours: for a volume in
    its acquisition plane and radiological convention, with markers (:mod:`edgeseg.io.mosaic`)."""
    from edgeseg.io.mosaic import write_mosaic

    write_mosaic(target, dec, labels, source, class_names, PALETTE, before_replace)


def read_labels(path: Path) -> tuple[np.ndarray, float | None]:
    """A finished output's labels and voxel volume in mL (None if unknown), for resume."""
    if path.name.endswith(".npy"):
        return np.load(path, allow_pickle=False), None
    if path.name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as img:
            return np.array(img), None
    if path.name.endswith(".dcm"):
        from edgeseg.io.dicom_seg import read_dicom_seg

        return read_dicom_seg(path)
    import nibabel as nib

    img = nib.load(path)
    if bytes(img.header["descrip"]).rstrip(b"\0") == UNKNOWN_SIZE:
        return np.asarray(img.dataobj), None
    return np.asarray(img.dataobj), float(np.prod(nifti_zooms_mm(img))) / 1000.0


def write_stats(
    target: Path,
    row: dict[str, Any],
    info: ModelInfo,
    model_sha256: str,
    before_replace: Callable[[Path], None] | None = None,
) -> None:
    """``<name>_stats.json``: per-class voxels, mL and mean intensity, and the QC figures, from the
    summary row of the scan (the same numbers as summary.csv), plus the model that made them."""
    import json

    def number(key: str) -> float | None:
        return float(row[key]) if row.get(key) not in (None, "") else None

    stats = {
        # absolute, so a sidecar is the same whichever process (a cluster worker) wrote it
        "input": os.path.abspath(row["input"]),
        "series": row.get("series") or None,
        "output": row["output"],
        "model": str(info.path),
        "model_sha256": model_sha256,
        "voxel_ml": number("voxel_ml"),
        "classes": {
            name: {
                "voxels": int(row[f"{name}_voxels"]),
                "ml": number(f"{name}_ml"),
                "mean_intensity": number(f"{name}{MEAN_SUFFIX}"),
            }
            for name in info.class_names
        },
        "qc": {
            **{k: number(k) for k in (*FIGURES, *ANATOMY)},
            "verdict": row.get("qc", ""),
            **(Verdict.from_row(row).as_dict() if row.get("qc") else {}),
        },
        "coverage": row.get("coverage") or None,
        "total_brain_ml": number("total_brain_ml"),  # every class but background: gray + white matter
        "volumes": row.get("volumes") or None,  # "partial": the mL are of the part scanned only
        # DICOM: PatientID, StudyInstanceUID, SeriesInstanceUID, AccessionNumber of the source series
        "dicom": row.get("dicom") or None,
        # the scan's summary.csv row, its input absolute as above and its ms in the file's record
        # (records.jsonl), so that the file stays the same: a rerun rebuilds summary.csv from both
        "summary": {k: row.get(k, "") for k in summary_columns(info) if k not in ("input", "ms")},
    }
    atomic_write(target, lambda tmp: tmp.write_text(json.dumps(stats, indent=2) + "\n"), before_replace)


def volumes_cover(row: dict[str, Any]) -> str:
    """summary.csv's ``volumes``: what the mL of a scan measure, from its ``coverage`` (edgeseg.io.qc):
    ``whole brain``, ``partial`` (a slab or a single slice: the part scanned only) or ``unknown``."""
    cover = str(row.get("coverage") or "")
    if not row.get("total_brain_ml"):
        return ""
    if cover.startswith(("partial", "single slice")):
        return "partial"
    return "whole brain" if cover == "whole" else "unknown"


def summary_columns(info: ModelInfo) -> list[str]:
    """summary.csv header: where, status, shape, per-class voxels and mL, resolution, provider, time."""
    names = info.class_names
    return [
        "input",
        "series",
        "status",
        "output",
        "shape",
        "voxel_ml",
        *[f"{n}_voxels" for n in names],
        *[f"{n}_ml" for n in names],
        "total_brain_ml",
        "volumes",
        *[f"{n}{MEAN_SUFFIX}" for n in names],
        *RESAMPLE_COLUMNS,
        *QC_COLUMNS,
        "provider",
        "ms",
        "message",
    ]


def previous_rows(out: Path, records: Mapping[str, Record]) -> dict[str, dict[str, Any]]:
    """Rows of scans finished by earlier runs whose labels are still in ``out``, keyed by output.

    Each comes from the scan's ``_stats.json`` (named in ``records``, and intact), which holds
    its summary.csv row, so a deleted or stale summary.csv loses no column; an earlier
    summary.csv fills in what stats files written before they held their row do not have.
    """
    rows = _summary_rows(out / SUMMARY)
    for rel, record in sorted(records.items()):  # in output order, not the order writes finished in
        row = _stats_row(out / rel, record.sha256) if rel.endswith(STATS_SUFFIX) else None
        if row and row.get("output") and (out / row["output"]).is_file():
            rows[row["output"]] = {**rows.get(row["output"], {}), **row, **({"ms": record.ms} if record.ms else {})}
    return rows


def _summary_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of an earlier summary.csv whose outputs still exist, keyed by output."""
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    root = path.parent
    return {
        r["output"]: r for r in rows if r.get("output") and r.get("status") == "done" and (root / r["output"]).is_file()
    }


def _stats_row(path: Path, sha256: str) -> dict[str, Any] | None:
    """The summary row kept in a ``_stats.json`` whose SHA-256 is ``sha256``, else None."""
    import json

    try:
        data = path.read_bytes()
        stats = json.loads(data) if hashlib.sha256(data).hexdigest() == sha256 else None
    except (OSError, ValueError):
        return None
    if not isinstance(stats, dict):
        return None
    row = stats.get("summary")
    if isinstance(row, dict):
        return {**row, "input": stats.get("input")}
    # written before stats files held their row: keep the QC verdict at least
    qc = stats.get("qc")
    verdict = qc.get("verdict") if isinstance(qc, dict) else None
    if not verdict:
        return None
    return {
        "input": stats.get("input"),
        "series": stats.get("series") or "",
        "status": "done",
        "output": stats.get("output"),
        "qc": verdict,
    }


def write_summary(out: Path, rows: list[dict[str, Any]], info: ModelInfo) -> Path:
    """Write ``out/summary.csv`` atomically; returns its path."""
    target = out / SUMMARY
    write_csv(target, rows, summary_columns(info))
    return target
