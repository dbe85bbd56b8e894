"""What a DICOM series gets for the PACS: its SEG and SR volume report, gated by QC. Torch-free.

:class:`edgeseg.infer.scan_writer.ScanOutputs` calls :func:`write_results` for each DICOM series once its
labels are made. A scan that QC flagged (:mod:`edgeseg.io.qc`: no brain, not brain anatomy,
outside the training range) gets neither by default, because whatever reaches a PACS is
read as a finding: its NIfTI, mosaic and ``_stats.json`` are still written for a person to
look at, and one note says why there is no SEG. ``--seg-flagged`` writes both anyway, their
descriptions beginning ``QC FLAGGED: `` and the reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.io.dicom_seg import SegContent, write_dicom_seg
from edgeseg.io.dicom_sr import VolumeReport, write_dicom_sr
from edgeseg.io.qc import Verdict


@dataclass(frozen=True)
class ResultTargets:
    """Where the SEG and the SR go, each with the hook that records it before its rename."""

    seg: Path
    sr: Path
    record_seg: Callable[[Path], None] | None = None
    record_sr: Callable[[Path], None] | None = None


def flagged_reasons(row: dict[str, Any]) -> str:
    """The QC reasons of a flagged scan's row (:meth:`edgeseg.io.qc.Verdict.from_row`), else ``""``."""
    verdict = Verdict.from_row(row) if row.get("qc") else None
    return verdict.text if verdict is not None and verdict.flagged else ""


def withheld(row: dict[str, Any], seg_only: bool, seg_flagged: bool) -> dict[str, str]:
    """What a flagged scan's summary row says when its SEG and SR are kept back: a ``message``,
    and no ``output`` where the SEG was its only labels file (``--format dicom-seg``)."""
    reasons = flagged_reasons(row)
    if not reasons or seg_flagged:
        return {}
    said = {"message": "QC flagged: no DICOM SEG or SR written (--seg-flagged writes them marked QC FLAGGED)"}
    return {**said, "output": ""} if seg_only else said


def volume_report(row: dict[str, Any], class_names: tuple[str, ...]) -> VolumeReport:
    """The SR's numbers from the scan's summary row: each foreground class's mL, QC and coverage."""
    volumes = {name: float(row.get(f"{name}_ml") or 0.0) for name in class_names[1:]}
    return VolumeReport(volumes, str(row.get("qc") or ""), str(row.get("coverage") or "unknown"))


def write_results(
    targets: ResultTargets,
    labels: np.ndarray,
    sources: tuple[tuple[Path, int], ...],
    affine: np.ndarray | None,
    row: dict[str, Any],
    model: tuple[Path, str, tuple[str, ...]],
    options: tuple[str, ...],
    colours: tuple[tuple[int, int, int], ...],
    seg_flagged: bool = False,
) -> str:
    """Write the SEG and the SR of one series, unless QC flagged it and ``seg_flagged`` is off.

    Args:
        targets: the two files and their record hooks.
        labels: ``(columns, rows, slices)`` labels of the series (the NIfTI's layout).
        sources: ``(file, frame)`` of each slice (``Decoded.sources``).
        affine: the series' affine as read (its third column is the step between slice
            centres); None for a single slice, whose header then gives its thickness.
        row: the scan's summary row (volumes, ``qc``, ``qc_status``, ``coverage``).
        model: ``(onnx path, its SHA-256, class names)``.
        options: the settings that change labels, for the deterministic UIDs.
        colours: RGB per class index, as the QC mosaic draws them.
        seg_flagged: write them for a flagged scan too (``--seg-flagged``).

    Returns:
        ``""`` when both were written, else why not (a note for the run's output).
    """
    path, sha256, class_names = model
    reasons = flagged_reasons(row)
    if reasons and not seg_flagged:
        for stale in (targets.seg, targets.sr):  # an earlier --seg-flagged run's: it would still be sent
            stale.unlink(missing_ok=True)
        return f"QC flagged it ({reasons}): no DICOM SEG or SR written; --seg-flagged writes them marked QC FLAGGED"
    content = SegContent(options, reasons, colours)
    slice_mm = float(np.linalg.norm(affine[:3, 2])) if affine is not None else None
    seg, source = write_dicom_seg(
        targets.seg, labels, sources, class_names, path, sha256, targets.record_seg, content, slice_mm
    )
    write_dicom_sr(targets.sr, seg, source, volume_report(row, class_names), path, sha256, content, targets.record_sr)
    return ""
