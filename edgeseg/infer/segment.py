"""The per-scan work of `edgeseg infer`: read, run the model in batches, QC, write, record.

:class:`Segmenter` is the scan loop of one process: prefetching reads, batched inference
through an :class:`edgeseg.runtime.runners.Runner` (fetching logits, for the QC confidence figures
and for resampling, and the graph's labels), background atomic writes, one ``records.jsonl`` entry per output.
:func:`edgeseg.infer.run.run_inference` drives it locally; :mod:`edgeseg.infer.cluster` runs one per
Dask worker. Around this loop, each in its own module so that the loop reads top to bottom:
the command's configuration, report and runner choice (:mod:`edgeseg.infer.config`), a scan's
summary row and QC columns (:mod:`edgeseg.io.scan_rows`), and the writing of its outputs
(:mod:`edgeseg.infer.scan_writer`, a base class of :class:`Segmenter`).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.artifacts import ModelInfo
from edgeseg.errors import DiskFull
from edgeseg.files import sha256_file
from edgeseg.infer.config import InferConfig, InferReport, Segmented
from edgeseg.infer.crop import GRIDS, Crop, plan_crop
from edgeseg.infer.scan_writer import ScanOutputs
from edgeseg.io.dicom_results import withheld
from edgeseg.io.outputs import previous_rows, read_labels, volumes_cover, write_summary
from edgeseg.io.qc import MEAN_SUFFIX, QCCounter, Verdict
from edgeseg.io.records import InputStamp, Records, stamp_inputs
from edgeseg.io.scan_files import Scan
from edgeseg.io.scan_readers import Decoded, resample
from edgeseg.io.scan_rows import KEPT_NOW, qc_columns, reason, summary_row
from edgeseg.io.scans import read_scan
from edgeseg.metrics import class_counts
from edgeseg.names import mask_rel, overlay_rel, sr_rel, stats_rel


class Segmenter(ScanOutputs):
    """The scan loop: prefetching reads, batched inference, background atomic writes."""

    def __init__(self, session: Any, provider: str, info: ModelInfo, config: InferConfig, out: Path) -> None:
        """``session``: the :class:`edgeseg.runtime.runners.Runner` fetching logits (a Dask client for a
        cluster run)."""
        from rich.console import Console

        self.session, self.info, self.config, self.out = session, info, config, out
        self.report = InferReport(provider)
        self.stdout, self.stderr = Console(), Console(stderr=True)
        self.progress: Any = None
        self.records = Records(out)
        self.model_sha256 = sha256_file(info.path)  # identifies the algorithm in DICOM SEG outputs
        self._local = threading.local()  # .caught: warnings of the scan this thread reads
        self._showwarning = warnings.showwarning

    def say(self, text: str, error: bool = False) -> None:
        """One unwrapped line: errors always, the rest unless quiet."""
        if error or not self.config.quiet:
            console = self.progress.console if self.progress else (self.stderr if error else self.stdout)
            console.print(text, markup=False, highlight=False, soft_wrap=True)

    def warned(self, message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        """``warnings.showwarning`` for the run: a reader's warning is kept for its scan."""
        caught = getattr(self._local, "caught", None)
        if caught is None:  # not while reading a scan: as Python would show it
            self._showwarning(message, category, *args, **kwargs)
            return
        text = str(message).strip()
        caught.append(text.splitlines()[0][:200] if text else category.__name__)

    def run(self, scans: list[Scan], problems: list[tuple[Path, str]]) -> InferReport:
        rows = previous_rows(self.out, self.records.latest)
        start = time.perf_counter()
        try:
            with self._progress(len(scans)) as self.progress:
                for path, reason in problems:
                    rows[f"!{path}"] = self._failed(Scan(path, "", Path()), reason)
                self._loop(scans, rows)
        finally:
            self.progress = None
            self.report.seconds = time.perf_counter() - start
            self.report.rows = list(rows.values())
            self.report.summary = write_summary(self.out, self.report.rows, self.info)
            self.records.compact()
        return self.report

    def _progress(self, total: int) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=self.stderr,
            transient=True,
            disable=self.config.quiet or not self.stderr.is_terminal,
        )
        self.scan_task = progress.add_task("scans", total=total)
        self.slice_task = progress.add_task("slices", total=0)
        return progress

    def _loop(self, scans: list[Scan], rows: dict[str, dict[str, Any]]) -> None:
        todo = iter(scans)
        reads: deque[tuple[Scan, Future | None]] = deque()
        writes: deque[tuple[Scan, Future]] = deque()
        pool = ThreadPoolExecutor(max(1, self.config.workers))
        try:
            while True:
                while len(reads) <= self.config.prefetch and (scan := next(todo, None)):
                    reads.append((scan, None if self._finished(scan) else pool.submit(self._read, scan)))
                if not reads:
                    break
                scan, future = reads.popleft()
                if future is None:
                    rows[str(scan.rel)] = self._skipped(scan, rows.get(str(scan.rel)))
                    continue
                job = self._infer(scan, future, rows, pool)
                if job is not None:
                    writes.append((scan, job))
                self._drain(writes, rows, keep=self.config.prefetch)
        except BaseException:  # Ctrl-C: drop the reads unwaited, finish (and record) the writes
            pool.shutdown(wait=False, cancel_futures=True)
            self._drain(writes, rows, keep=0)
            raise
        self._drain(writes, rows, keep=0)
        pool.shutdown()

    def _finished(self, scan: Scan) -> bool:
        """True to skip ``scan``: its outputs exist, match their record and its input is unchanged."""
        overlay = str(overlay_rel(scan.rel)) if self._wants_overlay(scan) else None
        extra = self._seg_beside(scan)
        if extra is not None and str(extra) not in self.records.latest:
            extra = None  # none was made (a series without geometry, or a run before SEG outputs)
        mask = mask_rel(scan.rel) if self.config.skull_strip else None
        stats = stats_rel(scan.rel)
        report = sr_rel(scan.rel) if str(sr_rel(scan.rel)) in self.records.latest else None  # DICOM SR, if made
        targets = [scan.rel] + ([Path(overlay)] if overlay else []) + [t for t in (extra, mask, stats, report) if t]
        if self.config.overwrite or not all((self.out / t).is_file() for t in targets):
            return False
        why, rel = self.records.verdict(self.out, str(scan.rel), _files(scan), overlay), scan.rel
        for also in (extra, mask, stats, report):
            if also and not why:
                why, rel = self.records.verdict(self.out, str(also), _files(scan), None), also
        if why:
            self.say(f"redoing {scan.path}: {why} (output {rel})")
            self.report.redone += 1
        return why is None

    def _read(self, scan: Scan) -> tuple[Decoded, tuple[InputStamp, ...]]:
        """Decode ``scan`` and stamp its input files; warnings while reading become notes."""
        model_mm = self.info.pixel_spacing_mm if self.config.resample else None
        stamps = stamp_inputs(_files(scan))  # before reading: a change meanwhile shows next run
        self._local.caught = caught = []  # filled by warned() from this thread only
        try:
            dec = read_scan(
                scan.path,
                scan.kind,
                scan.files,
                self.config.axis,
                self.info.min_size,
                model_mm,
                self.config.skull_strip,
                self.config.max_resampled_pixels,
                self.config.max_decompressed_mb << 20,
            )
        finally:
            self._local.caught = None
        dec.notes += [f"{scan.path}: the reader warned: {w}" for w in dict.fromkeys(caught)]
        return dec, stamps

    def _infer(self, scan: Scan, future: Future, rows: dict, pool: ThreadPoolExecutor) -> Any:
        """Decode result -> labels -> submit the write; a failure becomes a row."""
        try:
            dec, stamps = future.result()
            labels, seconds, figures, crop = self._segment(scan, dec)
        except Exception as exc:  # any bad scan: one line, and the run goes on
            rows[str(scan.rel)] = self._failed(scan, reason(exc))
            return None
        done = self._segmented(scan, dec, labels, seconds, figures, crop)
        rows[str(scan.rel)] = self._count(done)
        return pool.submit(self._write, scan, dec, labels, stamps, done.row)

    def process(self, scan: Scan) -> Segmented:
        """Read, segment and write one scan in this thread: a cluster worker's unit of work."""
        dec, stamps = self._read(scan)
        labels, seconds, figures, crop = self._segment(scan, dec)
        done = self._segmented(scan, dec, labels, seconds, figures, crop)
        self._write(scan, dec, labels, stamps, done.row)
        return done

    def _segmented(
        self,
        scan: Scan,
        dec: Decoded,
        labels: np.ndarray,
        seconds: float,
        figures: dict[str, float],
        crop: Crop | None = None,
    ) -> Segmented:
        row = summary_row(self.info, self.report.provider, scan, "done", labels, dec.voxel_ml, seconds * 1e3, dec)
        row.update(
            {
                **qc_columns(figures, labels, dec, self.info),
                **{k: f"{v:.6g}" for k, v in figures.items() if k.endswith(MEAN_SUFFIX)},
            }
        )
        row["volumes"] = volumes_cover(row)
        if scan.kind == "dicom" and self.config.format != "nifti":  # QC may keep its SEG and SR back
            row.update(withheld(row, self.config.format == "dicom-seg", self.config.seg_flagged))
        return Segmented(row, len(labels), seconds, dec.model_size is not None, dec.notes, crop is not None)

    def _count(self, done: Segmented) -> dict[str, Any]:
        """Count a segmented scan in the report, show its notes, advance the bar; its row."""
        self.report.model_seconds += done.seconds
        self.report.slices += done.slices
        self.report.resampled += done.resampled
        self.report.cropped += done.cropped
        for note in done.notes:
            self.say(f"note: {note}")
        self._flag(done.row)
        self.report.done += 1
        self.progress.advance(self.scan_task)
        return done.row

    def _segment(self, scan: Scan, dec: Decoded) -> tuple[np.ndarray, float, dict[str, float], Crop | None]:
        """Run the stack through the model in batches: labels, seconds in the model, the QC
        figures (:mod:`edgeseg.io.qc`) with each class's mean intensity (``<class>_mean_intensity``),
        and the brain box the model ran on (None: whole slices)."""
        count, (h, w) = len(dec.stack), dec.stack.shape[1:]
        labels = np.empty((count, h, w), dtype=np.uint8)
        self.progress.reset(self.slice_task, total=count, description=f"slices {scan.path.name}")
        seconds, counter = 0.0, QCCounter.for_classes(self.info.class_names)
        names = self.info.class_names
        sums = np.zeros(len(names))  # intensity per class on the scan's own grid, for the means
        crop = self._crop(scan, dec)
        for start in range(0, count, max(1, self.config.batch_size)):
            batch = dec.batch(start, start + self.config.batch_size, scan.path, dec.model_size)
            assert batch.shape[2:] == dec.model_shape, (batch.shape, dec.model_shape)
            tick = time.perf_counter()
            fetched = self.session.run(crop.cut(batch) if crop else batch)  # FETCHED: logits, labels
            if crop is not None and crop.touches(fetched["labels"]):  # brain at the box's edge: whole slices
                fetched, whole = self.session.run(batch), True
            else:
                whole = crop is None
            seconds += time.perf_counter() - tick
            logits, out = fetched["logits"], fetched["labels"]
            if crop is not None and not whole:  # back into the whole frame: background outside the box
                logits, out = crop.paste(logits, out)
            counter.add(logits, out, batch[:, 0])  # on the model's grid, as export measured the ranges
            if dec.model_size:  # (n, C, H', W') logits -> (n, C, H, W) -> (n, H, W) labels
                out = resample(logits, (h, w), order=1).argmax(1)
            labels[start : start + len(batch)] = out
            if dec.brain is not None:  # --skull-strip: nothing outside the brain mask
                labels[start : start + len(batch)][~dec.brain[start : start + len(batch)]] = 0
            native = np.asarray(dec.stack[start : start + len(batch)], np.float64) * dec.slope + dec.inter
            sums += np.bincount(labels[start : start + len(batch)].ravel(), native.ravel(), len(names))[: len(names)]
            self.progress.advance(self.slice_task, len(batch))
        self.report.provider = self.session.label_so_far  # what ran, read back once it has run
        counts = class_counts(labels, len(names))
        means = {f"{n}{MEAN_SUFFIX}": sums[i] / counts[i] for i, n in enumerate(names) if counts[i]}
        return labels, seconds, {**counter.figures(), **counter.anatomy(), **means}, crop

    def _crop(self, scan: Scan, dec: Decoded) -> Crop | None:
        """The volume's brain box on the model's grid (:mod:`edgeseg.infer.crop`); None: --no-crop, a
        model whose labels depend on the framing (contract < 3), or too little to save."""
        grid = GRIDS.get(self.info.normalization_contract)
        if not self.config.crop or grid is None or not len(dec.stack):
            return None
        step = max(1, self.config.batch_size)
        chunks = (dec.batch(i, i + step, scan.path, dec.model_size)[:, 0] for i in range(0, len(dec.stack), step))
        return plan_crop(chunks, grid, self.info.min_size)

    def _drain(self, writes: deque, rows: dict, keep: int) -> None:
        """Wait for writes until at most ``keep`` are pending; a failed write fails its scan.

        A full disk would fail every later scan too: the writes in flight are waited for and
        :class:`DiskFull` is raised, to stop the run (the caller says so, once).
        """
        full: DiskFull | None = None
        while len(writes) > (0 if full else keep):
            scan, job = writes.popleft()
            try:
                job.result()
            except Exception as exc:  # disk full, permissions, a path escaping --out
                self.report.done -= 1
                full = full or (exc if isinstance(exc, DiskFull) else None)
                rows[str(scan.rel)] = self._failed(scan, reason(exc), counted=True, say=not isinstance(exc, DiskFull))
        if full is not None:
            raise full

    def _failed(self, scan: Scan, reason: str, counted: bool = False, say: bool = True) -> dict[str, Any]:
        """Report one failed scan in one line (unless ``say`` is off: the caller's line tells it);
        ``counted``: already advanced the bar."""
        self.report.failed += 1
        if not counted:
            self.progress.advance(self.scan_task)
        short = reason.removeprefix(f"{scan.path}: ")  # messages name their file already
        where = f"{scan.path} ({scan.series})" if scan.series else scan.path
        if say:
            self.say(f"FAILED {where}: {short}", error=True)
        return {
            **summary_row(self.info, self.report.provider, scan, "failed", None, None, None),
            "output": "",
            "message": reason,
        }

    def _skipped(self, scan: Scan, previous: dict[str, Any] | None) -> dict[str, Any]:
        """Row of a scan finished by an earlier run, from its output (and old row)."""
        self.report.skipped += 1
        self.progress.advance(self.scan_task)
        try:
            labels, voxel_ml = read_labels(self.out / scan.rel)
        except Exception as exc:  # the output exists but cannot be read back
            return {
                **summary_row(self.info, self.report.provider, scan, "done", None, None, None),
                "message": reason(exc),
            }
        if previous and previous.get("voxel_ml"):  # our own record (_stats.json) of what was read, before
            voxel_ml = float(previous["voxel_ml"])  # what an output's header says (a SEG's rounded spacing)
        row = summary_row(self.info, self.report.provider, scan, "done", labels, voxel_ml, None)
        if previous:  # every other column (QC, provider, time, ...) as the run that made it wrote it
            row.update({k: v for k, v in previous.items() if k not in KEPT_NOW and v not in (None, "")})
        self._flag(row)
        return row

    def _flag(self, row: dict[str, Any]) -> None:
        """Name a scan that QC flagged in the run's last warning."""
        if row.get("qc") and Verdict.from_row(row).flagged:
            self.report.flagged.append((Path(row["input"]), row["qc"]))


def _files(scan: Scan) -> tuple[Path, ...]:
    """The input files of ``scan`` (a DICOM folder's files, else the file itself)."""
    return scan.files or (scan.path,)
