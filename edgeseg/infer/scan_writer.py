"""Writing one scan's outputs: labels, QC mosaic, ``_stats.json``, brain mask, DICOM SEG and SR.

Torch-free. :class:`ScanOutputs` is the writing half of :class:`edgeseg.infer.segment.Segmenter`
(a base class of it, so a Dask worker's segmenter guards the same ``_write`` it overrides),
run on the loop's writer threads while the model works on the next scan. Every output is
written atomically (:func:`edgeseg.files.atomic_write`), and its ``records.jsonl`` line goes
in before its rename, so a ``kill -9`` leaves no output without its record; if one output
fails (a full disk), the others the scan has are removed, so that no overlay or
``_stats.json`` is left without its labels and the scan is simply not done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.artifacts import ModelInfo
from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write, sha256_file
from edgeseg.infer.config import MOSAIC_KINDS, InferConfig
from edgeseg.io.dicom_results import ResultTargets, write_results
from edgeseg.io.outputs import PALETTE, label_nifti, safe_output_path, write_labels, write_overlay, write_stats
from edgeseg.io.records import InputStamp, Record, Records
from edgeseg.io.scan_files import Scan
from edgeseg.io.scan_readers import Decoded
from edgeseg.names import mask_rel, overlay_rel, seg_rel, sr_rel, stats_rel


class ScanOutputs:
    """The outputs of a segmented scan, under ``out``; the scan loop's state it writes with."""

    out: Path
    info: ModelInfo
    config: InferConfig
    records: Records
    model_sha256: str
    _local: threading.local  # .caught: the warnings of the scan this thread handles
    say: Callable[..., None]

    def _wants_overlay(self, scan: Scan) -> bool:
        """Whether ``scan`` gets a QC mosaic: as asked, else for volumes only."""
        return self.config.overlay if self.config.overlay is not None else scan.kind in MOSAIC_KINDS

    def _seg_beside(self, scan: Scan) -> Path | None:
        """Where the DICOM SEG written beside the NIfTI goes (``--format both``), else None."""
        return seg_rel(scan.rel) if scan.kind == "dicom" and self.config.format == "both" else None

    def _write(
        self, scan: Scan, dec: Decoded, labels: np.ndarray, stamps: tuple[InputStamp, ...], row: dict[str, Any]
    ) -> None:
        """Write the outputs of ``scan``; if one fails (a full disk), remove the others it has, so
        that no overlay or ``_stats.json`` is left without its labels and the scan is simply not done."""
        try:
            self._write_outputs(scan, dec, labels, stamps, row)
        except BaseException:
            made = (
                *(scan.rel, overlay_rel(scan.rel), stats_rel(scan.rel), mask_rel(scan.rel)),
                *(self._seg_beside(scan), sr_rel(scan.rel) if scan.kind == "dicom" else None),
            )
            for rel in filter(None, made):
                with suppress(EdgesegError, OSError):  # a name that escapes --out was never written
                    safe_output_path(self.out, rel).unlink(missing_ok=True)
            raise

    def _write_outputs(
        self, scan: Scan, dec: Decoded, labels: np.ndarray, stamps: tuple[InputStamp, ...], row: dict[str, Any]
    ) -> None:
        """Overlay (or remove a stale one), then labels; the record goes in before their rename."""
        target = safe_output_path(self.out, scan.rel)
        overlay, overlay_sha = safe_output_path(self.out, overlay_rel(scan.rel)), [""]
        if self._wants_overlay(scan):
            write_overlay(
                overlay,
                dec,
                labels,
                scan.path,
                self.info.class_names,
                lambda tmp: overlay_sha.__setitem__(0, sha256_file(tmp)),
            )
        else:
            overlay.unlink(missing_ok=True)  # from an earlier run: it would show old labels

        def record(tmp: Path, rel: Path = scan.rel, overlay_sha256: str = "", ms: str = "") -> None:
            self.records.add(Record(str(rel), stamps, sha256_file(tmp), overlay_sha256, ms))

        restored = dec.restore(labels)
        stats = stats_rel(scan.rel)
        write_stats(
            safe_output_path(self.out, stats),
            row,
            self.info,
            self.model_sha256,
            lambda tmp: record(tmp, stats, ms=row.get("ms", "")),
        )
        if dec.brain_raw is not None:
            brain = label_nifti(dec.brain_raw.astype(np.uint8), dec.template, 2)
            rel = mask_rel(scan.rel)
            atomic_write(
                safe_output_path(self.out, rel), lambda tmp: brain.to_filename(str(tmp)), lambda tmp: record(tmp, rel)
            )
        if (extra := self._seg_beside(scan)) is not None:  # beside the NIfTI: a SEG that cannot be is a note
            try:
                seg = safe_output_path(self.out, extra)
                self._seg(scan, dec, restored, row, self._targets(scan, seg, lambda tmp: record(tmp, extra), record))
            except EdgesegError as exc:
                self.say(f"note: {scan.path}: no DICOM SEG beside {scan.rel}: {str(exc).split(': ', 1)[-1]}")
        if scan.kind == "dicom" and self.config.format == "dicom-seg":
            labelled = lambda tmp: record(tmp, overlay_sha256=overlay_sha[0])  # noqa: E731
            self._seg(scan, dec, restored, row, self._targets(scan, target, labelled, record))
        else:
            write_labels(
                target,
                scan.kind,
                restored,
                dec,
                self.info.class_names,
                lambda tmp: record(tmp, overlay_sha256=overlay_sha[0]),
            )

    def _targets(self, scan: Scan, seg: Path, record_seg: Any, record: Any) -> ResultTargets:
        """The SEG at ``seg`` and the SR beside it, with the hooks that record them."""
        sr = sr_rel(scan.rel)
        return ResultTargets(seg, safe_output_path(self.out, sr), record_seg, lambda tmp: record(tmp, sr))

    def _seg(self, scan: Scan, dec: Decoded, labels: np.ndarray, row: dict, targets: ResultTargets) -> None:
        """Write the DICOM SEG and SR (:mod:`edgeseg.io.dicom_results`: none for a scan QC flagged,
        unless --seg-flagged); what pydicom/highdicom warn that the reader did not is a note."""
        self._local.caught = caught = []  # see warned(): this thread's warnings
        names, config = self.info.class_names, self.config
        options = (f"axis={config.axis}", f"resample={config.resample}", f"skull={config.skull_strip}")
        options += (f"crop={config.crop}",)  # what changes the labels: in the SEG's and SR's UIDs
        try:
            why = write_results(
                targets,
                labels,
                dec.sources,
                dec.template.affine if len(dec.sources) > 1 else None,
                row,
                (self.info.path, self.model_sha256, names),
                options,
                tuple(PALETTE[i % len(PALETTE)] for i in range(len(names))),
                config.seg_flagged,
            )
        finally:
            self._local.caught = None
        if why:
            self.say(f"note: {scan.path}: {why}")
        for text in dict.fromkeys(caught):
            if not any(note.endswith(f"the reader warned: {text}") for note in dec.notes):
                self.say(f"note: {scan.path}: the DICOM SEG writer warned: {text}")
