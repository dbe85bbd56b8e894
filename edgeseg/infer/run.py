"""`edgeseg infer`: segment scans with an exported ONNX model, torch-free.

    edgeseg infer scans/ --out segmentations/ [--model export/model.onnx] [--overlay|--no-overlay]

or from Python: ``run_inference([Path("scans")], InferConfig(out=Path("seg")))``.

Inputs are files or folders (walked recursively, chosen by extension): ``.npy`` slices
or stacks, PNG/JPEG/TIFF images, NIfTI volumes, DICOM files or series folders (see
:mod:`edgeseg.io.scan_files`, :mod:`edgeseg.io.scans` and :mod:`edgeseg.io.dicom`). ``--out`` mirrors the input tree and
gets ``summary.csv``. Reading the next scans overlaps with inference on the current one
(a small thread pool, bounded prefetch); slices go through the model in batches, and the
float32 ``logits`` of one batch at a time are fetched (for the QC confidence figures of
:mod:`edgeseg.io.qc`, and for resampling) with the graph's own ``labels`` (its ArgMax, cheaper
than numpy's), so memory stays bounded by a few raw scans.
DICOM series also get a DICOM SEG (:mod:`edgeseg.io.dicom_seg`; ``--format``). Volumes (NIfTI,
DICOM) get a QC mosaic ``<name>_overlay.png`` by default (:func:`edgeseg.io.outputs.write_overlay`;
``--overlay`` adds one for 2-D inputs too, ``--no-overlay`` writes none).
A bad scan is one line and the run goes on; every write is atomic. ``--out`` is checked
writable and locked (one run at a time) before any scan is read; ``records.jsonl`` there
keeps, per output, its input's size, mtime and SHA-256 and its own SHA-256, so a rerun
skips what is intact and up to date and redoes, saying why, what is damaged or stale.
Ctrl-C finishes the writes in flight, writes ``summary.csv`` and says how to resume.
Everything the model needs comes from its ONNX metadata. ``--cluster`` sends the scans to
Dask workers instead, the rest unchanged (:mod:`edgeseg.infer.cluster`).

Resolution: the network only knows the pixel size it was trained at (the demo's 0.5 mm,
metadata ``edgeseg.pixel_spacing_mm``). Slices of scans whose pixel size is known
(NIfTI, DICOM) are resampled in-plane to it, linearly, batch by batch, as nnU-Net and
MONAI do; ``--no-resample`` turns this off, and .npy/images (no pixel size) never are.
Their logits, not labels, are then resampled linearly back to the scan's own grid and
argmax'ed there: smoother boundaries than nearest-neighbour labels, and unbiased where
a native pixel falls between two model pixels; it costs a few ms per slice on a CPU,
small beside the U-Net. Labels keep the input's shape and affine.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from edgeseg.artifacts import ModelInfo, read_model_info
from edgeseg.errors import DiskFull, EdgesegError, Interrupted
from edgeseg.files import check_writable_dir
from edgeseg.infer.config import FORMATS, InferConfig, InferReport, choose_runner
from edgeseg.infer.segment import Segmenter
from edgeseg.io.records import OutLock
from edgeseg.io.scan_files import SUPPORTED, discover_scans
from edgeseg.names import seg_rel, written_by_edgeseg
from edgeseg.runtime.runners import open_runner
from edgeseg.signals import Stopped


def run_inference(inputs: Sequence[Path], config: InferConfig | None = None) -> InferReport:
    """Segment every scan under ``inputs``; see the module docstring.

    Args:
        inputs: files and folders.
        config: options; defaults to :class:`InferConfig`.

    Returns:
        The :class:`InferReport` (also written as ``summary.csv`` in ``config.out``).

    Raises:
        EdgesegError: missing or non-edgeseg model, unusable provider, an --out that is not
            writable or is in use by another run, or no scans at all; a full disk under --out,
            after the run stopped as on Ctrl-C. Bad scans do not raise: they are counted in
            ``report.failed``.
        Interrupted: on Ctrl-C (or SIGTERM, see :mod:`edgeseg.signals`), after finishing the
            writes in flight and writing summary.csv.
    """
    config = config or InferConfig()
    model = _model_path(config.model)
    info = read_model_info(model)
    out = Path(os.path.abspath(config.out))
    if config.format not in FORMATS:
        raise EdgesegError(f"--format {config.format}: unknown; choose one of {', '.join(FORMATS)}")
    scans, problems, ignored, set_aside = discover_scans(inputs, out, config.series, config.force)
    if config.format == "dicom-seg":  # the SEG is then the output that resume and summary.csv track
        scans = [replace(s, rel=seg_rel(s.rel)) if s.kind == "dicom" else s for s in scans]
    if not scans:  # nothing to run: one line, and no --out folder or summary.csv left behind
        if problems or set_aside:
            told = problems + set_aside
            raise EdgesegError(
                "; ".join(f"{path}: {reason}" for path, reason in told[:3])
                + ("; ..." if len(told) > 3 else "")
                + "; nothing to segment"
            )
        raise EdgesegError(f"{', '.join(map(str, inputs))}: no scans found; expected {SUPPORTED}")
    note = ""
    with ExitStack() as stack:
        if config.cluster:  # scans go to Dask workers, which build their own sessions
            from edgeseg.infer.cluster import ClusterRunner
            from edgeseg.infer.cluster_connect import connect

            runner_type, (session, provider) = ClusterRunner, stack.enter_context(connect(config))
        else:
            path, spec, note = choose_runner(model, config)
            net = open_runner(path, spec)
            if path != model:  # the tuned pick's own file (e.g. X_int8.onnx): its hash goes in DICOM SEGs
                info = read_model_info(path)
            runner_type, (session, provider) = Segmenter, (net, net.label_so_far)
        check_writable_dir(out)
        stack.enter_context(OutLock(out))
        stack.enter_context(warnings.catch_warnings())
        runner = runner_type(session, provider, info, config, out)
        warnings.showwarning = runner.warned  # library warnings become notes of their scan
        runner.say(
            f"model {info.path} ({info.precision}, classes {', '.join(info.class_names)}); running on {provider}"
        )
        if note:
            runner.say(note)
        runner.say(_resample_line(info, config.resample))
        if ignored:
            runner.say(_ignored_line(ignored))
        for path, reason in set_aside:
            runner.say(f"skipped {path}: {reason}")
        try:
            report = runner.run(scans, problems)
        except KeyboardInterrupt as exc:
            code = exc.code if isinstance(exc, Stopped) else 130
            raise Interrupted(_interrupted_line(runner.report, len(scans)), code) from None
        except DiskFull as exc:  # every later scan would fail too
            raise EdgesegError(_disk_full_line(runner.report, len(scans), exc)) from exc
    report.ignored, report.ignored_files, report.set_aside = len(ignored), ignored, set_aside
    if report.flagged:
        runner.say(_flagged_line(report.flagged), error=True)
    runner.say(_final_line(report))
    return report


def _model_path(model: Path | None) -> Path:
    from edgeseg import SHIPPED_MODEL

    path = Path(model) if model else SHIPPED_MODEL
    if not path.is_file():
        hint = "run `edgeseg export`" if model is None else "check the path"
        raise EdgesegError(f"{path}: model not found; {hint} or pass --model MODEL.onnx")
    return path


def _resample_line(info: ModelInfo, enabled: bool) -> str:
    mm = info.pixel_spacing_mm
    if mm is None:
        return (
            "resolution: the model does not record its training pixel spacing, so slices go"
            " in at their own pixel size; re-export it with a current `edgeseg export`"
        )
    if not enabled:
        return (
            f"resolution: --no-resample, slices go in at their own pixel size although the"
            f" model was trained at {mm:g} mm"
        )
    return (
        f"resolution: slices of known pixel size (NIfTI, DICOM) are resampled to the model's"
        f" {mm:g} mm (linear) and labels come back on each scan's own grid; see summary.csv"
    )


def _ignored_line(ignored: list[Path], show: int = 5) -> str:
    ours = [p for p in ignored if written_by_edgeseg(p.name)]
    other = [p for p in ignored if not written_by_edgeseg(p.name)]
    parts = []
    if other:
        parts.append(f"ignored {len(other)} file(s) of other types ({SUPPORTED} are read): {_some(other, show)}")
    if ours:
        parts.append(f"ignored {len(ours)} file(s) that edgeseg wrote (never segmented again): {_some(ours, show)}")
    return "; ".join(parts)


def _some(paths: list[Path], show: int) -> str:
    more = f" and {len(paths) - show} more" if len(paths) > show else ""
    return f"{', '.join(map(str, paths[:show]))}{more}"


def _interrupted_line(r: InferReport, total: int) -> str:
    return (
        f"{_so_far(r, total)}; finished outputs are complete and summary.csv is written;"
        " rerun the same command to do the rest"
    )


def _disk_full_line(r: InferReport, total: int, exc: DiskFull) -> str:
    summary = "summary.csv is written" if r.summary else "summary.csv could not be written (the next run rebuilds it)"
    return (
        f"{exc.path}: {exc.why}; stopped: {_so_far(r, total)}; finished outputs are complete and {summary};"
        " free some space there (or choose another --out), then rerun the same command to do the rest"
    )


def _so_far(r: InferReport, total: int) -> str:
    return f"{r.done} scan(s) finished in this run, {r.skipped} were already done, {r.failed} failed, of {total}"


def _flagged_line(flagged: list[tuple[Path, str]], show: int = 5) -> str:
    names = "; ".join(f"{path} ({why})" for path, why in flagged[:show])
    more = f" and {len(flagged) - show} more" if len(flagged) > show else ""
    return (
        f"warning: QC flagged {len(flagged)} scan(s), check them before trusting their volumes:"
        f" {names}{more}; see the qc column of summary.csv"
    )


def _final_line(r: InferReport) -> str:
    redone = f" ({r.redone} redone)" if r.redone else ""
    return (
        f"{r.done} done{redone}, {r.failed} failed, {r.skipped} skipped (already done),"
        f" {r.ignored} ignored, {len(r.set_aside)} DICOM set aside, {r.resampled} resampled;"
        f" {r.cropped} cropped to the brain; {r.slices} slices in {r.seconds:.1f} s ="
        f" {r.slices_per_s:.1f} slices/s (model alone {r.model_slices_per_s:.1f}/s)"
        f" on {r.provider}; summary: {r.summary}"
    )
