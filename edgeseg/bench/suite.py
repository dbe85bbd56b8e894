"""Benchmark stage: latency, throughput, accuracy and memory of a model on named targets.

    edgeseg bench [MODEL] [--target NAME|all] [--json F] [--markdown F]

A target (``bench/targets.toml``) is a deployment profile: provider (cpu, cuda, tensorrt,
openvino, c-openvino = libedgeseg through ctypes, torch), precision, batch, threads, the CPU
architecture it is meant for, and a budget taken from clinical use. For every target this
machine can run, :func:`run_bench`
measures what trtexec, onnxruntime_perf_test and Ultralytics' benchmark show between them:
session-creation and first-inference time, latency min/mean/p50/p90/p95/p99/max after
warm-up, throughput, achieved GFLOP/s (and, for fp32 CPU rows, its share of the fp32 FMA
peak of :func:`edgeseg.machine.fma_peak`, checked against an sgemm measured in the same run),
mIoU on the demo test slices per model file, and the peak RSS of a separate inference process;
then the same target on the typical brain box (:mod:`edgeseg.bench.crop_bench`; ``--no-crop`` leaves
it out): p50 and the peak RSS of a process that ran the box only, the crop columns.
Targets it cannot run are listed with the reason (:mod:`edgeseg.bench.targets` reads the
targets, maps each to its file and runner, and gives the reasons). The terminal table is
compact by default (:func:`edgeseg.bench.report.print_report`; ``--wide`` for every column).

This module imports numpy only; onnxruntime, openvino and torch are imported where used,
so the RSS child of an ONNX target never loads torch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bench.crop_bench import CropShape, typical_crop
from edgeseg.bench.report import BenchReport, Result, Target, compute_ratios, jsonable, machine_info, noise_warnings
from edgeseg.bench.targets import (
    DEFAULT_TARGETS,
    load_targets,
    model_file,
    runner_spec,
    select_targets,
    tuned_targets,
    why_not_here,
)
from edgeseg.data.split import HeldOut, SplitRecord, held_out
from edgeseg.errors import EdgesegError, describe
from edgeseg.files import write_text
from edgeseg.metrics import score
from edgeseg.runtime.measure import count_macs, latency_stats, run_child, synthetic_batch, time_runs
from edgeseg.runtime.runners import open_runner

VOLUME_SLICES = 200  # a clinical volume, as in the budgets


@dataclass
class BenchConfig:
    """How ``edgeseg bench`` measures; saved in the JSON report."""

    targets_file: Path = DEFAULT_TARGETS  # the profiles
    size: int = 394  # slice side in pixels (the tutorial's)
    warmup: int = 3  # untimed inferences after the first one
    runs: int = 50  # timed inferences per target at most
    max_seconds: float = 10.0  # stop timing a target after this long (at least min_runs)
    min_runs: int = 5  # timed inferences per target at least
    miou: bool = True  # score every model file on the demo test slices
    miou_slices: int | None = None  # cap on test slices scored; None = all
    data: Path | None = None  # dataset root for mIoU; None = the demo set (built if missing)
    rss: bool = True  # peak RSS from a separate inference process
    peak_size: int = 2048  # side of the square sgemm that checks the fp32 peak estimate
    cv_warn: float = 0.10  # coefficient of variation above which the machine is called noisy
    tuned: bool = True  # with --target all, add a row per candidate of a MODEL.deploy.json tuned here
    crop: bool = True  # also time every target on the typical brain box (edgeseg.bench.crop_bench)


# ----------------------------------------------------------------------------- one run


class _Context:
    """What a run measures once and shares between targets: peaks, MACs, mIoU, the eval set."""

    def __init__(self, model: Path, config: BenchConfig) -> None:
        from edgeseg.artifacts import read_model_info

        self.model, self.config = model, config
        self.info = read_model_info(model)
        self.class_names = self.info.class_names
        self.peaks: dict[int, dict[str, Any]] = {}  # measured sgemm, by threads
        self.fp32_peaks: dict[int, dict[str, Any]] = {}  # the FMA estimate, or why there is none
        self.scores: dict[tuple[str, str], float] = {}
        self.held: HeldOut | None = None
        self._macs: int | None | bool = False
        self._crop: CropShape | None | bool = False
        self.crop_note = ""  # why there are no crop columns, if there are none for a reason

    def crop(self) -> CropShape | None:
        """The brain box every target is timed on too (:func:`edgeseg.bench.crop_bench.typical_crop` of 8 of
        the model's held-out slices, as ``edgeseg tune`` takes it); None with --no-crop or no box."""
        if self._crop is False:
            self._crop = None
            if self.config.crop:
                try:  # no held-out slices here (an edge install without the demo's sources): no crop columns
                    record = SplitRecord.from_metadata(self.info.metadata, self.model)
                    images = held_out(record, self.config.data).limited(8).images
                except (EdgesegError, ImportError, OSError) as exc:
                    self.crop_note = f"not timed: no held-out slices to take the brain box from ({describe(exc)})"
                    return None
                contract, least = self.info.normalization_contract, self.info.min_size
                self._crop = typical_crop(images, contract, least, self.config.size)
        return self._crop  # type: ignore[return-value]

    def peak(self, threads: int) -> dict[str, Any]:
        if threads not in self.peaks:
            spec = {"mode": "peak", "size": self.config.peak_size, "threads": threads}
            self.peaks[threads] = run_child(spec, threads)
        return self.peaks[threads]

    def fp32_peak(self, threads: int) -> float | None:
        """GFLOP/s of :func:`edgeseg.machine.fma_peak` at ``threads``; None where it cannot be known,
        or where a measured sgemm beats it (the clock read is not the clock that ran)."""
        from edgeseg.machine import fma_peak

        if threads not in self.fp32_peaks:
            estimate, sgemm = fma_peak(threads), self.peak(threads)
            if estimate is None:
                found = {"unknown": "the CPU's flags do not tell its FMA units, or no clock is reported"}
            elif sgemm["gflops"] > estimate.gflops:
                found = {"unknown": f"{estimate.describe()} is below a measured sgemm ({sgemm['gflops']:.0f})"}
            else:
                found = {"gflops": estimate.gflops, "estimate": estimate.describe()}
            self.fp32_peaks[threads] = {**found, "sgemm_gflops": sgemm["gflops"], "sgemm_lib": sgemm["lib"]}
        return self.fp32_peaks[threads].get("gflops")

    def macs(self) -> int | None:
        if self._macs is False:
            fp32 = model_file(self.model, Target("fp32", "cpu"))
            self._macs = count_macs(fp32, self.config.size) if fp32.is_file() else None
        return self._macs  # type: ignore[return-value]

    def miou(self, path: Path, provider: str, predict: Callable) -> float:
        key = (str(path), provider)
        if key not in self.scores:
            if self.held is None:  # the model's own held-out slices, as it recorded them at export
                record = SplitRecord.from_metadata(self.info.metadata, self.model)
                self.held = held_out(record, self.config.data).limited(self.config.miou_slices)
            summary = score(predict, self.held.images, self.held.masks, self.class_names)
            self.scores[key] = float(summary["miou_fg"])
        return self.scores[key]


def bench_target(model: Path, target: Target, config: BenchConfig, ctx: _Context) -> Result:
    """Measure one target, or say why it cannot run here; never raises for the target."""
    path = model_file(model, target)
    threads = str(target.threads) if target.threads else f"all ({os.cpu_count()})"
    if target.provider in ("cuda", "tensorrt"):
        threads = "—"  # the GPU does the work
    result = Result(target.name, target.provider, target.precision, target.batch, threads, "skip", model=str(path))
    reason = why_not_here(target, path)
    if reason:
        result.reason = reason
        return result
    try:
        _measure(result, path, target, config, ctx)
    except Exception as exc:  # a target that breaks is a ❌ row, not a crashed table
        result.status = "fail"
        result.reason = describe(exc)
    return result


def _measure(result: Result, path: Path, target: Target, config: BenchConfig, ctx: _Context) -> None:
    """Fill ``result`` with timings, throughput, GFLOP/s, mIoU, RSS and the budget."""
    spec = runner_spec(target, path)
    runner = open_runner(path, spec)
    result.backend, result.create_s, result.ran_precision = runner.label, runner.create_s, runner.precision
    if target.provider in ("cuda", "tensorrt") and getattr(runner, "provider", "") == "CPUExecutionProvider":
        raise RuntimeError(f"{target.provider} fell back to CPU; fix the GPU install")
    result.size_mb = path.stat().st_size / 1e6
    x = synthetic_batch(target.batch, config.size)
    start = time.perf_counter()
    runner.labels(x)
    result.first_ms = (time.perf_counter() - start) * 1e3
    times = time_runs(runner.labels, x, config.warmup, config.runs, config.min_runs, config.max_seconds)
    result.latency_ms, result.runs = latency_stats(times), len(times)
    mean_s = result.latency_ms["mean"] / 1e3
    result.cv = float(np.std(times) / np.mean(times))
    result.slices_per_s = target.batch / mean_s
    _throughput_vs_peak(result, target, mean_s, ctx)
    if config.miou:
        result.miou_fg = ctx.miou(path, target.provider, runner.labels)
    box = ctx.crop()
    if box is not None:  # one more warm-up: a static-shape runner compiles the box's shape on its first
        crop = np.ascontiguousarray(x[..., : box.height, : box.width])
        taken = time_runs(runner.labels, crop, config.warmup + 1, config.runs, config.min_runs, config.max_seconds)
        result.crop_latency_ms = latency_stats(taken)
    if config.rss:
        rss = {"mode": "rss", "path": str(path), "runner": asdict(spec), "batch": target.batch, "runs": 3}
        child = run_child({**rss, "size": config.size}, target.threads)
        result.rss_mb, result.torch_free = child["rss_mb"], not child["torch_loaded"]
        if box is not None:  # a process that ran the box only
            result.crop_rss_mb = run_child({**rss, "size": config.size, "shape": box.shape}, target.threads)["rss_mb"]
    result.budget_ok, result.budget = check_budget(target, result.latency_ms)
    result.status = "ok"


def _throughput_vs_peak(result: Result, target: Target, mean_s: float, ctx: _Context) -> None:
    """Achieved GFLOP/s from the graph's MACs, and, for fp32 on a CPU, its share of the fp32 FMA peak
    (a CPU's fp32 peak says nothing about a GPU, nor about int8 dot products or fp16)."""
    macs = ctx.macs()
    if not macs:
        return
    result.gflops = 2 * macs * target.batch / mean_s / 1e9
    if target.provider not in ("cuda", "tensorrt") and (result.ran_precision or target.precision) == "fp32":
        peak = ctx.fp32_peak(target.threads or os.cpu_count() or 1)
        result.peak_pct = None if peak is None else 100 * result.gflops / peak


def check_budget(target: Target, latency_ms: dict[str, float]) -> tuple[bool | None, str]:
    """Compare p99 latency and the 200-slice volume time with the target's budget."""
    checks = []
    if target.p99_ms is not None:
        p99 = latency_ms["p99"]
        checks.append((p99 <= target.p99_ms, f"p99 {p99:.0f}/{target.p99_ms:.0f} ms"))
    if target.volume_s is not None:
        volume = math.ceil(VOLUME_SLICES / target.batch) * latency_ms["mean"] / 1e3
        checks.append((volume <= target.volume_s, f"{VOLUME_SLICES} slices {volume:.1f}/{target.volume_s:.0f} s"))
    if not checks:
        return None, "no budget"
    return all(ok for ok, _ in checks), ", ".join(text for _, text in checks)


def run_bench(
    model: Path, target: str = "all", config: BenchConfig | None = None, log: Callable[[str], None] | None = None
) -> BenchReport:
    """Benchmark ``model`` (and its fp16/int8/.pt siblings) on one target or all.

    Args:
        model: an ``edgeseg-onnx-v1`` file, normally the fp32 ``X.onnx``.
        target: a name from the targets file, or ``all``.
        config: measurement settings; default :class:`BenchConfig`.
        log: progress messages (one line per step), e.g. ``print`` to stderr.

    Returns:
        The :class:`BenchReport`; skipped targets carry the reason.
    """
    from edgeseg.artifacts import read_model_info

    config = config or BenchConfig()
    model = Path(model)
    read_model_info(model)  # a clear error for a missing or foreign file, before any work
    chosen = select_targets(load_targets(config.targets_file), target)
    if config.tuned and target == "all":
        chosen += tuned_targets(model)
    report = BenchReport(str(model), machine_info(), jsonable(asdict(config)), [])
    ctx = _Context(model, config)
    for t in chosen:
        if log:
            log(f"{t.name}: {t.provider} {t.precision}, batch {t.batch} ...")
        report.results.append(bench_target(model, t, config, ctx))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    report.machine["load_avg_end"] = [round(v, 2) for v in load]
    report.machine["matmul_peak"] = {str(k): v for k, v in ctx.peaks.items()}
    report.machine["fp32_peak"] = {str(k): v for k, v in ctx.fp32_peaks.items()}
    report.machine["macs_per_slice"] = ctx.macs()
    report.machine["eval_set"] = ctx.held.source if ctx.held else None
    report.machine["crop"] = ctx._crop.describe() if ctx._crop else None
    report.machine["crop_note"] = ctx.crop_note or None
    report.ratios = compute_ratios(report.results, {t.name: t for t in chosen})
    report.warnings = noise_warnings(report.results, config.cv_warn, report.machine)
    return report


def bench(
    model: Path | None = None,
    target: str = "all",
    config: BenchConfig | None = None,
    json_path: Path | None = None,
    markdown_path: Path | None = None,
    wide: bool = False,
) -> BenchReport:
    """What ``edgeseg bench`` does: run, print the table, write the JSON/markdown reports.

    Args:
        model: the fp32 ONNX file; None = the shipped ``export/model.onnx``.
        target: a target name or ``all``.
        config: measurement settings.
        json_path: also write the full report as JSON here.
        markdown_path: also write the table and notes as markdown here.
        wide: print every column (the markdown always has them), else the compact view that fits
            the terminal.
    """
    import onnxruntime  # noqa: F401  the MAC count and ORT targets need it: without it the CLI names the extra now
    from rich.console import Console

    from edgeseg import SHIPPED_MODEL

    if model is None and not SHIPPED_MODEL.is_file():
        raise EdgesegError(
            f"{SHIPPED_MODEL}: the shipped model is not there; pass MODEL (an fp32 .onnx from `edgeseg export`)"
        )
    model = Path(model) if model is not None else SHIPPED_MODEL

    from edgeseg.bench.report import print_report, to_markdown

    err = Console(stderr=True)
    report = run_bench(model, target, config, log=lambda m: err.print(m, highlight=False, markup=False))
    print_report(report, Console(), wide)
    if json_path:
        _write_report(json_path, json.dumps(jsonable(asdict(report)), indent=2) + "\n")
    if markdown_path:
        _write_report(markdown_path, to_markdown(report))
    return report


def _write_report(path: Path, text: str) -> None:
    try:
        write_text(path, text)
    except OSError as exc:
        raise EdgesegError(f"{path}: cannot write the report here ({exc}); pick another path") from None
