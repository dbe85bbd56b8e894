"""The per-scan work of `edgeseg infer`: read, run the model in batches, QC, write, record.

:class:`Segmenter` is the scan loop of one process: prefetching reads, batched inference
through an :class:`edgeseg.runtime.Runner` (fetching logits, for the QC confidence figures
and for resampling, and the graph's labels), background atomic writes, one ``records.jsonl`` entry per output.
:func:`edgeseg.infer.run_inference` drives it locally; :mod:`edgeseg.cluster` runs one per
Dask worker. :class:`InferConfig` is the command's configuration, :class:`InferReport` its result,
and :func:`choose_runner` the file and runner that ``--backend`` asks for (here, below both, so
that a worker chooses exactly as a local run does).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.artifacts import ModelInfo, read_model_info
from edgeseg.crop import GRIDS, Crop, plan_crop
from edgeseg.dicom_results import ResultTargets, withheld, write_results
from edgeseg.errors import DiskFull, EdgesegError, describe
from edgeseg.files import atomic_write, sha256_file
from edgeseg.names import mask_rel, overlay_rel, seg_rel, sr_rel, stats_rel
from edgeseg.outputs import (
    PALETTE,
    label_nifti,
    previous_rows,
    read_labels,
    safe_output_path,
    volumes_cover,
    write_labels,
    write_overlay,
    write_stats,
    write_summary,
)
from edgeseg.qc import FIGURES, MEAN_SUFFIX, METADATA_KEY, QCCounter, Verdict, coverage, parse_ranges, verdict
from edgeseg.qc_anatomy import ANATOMY, anatomy_reasons
from edgeseg.records import InputStamp, Record, Records, stamp_inputs
from edgeseg.runtime import RunnerSpec
from edgeseg.scans import MAX_RESAMPLED_PIXELS, Decoded, Scan, read_scan, resample
from edgeseg.sizes import MAX_GUNZIPPED_BYTES

FORMATS = ("nifti", "dicom-seg", "both")  # outputs of a DICOM input
# What the runner fetches per batch: logits for the QC confidence figures and for resampling, and
# the graph's own ArgMax, cheaper than numpy's on the logits (README, QC cost).
FETCHED = ("logits", "labels")
BACKENDS = ("auto", "ort", "openvino")  # --backend
# Inputs whose QC mosaic is written unless --no-overlay: volumes, where one label file is hard to
# judge by eye. A .npy or PNG input is one slice (or a stack without geometry) whose label PNG/array
# is already what a reader opens; --overlay gives them a mosaic too.
MOSAIC_KINDS = ("nifti", "dicom")
# Columns of a skipped scan's row that say what this run found, not what the earlier run wrote.
KEPT_NOW = ("input", "status", "output", "message")


@dataclass
class InferConfig:
    """Options of one `edgeseg infer` run."""

    model: Path | None = None  # None: the shipped export/model.onnx
    out: Path = Path("segmentations")  # output root; mirrors the input tree
    backend: str = "auto"  # auto (edgeseg tune's pick for this machine, else ort on the file as given), ort, openvino
    provider: str = "auto"  # auto (TensorRT > CUDA > CPU that really work), cpu, cuda, tensorrt
    threads: int | None = None  # onnxruntime intra-op threads; None: one per physical core
    batch_size: int = 8  # slices per session.run; also the TensorRT profile's batch
    axis: int | None = None  # volume axis to slice along; None: acquisition axis, else axial
    overlay: bool | None = None  # <name>_overlay.png, the QC mosaic; None: for volumes (MOSAIC_KINDS) only
    overwrite: bool = False  # redo scans whose outputs exist (default: skip them, i.e. resume)
    prefetch: int = 2  # scans decoded ahead of the one on the model
    workers: int = 2  # threads that read and write scans
    quiet: bool = False  # no progress bar or report lines (failures still reported)
    resample: bool = True  # resample slices in-plane to the model's pixel spacing when both are known
    cluster: str | None = None  # Dask scheduler address or local:N (edgeseg.cluster); None: this process
    cluster_timeout: float = 30.0  # --cluster: seconds with no worker that can run a scan before the run stops
    series: str | None = None  # DICOM: only series with this UID or SeriesDescription pattern
    force: bool = False  # DICOM: also segment series whose Modality is not MR
    format: str = "both"  # DICOM inputs: nifti | dicom-seg | both (SEG for PACS, NIfTI for research)
    seg_flagged: bool = False  # DICOM SEG and SR for scans QC flagged too, marked "QC FLAGGED: <reasons>"
    skull_strip: bool = False  # ROBEX brain mask first (NIfTI/DICOM); labels outside it are 0
    max_resampled_pixels: int = MAX_RESAMPLED_PIXELS  # H x W a slice may grow to by resampling
    max_decompressed_mb: int = MAX_GUNZIPPED_BYTES >> 20  # MiB a .nii.gz may decompress to
    # run the model on each volume's brain box only (edgeseg.crop); --no-crop: whole slices. QC is the
    # same either way: signed (CT) volumes are not cropped, brain at a box edge reruns whole slices.
    crop: bool = True


@dataclass
class InferReport:
    """What a run did: counts, one summary row per scan, throughput."""

    provider: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0
    failed: int = 0
    skipped: int = 0  # outputs already there, intact and up to date (resume)
    redone: int = 0  # outputs already there but damaged or stale, made again (within done)
    ignored: int = 0  # files of unsupported types met while walking folders
    ignored_files: list[Path] = field(default_factory=list)
    set_aside: list[tuple[Path, str]] = field(default_factory=list)  # DICOM that is no image, or not selected
    flagged: list[tuple[Path, str]] = field(default_factory=list)  # QC figures outside the model's ranges
    slices: int = 0
    resampled: int = 0  # scans whose slices went to the model at its pixel spacing
    cropped: int = 0  # scans whose model ran on their brain's box only (edgeseg.crop)
    seconds: float = 0.0  # wall time of the scan loop
    model_seconds: float = 0.0  # time inside session.run
    summary: Path | None = None

    @property
    def slices_per_s(self) -> float:
        return self.slices / self.seconds if self.seconds else 0.0

    @property
    def model_slices_per_s(self) -> float:
        return self.slices / self.model_seconds if self.model_seconds else 0.0


@dataclass
class Segmented:
    """What the report keeps of one segmented scan (built where it was segmented)."""

    row: dict[str, Any]  # its summary.csv row
    slices: int
    seconds: float  # inside session.run
    resampled: bool  # went to the model at its pixel spacing
    notes: list[str]  # lines to show about it
    cropped: bool = False  # the model ran on its brain's box only


class Segmenter:
    """The scan loop: prefetching reads, batched inference, background atomic writes."""

    def __init__(self, session: Any, provider: str, info: ModelInfo, config: InferConfig, out: Path) -> None:
        """``session``: the :class:`edgeseg.runtime.Runner` fetching logits (a Dask client for a cluster run)."""
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

    def _wants_overlay(self, scan: Scan) -> bool:
        """Whether ``scan`` gets a QC mosaic: as asked, else for volumes only."""
        return self.config.overlay if self.config.overlay is not None else scan.kind in MOSAIC_KINDS

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

    def _seg_beside(self, scan: Scan) -> Path | None:
        """Where the DICOM SEG written beside the NIfTI goes (``--format both``), else None."""
        return seg_rel(scan.rel) if scan.kind == "dicom" and self.config.format == "both" else None

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
        row = self._row(scan, "done", labels, dec.voxel_ml, seconds * 1e3, dec)
        row.update(
            {**self._qc(figures, labels, dec), **{k: f"{v:.6g}" for k, v in figures.items() if k.endswith(MEAN_SUFFIX)}}
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
        figures (:mod:`edgeseg.qc`) with each class's mean intensity (``<class>_mean_intensity``),
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
        counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
        means = {f"{n}{MEAN_SUFFIX}": sums[i] / counts[i] for i, n in enumerate(names) if counts[i]}
        return labels, seconds, {**counter.figures(), **counter.anatomy(), **means}, crop

    def _crop(self, scan: Scan, dec: Decoded) -> Crop | None:
        """The volume's brain box on the model's grid (:mod:`edgeseg.crop`); None: --no-crop, a
        model whose labels depend on the framing (contract < 3), or too little to save."""
        grid = GRIDS.get(self.info.normalization_contract)
        if not self.config.crop or grid is None or not len(dec.stack):
            return None
        step = max(1, self.config.batch_size)
        chunks = (dec.batch(i, i + step, scan.path, dec.model_size)[:, 0] for i in range(0, len(dec.stack), step))
        return plan_crop(chunks, grid, self.info.min_size)

    def _qc(self, figures: dict[str, float], labels: np.ndarray, dec: Decoded) -> dict[str, str]:
        """The QC columns of a row: the figures, the verdict (:class:`edgeseg.qc.Verdict`) against
        the model's ranges, and the coverage along the slice axis."""
        shape = {k: figures[k] for k in ANATOMY if k in figures}
        figures = {k: figures[k] for k in FIGURES if k in figures}  # not the mean intensities
        cover = coverage(np.count_nonzero(labels.reshape(len(labels), -1), axis=1), slice_mm(dec))
        ranges = parse_ranges(self.info.metadata.get(METADATA_KEY))
        judged = verdict(figures, ranges, anatomy_reasons(shape), cover)
        return {**{k: f"{v:.4g}" for k, v in {**figures, **shape}.items()}, **verdict_columns(judged)}

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
        """Write the DICOM SEG and SR (:mod:`edgeseg.dicom_results`: none for a scan QC flagged,
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

    def _row(
        self,
        scan: Scan,
        status: str,
        labels: np.ndarray | None,
        voxel_ml: float | None,
        ms: float | None,
        dec: Decoded | None = None,
    ) -> dict[str, Any]:
        names = self.info.class_names
        row: dict[str, Any] = {
            "input": str(scan.path),
            "series": scan.series,
            "status": status,
            "output": str(scan.rel) if scan.rel.parts else "",
            "provider": self.report.provider if ms is not None else "",
            "ms": f"{ms:.1f}" if ms is not None else "",
        }
        if dec is not None:
            mm = self.info.pixel_spacing_mm
            row["spacing_mm"] = "x".join(f"{v:g}" for v in dec.spacing) if dec.spacing else ""
            row["model_spacing_mm"] = f"{mm:g}" if mm is not None else ""
            row["model_shape"] = "x".join(map(str, dec.model_shape))
            row["resampled"] = "yes" if dec.model_size else "no"
        if labels is not None:
            counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
            row["shape"] = "x".join(map(str, dec.shape if dec else labels.shape))
            row["voxel_ml"] = f"{voxel_ml:.6g}" if voxel_ml else ""
            for name, n in zip(names, counts, strict=True):
                row[f"{name}_voxels"] = int(n)
                row[f"{name}_ml"] = f"{n * voxel_ml:.3f}" if voxel_ml else ""
            row["total_brain_ml"] = f"{counts[1:].sum() * voxel_ml:.3f}" if voxel_ml else ""  # every class but 0
        if dec is not None and dec.identifiers:  # DICOM: what links the result to its study (the stats JSON)
            row["dicom"] = dict(dec.identifiers)
        return row

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
        return {**self._row(scan, "failed", None, None, None), "output": "", "message": reason}

    def _skipped(self, scan: Scan, previous: dict[str, Any] | None) -> dict[str, Any]:
        """Row of a scan finished by an earlier run, from its output (and old row)."""
        self.report.skipped += 1
        self.progress.advance(self.scan_task)
        try:
            labels, voxel_ml = read_labels(self.out / scan.rel)
        except Exception as exc:  # the output exists but cannot be read back
            return {**self._row(scan, "done", None, None, None), "message": reason(exc)}
        if previous and previous.get("voxel_ml"):  # our own record (_stats.json) of what was read, before
            voxel_ml = float(previous["voxel_ml"])  # what an output's header says (a SEG's rounded spacing)
        row = self._row(scan, "done", labels, voxel_ml, None)
        if previous:  # every other column (QC, provider, time, ...) as the run that made it wrote it
            row.update({k: v for k, v in previous.items() if k not in KEPT_NOW and v not in (None, "")})
        self._flag(row)
        return row

    def _flag(self, row: dict[str, Any]) -> None:
        """Name a scan that QC flagged in the run's last warning."""
        if row.get("qc") and Verdict.from_row(row).flagged:
            self.report.flagged.append((Path(row["input"]), row["qc"]))


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


def _files(scan: Scan) -> tuple[Path, ...]:
    """The input files of ``scan`` (a DICOM folder's files, else the file itself)."""
    return scan.files or (scan.path,)


def reason(exc: BaseException) -> str:
    if os.environ.get("EDGESEG_DEBUG"):
        raise exc
    if isinstance(exc, EdgesegError):
        return str(exc)
    return describe(exc, typed=True)


def choose_runner(model: Path, config: InferConfig) -> tuple[Path, RunnerSpec, str]:
    """The file and runner ``--backend`` asks for, and a line saying why (empty: nothing to say).

    ``auto`` runs the pick of ``edgeseg tune`` (``MODEL.deploy.json``, :mod:`edgeseg.deploy`)
    where it was tuned on this machine, else ONNX Runtime on ``model`` with one line on how to tune.
    tune measures CPU backends only, so a GPU provider that works here (or is asked for) wins.
    """
    from edgeseg.deploy import choose_backend
    from edgeseg.runtime import resolve_providers

    ort = RunnerSpec("ort", config.provider, "fp32", config.threads or 0, config.batch_size, FETCHED)
    if config.backend not in BACKENDS:
        raise EdgesegError(f"--backend {config.backend}: unknown; choose one of {', '.join(BACKENDS)}")
    if config.backend == "ort":
        return model, ort, ""
    cpu = replace(ort, backend="openvino", device="cpu")
    if config.backend == "openvino":
        return model, replace(cpu, precision="int8" if read_model_info(model).precision == "int8" else "fp32"), ""
    if config.provider not in ("auto", "cpu") or len(resolve_providers(config.provider)) > 1:
        return model, ort, ""
    choice = choose_backend(model)
    if not choice.tuned:
        return model, ort, choice.note
    spec = replace(
        cpu if choice.backend == "openvino" else ort,
        precision=choice.precision,
        threads=config.threads or choice.threads or 0,
        hint=choice.hint,
    )
    return choice.path, spec, choice.note
