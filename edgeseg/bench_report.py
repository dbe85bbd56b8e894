"""The ``edgeseg bench`` table: rich for the terminal, markdown for the README, atomic files.

The data of a run (:class:`Target`, :class:`Result`, :class:`BenchReport`), then its rendering.
One row per target (:class:`Result`) in :data:`HEADER` order, then notes:
why targets were skipped, the machine and its matmul peak, the ratios against the peers
measured in the same run (:func:`compute_ratios`), and noise warnings (:func:`noise_warnings`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """One deployment profile from ``targets.toml``."""

    name: str
    provider: str  # cpu | cuda | tensorrt | openvino | c-openvino | torch
    precision: str = "fp32"  # which file: X.onnx, X_fp16.onnx or X_int8.onnx
    batch: int = 1  # slices per inference
    threads: int = 0  # intra-op threads; 0 = the runtime's default (all physical cores)
    arch: str = ""  # CPU architecture the profile is for ("aarch64"); "" = any
    p99_ms: float | None = None  # budget: p99 latency of one inference (a slice waits for it)
    volume_s: float | None = None  # budget: seconds for a 200-slice volume
    rss_mb: float | None = None  # budget: peak RSS (MB) of the inference process; `edgeseg tune` picks what fits
    description: str = ""  # what the profile stands for
    reference: bool = False  # a peer (eager, OpenVINO) that the others are compared with
    hint: str = "latency"  # openvino: latency (one request) | throughput (a batch's slices in parallel streams)


@dataclass
class Result:
    """One row of the table: a target, measured or skipped."""

    target: str
    provider: str  # asked for: cpu | cuda | tensorrt | openvino | c-openvino | torch
    precision: str
    batch: int
    threads: str  # "2", or "all (16)"
    status: str  # "ok" | "skip" | "fail"
    reason: str = ""  # why skipped or failed
    backend: str = ""  # what really ran, e.g. "onnxruntime 1.23.2 CPU fp32", "OpenVINO 2026.0 CPU fp32"
    ran_precision: str = ""  # the precision that really ran (OpenVINO: what the compiled model reports)
    model: str = ""
    size_mb: float | None = None
    miou_fg: float | None = None  # foreground mIoU on the demo test slices
    create_s: float | None = None  # session creation (load + optimise + compile)
    first_ms: float | None = None  # the first inference, at the target's batch
    latency_ms: dict[str, float] = field(default_factory=dict)  # min mean p50 ... max, per batch
    runs: int = 0
    cv: float | None = None  # std / mean of the timed latencies
    slices_per_s: float | None = None
    gflops: float | None = None  # achieved GFLOP/s (2 x Conv/ConvTranspose MACs / time)
    peak_pct: float | None = None  # of this machine's matmul peak at the same thread count
    rss_mb: float | None = None  # peak RSS of a fresh process running this target
    torch_free: bool | None = None  # True if that process never imported torch
    budget_ok: bool | None = None
    budget: str = ""  # what was checked, with the numbers


PEERS = ("cpu", "torch", "openvino", "c-openvino")  # providers whose fp32 row the ratios use


@dataclass
class Ratios:
    """The figures the issue asks for, each from rows measured in the same run (None: not measured)."""

    best_cpu: str | None = None  # the fastest batch-1 ONNX Runtime CPU target
    best_p50_ms: float | None = None
    best_rss_mb: float | None = None
    vs_eager: float | None = None  # its p50 over PyTorch eager's
    vs_openvino: float | None = None  # over OpenVINO fp32's
    delta_miou_pt: float | None = None  # its mIoU minus ORT fp32's, in points
    fp32_peak_pct: float | None = None  # ORT fp32's share of the matmul peak
    c_p50_ms: float | None = None  # libedgeseg
    python_openvino_p50_ms: float | None = None
    c_vs_python_openvino: float | None = None


@dataclass
class BenchReport:
    """Everything ``edgeseg bench`` measured in one run."""

    model: str
    machine: dict[str, Any]
    config: dict[str, Any]
    results: list[Result]
    ratios: Ratios = field(default_factory=Ratios)
    warnings: list[str] = field(default_factory=list)


STATUS = {"ok": "✅", "fail": "❌", "skip": "skip"}
HEADER = (
    "target",
    "backend",
    "prec",
    "batch",
    "threads",
    "status",
    "MB",
    "mIoU fg",
    "create s",
    "first ms",
    "latency ms min/mean/p50/p90/p95/p99/max",
    "slices/s",
    "GFLOP/s",
    "% peak",
    "RSS MB",
    "budget",
)


def _num(value: float | None, fmt: str = "") -> str:
    """``fmt``, or by default 3 significant digits without exponent (0.42, 7.31, 358)."""
    if value is None:
        return "—"
    if fmt:
        return format(value, fmt)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.{2 - (abs(value) >= 10)}f}"


def _precision(r: Result) -> str:
    """The precision that really ran, and what was asked where the two differ ("int8 (asked fp32)")."""
    if not r.ran_precision or r.ran_precision == r.precision:
        return r.precision
    return f"{r.ran_precision} (asked {r.precision})"


def table_rows(report: BenchReport) -> list[list[str]]:
    """The table as strings, one row per target, in :data:`HEADER` order."""
    rows = []
    for r in report.results:
        lat = (
            "/".join(_num(r.latency_ms[k]) for k in ("min", "mean", "p50", "p90", "p95", "p99", "max"))
            if r.latency_ms
            else "—"
        )
        budget = "—" if r.budget_ok is None else f"{'✅' if r.budget_ok else '❌'} {r.budget}"
        rows.append(
            [
                r.target,
                r.backend or r.provider,
                _precision(r),
                str(r.batch),
                r.threads,
                STATUS[r.status],
                _num(r.size_mb),
                _num(r.miou_fg, ".4f"),
                _num(r.create_s),
                _num(r.first_ms),
                lat,
                _num(r.slices_per_s),
                _num(r.gflops),
                _num(r.peak_pct, ".0f"),
                _num(r.rss_mb, ".0f"),
                budget,
            ]
        )
    return rows


def report_notes(report: BenchReport) -> list[str]:
    """Lines under the table: skipped/failed targets, the machine, ratios, noise warnings."""
    m = report.machine
    notes = [
        f"{r.target}: {'skipped' if r.status == 'skip' else 'FAILED'}: {r.reason}"
        for r in report.results
        if r.status != "ok"
    ]
    peaks = ", ".join(
        f"{k} threads {v['gflops']:.0f} GFLOP/s ({v['lib']})" for k, v in m.get("matmul_peak", {}).items()
    )
    macs = m.get("macs_per_slice")
    notes.append(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['arch']}, {' '.join(m.get('flags', []))}; load average"
        f" {m['load_avg_start'][0]:.1f} -> {m.get('load_avg_end', [0])[0]:.1f};"
        f" matmul peak {peaks or 'not measured'};"
        f" model {macs / 1e9:.3g} GMAC per {report.config['size']}² slice"
        if macs
        else f"machine: {m['cpu']}, {m['cores']} cores, {m['arch']}, {' '.join(m.get('flags', []))}"
    )
    if m.get("eval_set"):
        notes.append(f"mIoU fg on {m['eval_set']}")
    q = report.ratios
    if q.best_cpu is not None:
        parts = [f"best CPU target {q.best_cpu}: p50 {q.best_p50_ms:.1f} ms"]
        parts += [
            f"{value:.2f}x {label}"
            for value, label in ((q.vs_eager, "PyTorch eager"), (q.vs_openvino, "OpenVINO fp32"))
            if value is not None
        ]
        if q.delta_miou_pt is not None:
            parts.append(f"ΔmIoU {q.delta_miou_pt:+.2f} pt vs fp32")
        if q.best_rss_mb is not None:
            parts.append(f"peak RSS {q.best_rss_mb:.0f} MB")
        if q.fp32_peak_pct is not None:
            parts.append(f"ORT fp32 at {q.fp32_peak_pct:.0f}% of the matmul peak")
        notes.append("; ".join(parts))
    if q.c_vs_python_openvino is not None:
        notes.append(
            f"OpenVINO fp32 p50: C (libedgeseg) {q.c_p50_ms:.1f} ms, Python"
            f" {q.python_openvino_p50_ms:.1f} ms: C at {q.c_vs_python_openvino:.2f}x"
        )
    return notes + [f"WARNING: {w}" for w in report.warnings]


def print_report(report: BenchReport, console: Any = None) -> None:
    """Print the table and its notes with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"edgeseg bench: {report.model}", show_lines=False)
    for name in HEADER:
        table.add_column(name, overflow="fold")
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    for note in report_notes(report):
        console.print(note, highlight=False)


def to_markdown(report: BenchReport) -> str:
    """The same table and notes as GitHub markdown."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    return "\n".join([*lines, "", *(f"- {n}" for n in report_notes(report))]) + "\n"


def machine_info() -> dict[str, Any]:
    """CPU model and ISA flags (:mod:`edgeseg.machine`), cores, load average and runtime versions."""
    from importlib.metadata import PackageNotFoundError, version

    from edgeseg.machine import fingerprint

    here = fingerprint()
    versions = {}
    for dist in ("onnxruntime-gpu", "onnxruntime", "openvino", "torch", "numpy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            continue
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        **here.to_json(),
        "load_avg_start": [round(v, 2) for v in load],
        "versions": versions,
    }


def compute_ratios(results: list[Result], targets: dict[str, Target]) -> Ratios:
    """The issue's ratios: the best CPU row (ONNX Runtime, or OpenVINO as `edgeseg tune` runs it) vs the
    eager and OpenVINO peers, C vs Python OpenVINO, at batch 1."""
    ok = [r for r in results if r.status == "ok" and r.batch == 1]
    ours = [r for r in ok if r.provider in ("cpu", "openvino") and not targets[r.target].reference]
    peer = {r.target for r in ok if targets[r.target].reference or r.provider == "cpu"}  # not a tuned OpenVINO row
    fp32_of = {
        p: next((r for r in ok if r.provider == p and r.precision == "fp32" and r.target in peer), None) for p in PEERS
    }
    c, py = fp32_of["c-openvino"], fp32_of["openvino"]
    out = Ratios()
    if c and py:  # libedgeseg (c-openvino) over OpenVINO's Python API, both fp32
        out.c_p50_ms, out.python_openvino_p50_ms = c.latency_ms["p50"], py.latency_ms["p50"]
        out.c_vs_python_openvino = out.c_p50_ms / out.python_openvino_p50_ms
    if not ours:
        return out
    best = min(ours, key=lambda r: r.latency_ms["p50"])
    out.best_cpu, out.best_p50_ms, out.best_rss_mb = best.target, best.latency_ms["p50"], best.rss_mb
    if fp32_of["torch"]:
        out.vs_eager = out.best_p50_ms / fp32_of["torch"].latency_ms["p50"]
    if py:
        out.vs_openvino = out.best_p50_ms / py.latency_ms["p50"]
    fp32 = fp32_of["cpu"]
    if fp32 and fp32.miou_fg is not None and best.miou_fg is not None:
        out.delta_miou_pt = 100 * (best.miou_fg - fp32.miou_fg)
    if fp32 and fp32.peak_pct is not None:
        out.fp32_peak_pct = fp32.peak_pct
    return out


def noise_warnings(results: list[Result], cv_warn: float, machine: dict[str, Any]) -> list[str]:
    """One warning per target whose latencies vary more than ``cv_warn``."""
    load = machine.get("load_avg_end", [0.0])[0]
    return [
        f"{r.target}: latency CV {100 * r.cv:.0f}% (load average {load:.1f} on"
        f" {machine['cores']} cores): the machine is noisy; rerun when idle before quoting it"
        for r in results
        if r.cv is not None and r.cv > cv_warn
    ]


def jsonable(obj: Any) -> Any:
    """Paths to strings, recursively, for the JSON report."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj
