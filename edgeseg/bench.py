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
then the same target on the typical brain box (:mod:`edgeseg.crop_bench`; ``--no-crop`` leaves
it out): p50 and the peak RSS of a process that ran the box only, the crop columns.
Targets it cannot run are listed with the reason. The terminal table is compact by default
(:func:`edgeseg.bench_report.print_report`; ``--wide`` for every column).

This module imports numpy only; onnxruntime, openvino and torch are imported where used,
so the RSS child of an ONNX target never loads torch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg import SHIPPED_TARGETS
from edgeseg.artifacts import ArtifactPaths
from edgeseg.bench_report import BenchReport, Result, Target, compute_ratios, jsonable, machine_info, noise_warnings
from edgeseg.crop_bench import CropShape, typical_crop
from edgeseg.errors import EdgesegError, describe
from edgeseg.files import read_json, write_text
from edgeseg.measure import count_macs, latency_stats, run_child, synthetic_batch, time_runs
from edgeseg.metrics import score
from edgeseg.runtime import RunnerSpec, open_runner
from edgeseg.split import HeldOut, SplitRecord, held_out

DEFAULT_TARGETS = SHIPPED_TARGETS
PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino", "c-openvino", "torch")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # bf16: OpenVINO on the fp32 file
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
    crop: bool = True  # also time every target on the typical brain box (edgeseg.crop_bench)


# ----------------------------------------------------------------------------- targets


def load_targets(path: Path = DEFAULT_TARGETS) -> dict[str, Target]:
    """Read and check ``targets.toml``: one ``[name]`` table per target.

    Raises:
        EdgesegError: missing file, bad TOML, unknown keys or values (naming the target).
    """
    import tomllib

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise EdgesegError(f"{path}: targets file not found; pass --targets FILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgesegError(f"{path}: not valid TOML ({exc}); fix the file") from None
    known = {f.name for f in fields(Target)} - {"name"}
    targets = {}
    for name, spec in raw.items():
        where = f"{path}: target [{name}]"
        if not isinstance(spec, dict) or set(spec) - known:
            extra = sorted(set(spec) - known) if isinstance(spec, dict) else spec
            raise EdgesegError(f"{where}: unknown keys {extra}; allowed: {sorted(known)}")
        try:
            target = Target(name=name, **spec)
        except TypeError as exc:
            raise EdgesegError(f"{where}: {exc}; give provider and a valid budget") from None
        _check_target(where, target)
        targets[name] = target
    return targets


def _check_target(where: str, t: Target) -> None:
    """Raise EdgesegError for impossible values."""
    if t.provider not in PROVIDERS:
        raise EdgesegError(f"{where}: provider {t.provider!r}; choose one of {PROVIDERS}")
    if t.precision not in PRECISIONS:
        raise EdgesegError(f"{where}: precision {t.precision!r}; choose one of {PRECISIONS}")
    if not (isinstance(t.batch, int) and t.batch >= 1 and isinstance(t.threads, int) and t.threads >= 0):
        raise EdgesegError(f"{where}: batch must be >= 1 and threads >= 0 (0 = all cores)")
    if t.hint not in ("latency", "throughput") or (t.hint == "throughput" and t.provider != "openvino"):
        raise EdgesegError(f"{where}: hint {t.hint!r}; latency, or throughput with provider openvino")


def select_targets(targets: dict[str, Target], name: str) -> list[Target]:
    """``all`` or one target by name."""
    if name == "all":
        return list(targets.values())
    if name not in targets:
        raise EdgesegError(f"unknown target {name!r}; choose all or one of {', '.join(targets)}")
    return [targets[name]]


def model_file(model: Path, target: Target) -> Path:
    """The file a target runs: the precision's sibling of ``model`` (X.onnx, X_int8.onnx, ...).

    torch loads the checkpoint ``X.pt``. TensorRT runs the native engine ``X.engine`` when
    its sidecar says it has the target's precision (int8 always: TensorRT needs the
    symmetric S8S8 model the engine is built from, not the CPU's U8S8 ``X_int8.onnx``);
    otherwise fp16 goes through ONNX Runtime's TensorRT provider on the fp32 graph.
    """
    paths = ArtifactPaths.of(model)
    if target.provider == "torch":
        return paths.checkpoint
    if target.provider == "tensorrt":
        if target.precision == "int8" or (read_json(paths.sidecar) or {}).get("precision") == target.precision:
            return paths.engine
        return paths.onnx()
    return paths.onnx("fp32" if target.precision == "bf16" else target.precision)


def tuned_targets(model: Path) -> list[Target]:
    """One target per candidate that ``edgeseg tune`` ran on this machine (``MODEL.deploy.json``);
    none without a deploy file, or for one tuned elsewhere."""
    from edgeseg.deploy import read_plan
    from edgeseg.machine import fingerprint

    try:
        plan = read_plan(model)
    except EdgesegError:
        return []
    if not plan.machine.matches(fingerprint()):
        return []
    provider, batch = {"ort": "cpu", "openvino": "openvino"}, int(plan.settings.get("batch", 1))
    return [
        Target(
            f"tuned {c.name}",
            provider[c.backend],
            c.precision,
            batch,
            c.threads,
            description=f"edgeseg tune: {c.label}",
            hint=c.hint,
        )
        for c in plan.candidates
        if c.role == "candidate" and c.status == "ok" and c.backend in provider
    ]


def runner_spec(target: Target, path: Path) -> RunnerSpec:
    """How :func:`edgeseg.runtime.open_runner` runs a target's file: ``cpu`` is exactly the
    session ``edgeseg infer --provider cpu`` builds; OpenVINO's precision hint is explicit."""
    backend = "ort" if target.provider in ("cpu", "cuda", "tensorrt") else target.provider
    if target.provider == "tensorrt" and path.suffix == ".engine":
        backend = "tensorrt-engine"
    device = target.provider if backend == "ort" else "cpu"
    # OpenVINO gets an explicit hint (edgeseg.openvino_backend): int8 from QDQ with f32 elsewhere,
    # bf16 only where asked (and the CPU has it), never its own bf16 default.
    return RunnerSpec(backend, device, target.precision, target.threads, target.batch, hint=target.hint)


def why_not_here(target: Target, path: Path) -> str | None:
    """The reason this machine cannot run ``target`` on ``path``, or None if it can."""
    machine = platform.machine().lower()
    if target.arch and target.arch.lower() not in (machine, {"arm64": "aarch64"}.get(machine)):
        return f"profile for {target.arch}; this machine is {machine} (run it on the device)"
    if target.precision == "bf16" and target.provider != "openvino":
        return "bf16 runs on OpenVINO only (provider = openvino)"
    if target.precision == "bf16":
        from edgeseg.machine import fingerprint

        if not fingerprint().has_bf16:
            return f"OpenVINO bf16 needs AVX512-BF16 or AMX; this CPU ({fingerprint().cpu}) has neither"
    if not path.is_file():
        hint = {
            ".pt": "train and export the checkpoint",
            ".engine": f"run `edgeseg export --trt --{target.precision}` on the GPU",
        }.get(path.suffix, f"run `edgeseg export --{target.precision}`")
        return f"{path.name} not found ({hint})"
    if target.provider == "tensorrt" and path.suffix == ".engine":
        from edgeseg.tensorrt import gpu_problem

        return gpu_problem()
    if target.provider in ("cuda", "tensorrt"):
        from edgeseg.ort_session import resolve_providers

        try:
            resolve_providers(target.provider)
        except EdgesegError as exc:  # keep the reason, drop edgeseg infer's --provider advice
            return str(exc).split("; use --provider")[0]
        return None
    if target.provider == "c-openvino":
        from edgeseg.cbackend import why_unavailable

        return why_unavailable()
    module, extra = {"openvino": ("openvino", "openvino"), "torch": ("torch", "train")}.get(target.provider, ("", ""))
    if module:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'edgeseg[{extra}]')"
    return None


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
        """The brain box every target is timed on too (:func:`edgeseg.crop_bench.typical_crop` of 8 of
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

    from edgeseg.bench_report import print_report, to_markdown

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
