"""The ``edgeseg bench`` table: rich for the terminal, markdown for the README, atomic files.

The data of a run (:class:`Target`, :class:`Result`, :class:`BenchReport`), then its rendering.
One row per target (:class:`Result`) in :data:`HEADER` order (the crop columns: the same target on
the typical brain box, :mod:`edgeseg.bench.crop_bench`), then notes:
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
    crop_latency_ms: dict[str, float] = field(default_factory=dict)  # the same, on the brain box (machine["crop"])
    crop_rss_mb: float | None = None  # peak RSS of a fresh process running the box only


PEERS = ("cpu", "torch", "openvino", "c-openvino")  # providers whose fp32 row the ratios use


@dataclass
class Ratios:
    """The figures the issue asks for, each from rows measured in the same run (None: not measured)."""

    best_cpu: str | None = None  # the fastest batch-1 CPU row that passes its precision's ΔmIoU gate
    best_backend: str = ""  # what ran it
    best_p50_ms: float | None = None
    best_rss_mb: float | None = None
    vs_eager: float | None = None  # its p50 over PyTorch eager's
    vs_openvino: float | None = None  # over OpenVINO fp32's
    crop_p50_ms: float | None = None  # the best row's p50 on the brain box (edgeseg infer crops)
    crop_vs_eager: float | None = None  # that over PyTorch eager's on whole frames (a user's own loop)
    crop_vs_openvino: float | None = None  # over OpenVINO fp32's on whole frames
    delta_miou_pt: float | None = None  # its mIoU minus ORT fp32's, in points
    fp32_peak_pct: float | None = None  # ORT fp32's share of the matmul peak
    c_p50_ms: float | None = None  # libedgeseg
    python_openvino_p50_ms: float | None = None
    c_vs_python_openvino: float | None = None
    not_ranked: list[str] = field(default_factory=list)  # batch-1 CPU rows left out of best, and why


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
LATENCY = "latency ms min/mean/p50/p90/p95/p99/max"
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
    LATENCY,
    "slices/s",
    "GFLOP/s",
    "% peak",
    "RSS MB",
    "crop p50 ms",
    "crop RSS MB",
    "budget",
)
# The terminal's default view: what ran, how fast, how good, how big, whether it fits; short
# two-line headers, so that it fits 80 columns with the text columns wrapped.
COMPACT = {
    "target": "target",
    "ran": "ran",
    "p50 ms": "p50\nms",
    "p99 ms": "p99\nms",
    "slices/s": "slices\n/s",
    "mIoU fg": "mIoU\nfg",
    "% peak": "%\npeak",
    "RSS MB": "RSS\nMB",
    "crop p50 ms": "crop\np50",
    "fits": "budget",  # ✅, or ❌ and the numbers; or skipped, FAILED (the notes say why)
}
TEXT = ("target", "backend", "prec", "threads", "ran", "budget", "fits")  # may wrap; the rest are numbers or marks


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


def _cells(r: Result) -> dict[str, str]:
    """One row as strings, keyed by the column names of :data:`HEADER` and :data:`COMPACT`."""
    lat = r.latency_ms
    keys = ("min", "mean", "p50", "p90", "p95", "p99", "max")
    asked = f" (asked {r.precision})" if r.ran_precision and r.ran_precision != r.precision else ""
    return {
        "target": r.target,
        "backend": r.backend or r.provider,
        "prec": _precision(r),
        "batch": str(r.batch),
        "threads": r.threads,
        "ran": f"{r.backend or r.provider + ' ' + r.precision}{asked}, batch {r.batch}, {r.threads} threads",
        "status": STATUS[r.status],
        "MB": _num(r.size_mb),
        "mIoU fg": _num(r.miou_fg, ".4f"),
        "create s": _num(r.create_s),
        "first ms": _num(r.first_ms),
        LATENCY: "/".join(_num(lat[k]) for k in keys) if lat else "—",
        "p50 ms": _num(lat.get("p50")),
        "p99 ms": _num(lat.get("p99")),
        "slices/s": _num(r.slices_per_s),
        "GFLOP/s": _num(r.gflops),
        "% peak": _num(r.peak_pct, ".0f"),
        "RSS MB": _num(r.rss_mb, ".0f"),
        "crop p50 ms": _num(r.crop_latency_ms.get("p50")),
        "crop RSS MB": _num(r.crop_rss_mb, ".0f"),
        "budget": "—" if r.budget_ok is None else f"{'✅' if r.budget_ok else '❌'} {r.budget}",
        "fits": {"skip": "skipped", "fail": "FAILED"}.get(r.status)
        or ("—" if r.budget_ok is None else "✅" if r.budget_ok else "❌ " + r.budget),
    }


def table_rows(report: BenchReport) -> list[list[str]]:
    """The table as strings, one row per target, in :data:`HEADER` order."""
    return [[cells[c] for c in HEADER] for cells in map(_cells, report.results)]


def report_notes(report: BenchReport) -> list[str]:
    """Lines under the table: skipped/failed targets, the machine, ratios, noise warnings."""
    m = report.machine
    notes = [
        f"{r.target}: {'skipped' if r.status == 'skip' else 'FAILED'}: {r.reason}"
        for r in report.results
        if r.status != "ok"
    ]
    macs = m.get("macs_per_slice")
    notes.append(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['arch']}, {' '.join(m.get('flags', []))}; load average"
        f" {m['load_avg_start'][0]:.1f} -> {m.get('load_avg_end', [0])[0]:.1f};"
        f" model {macs / 1e9:.3g} GMAC per {report.config['size']}² slice"
        if macs
        else f"machine: {m['cpu']}, {m['cores']} cores, {m['arch']}, {' '.join(m.get('flags', []))}"
    )
    for threads, peak in m.get("fp32_peak", {}).items():
        sgemm = f"{peak['sgemm_lib']} sgemm measured {peak['sgemm_gflops']:.0f} GFLOP/s"
        notes.append(
            f"% peak at {threads} thread{'s' * (threads != '1')}: of the fp32 FMA peak {peak['estimate']} ({sgemm})"
            if "gflops" in peak
            else f"% peak at {threads} thread{'s' * (threads != '1')}: not shown, the fp32 peak cannot be known"
            f" here: {peak['unknown']}"
        )
    if m.get("eval_set"):
        notes.append(f"mIoU fg on {m['eval_set']}")
    if m.get("crop"):
        notes.append(f"crop columns: each target on the brain box {m['crop']}, as `edgeseg infer` crops")
    elif m.get("crop_note"):
        notes.append(f"crop columns {m['crop_note']}")
    q = report.ratios
    if q.best_cpu is not None:
        parts = [f"best gated CPU target {q.best_cpu} ({q.best_backend}): p50 {q.best_p50_ms:.1f} ms"]
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
            parts.append(f"ORT fp32 at {q.fp32_peak_pct:.0f}% of the fp32 peak")
        notes.append("; ".join(parts))
    if q.crop_p50_ms is not None:
        peers = ((q.crop_vs_eager, "PyTorch eager"), (q.crop_vs_openvino, "OpenVINO fp32"))
        versus = "".join(f", {v:.2f}x {label}" for v, label in peers if v is not None)
        notes.append(
            f"on the brain box: {q.best_cpu} p50 {q.crop_p50_ms:.1f} ms"
            f" ({q.crop_p50_ms / q.best_p50_ms:.2f}x its whole frame){versus} (the peers on whole frames)"
        )
    if q.not_ranked:
        notes.append(f"not ranked for best (batch 1, gated by ΔmIoU vs ONNX Runtime fp32): {'; '.join(q.not_ranked)}")
    if q.c_vs_python_openvino is not None:
        notes.append(
            f"OpenVINO fp32 p50: C (libedgeseg) {q.c_p50_ms:.1f} ms, Python"
            f" {q.python_openvino_p50_ms:.1f} ms: C at {q.c_vs_python_openvino:.2f}x"
        )
    return notes + [f"WARNING: {w}" for w in report.warnings]


def print_report(report: BenchReport, console: Any = None, wide: bool = False) -> None:
    """Print the table and its notes with rich: the :data:`COMPACT` columns within the console's
    width (text wraps, numbers never split), or with ``wide`` every column at the table's own width.
    Nothing is read as markup (a hint such as ``pip install 'edgeseg[openvino]'`` keeps its brackets).
    """
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.measure import Measurement
    from rich.table import Table

    console = console or Console()
    titles = dict(zip(HEADER, HEADER, strict=True)) if wide else COMPACT
    cells = [_cells(r) for r in report.results]
    for key in ("% peak", "crop p50 ms", "crop RSS MB"):  # not known or not timed here: no column
        if all(c[key] == "—" for c in cells):
            titles = {k: v for k, v in titles.items() if k != key}
    table = Table(
        title=escape(f"edgeseg bench: {report.model}"), box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False
    )
    names = max((len(r.target) for r in report.results), default=0)
    for key, title in titles.items():
        text = key in TEXT
        table.add_column(
            title,
            overflow="fold",
            no_wrap=not text,
            justify="left" if text else "right",
            min_width=min(names, 13) if key == "target" else None,  # "edge-x86-fp32" whole at 80 columns
        )
    for row in cells:
        table.add_row(*(escape(row[k]) for k in titles))
    if wide:  # the table's own width, wider than the terminal if it must be (e.g. for a file)
        width = Measurement.get(console, console.options.update_width(1 << 14), table).maximum
        console = Console(file=console.file, width=max(console.width, width))
    console.print(table)
    for note in report_notes(report):
        console.print(note, highlight=False, markup=False)


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
    """The issue's ratios at batch 1: the best CPU row against the eager and OpenVINO peers, and C
    against Python OpenVINO.

    Best is the fastest p50 among the gated rows: every CPU provider (peers and tuned rows too)
    whose foreground mIoU is within its precision's ΔmIoU gate (:data:`edgeseg.export.parity.GATES`) of
    ONNX Runtime fp32's on the same slices. Without that reference mIoU nothing is gated, and no
    row is named best.
    """
    from edgeseg.export.parity import GATES

    ok = [r for r in results if r.status == "ok" and r.batch == 1]
    peer = {r.target for r in ok if targets[r.target].reference or r.provider == "cpu"}  # not a tuned OpenVINO row
    fp32_of = {
        p: next((r for r in ok if r.provider == p and r.precision == "fp32" and r.target in peer), None) for p in PEERS
    }
    c, py, fp32 = fp32_of["c-openvino"], fp32_of["openvino"], fp32_of["cpu"]
    out = Ratios()
    if c and py:  # libedgeseg (c-openvino) over OpenVINO's Python API, both fp32
        out.c_p50_ms, out.python_openvino_p50_ms = c.latency_ms["p50"], py.latency_ms["p50"]
        out.c_vs_python_openvino = out.c_p50_ms / out.python_openvino_p50_ms
    cpu = [r for r in ok if r.provider in PEERS]
    if cpu and (fp32 is None or fp32.miou_fg is None):
        out.not_ranked.append(
            "every row: no ONNX Runtime fp32 mIoU to gate them against (keep --miou and an fp32 cpu target)"
        )
        return out
    gated = []
    for r in cpu:
        gate = GATES.get(r.ran_precision or r.precision)
        if r.miou_fg is None or gate is None or gate.max_dmiou is None:
            out.not_ranked.append(f"{r.target} (no ΔmIoU against ONNX Runtime fp32 to gate it)")
        elif abs(r.miou_fg - fp32.miou_fg) > gate.max_dmiou:
            d, limit = 100 * (r.miou_fg - fp32.miou_fg), 100 * gate.max_dmiou
            out.not_ranked.append(f"{r.target} (ΔmIoU {d:+.2f} pt, gate ±{limit:.2f} pt)")
        else:
            gated.append(r)
    if not gated:
        return out
    best = min(gated, key=lambda r: r.latency_ms["p50"])
    out.best_cpu, out.best_backend = best.target, best.backend or best.provider
    out.best_p50_ms, out.best_rss_mb = best.latency_ms["p50"], best.rss_mb
    if fp32_of["torch"] and fp32_of["torch"] is not best:
        out.vs_eager = out.best_p50_ms / fp32_of["torch"].latency_ms["p50"]
    if py and py is not best:
        out.vs_openvino = out.best_p50_ms / py.latency_ms["p50"]
    out.crop_p50_ms = best.crop_latency_ms.get("p50")
    if out.crop_p50_ms is not None:
        out.crop_vs_eager = out.crop_p50_ms / fp32_of["torch"].latency_ms["p50"] if fp32_of["torch"] else None
        out.crop_vs_openvino = out.crop_p50_ms / py.latency_ms["p50"] if py else None
    out.delta_miou_pt = 100 * (best.miou_fg - fp32.miou_fg)
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
