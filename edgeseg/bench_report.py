"""The ``edgeseg bench`` table: rich for the terminal, markdown for the README, atomic files.

One row per target (:class:`edgeseg.bench.Result`) in :data:`HEADER` order, then notes:
why targets were skipped, the machine and its matmul peak, the ratios against the peers
measured in the same run, and noise warnings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.errors import EdgesegError

if TYPE_CHECKING:
    from edgeseg.bench import BenchReport


STATUS = {"ok": "✅", "fail": "❌", "skip": "skip"}
HEADER = ("target", "backend", "prec", "batch", "threads", "status", "MB", "mIoU fg",
          "create s", "first ms", "latency ms min/mean/p50/p90/p95/p99/max", "slices/s",
          "GFLOP/s", "% peak", "RSS MB", "budget")


def _num(value: float | None, fmt: str = "") -> str:
    """``fmt``, or by default 3 significant digits without exponent (0.42, 7.31, 358)."""
    if value is None:
        return "—"
    if fmt:
        return format(value, fmt)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.{2 - (abs(value) >= 10)}f}"


def table_rows(report: BenchReport) -> list[list[str]]:
    """The table as strings, one row per target, in :data:`HEADER` order."""
    rows = []
    for r in report.results:
        lat = "/".join(_num(r.latency_ms[k]) for k in ("min", "mean", "p50", "p90", "p95",
                                                           "p99", "max")) if r.latency_ms else "—"
        budget = "—" if r.budget_ok is None else f"{'✅' if r.budget_ok else '❌'} {r.budget}"
        rows.append([
            r.target, r.backend or r.provider, r.precision, str(r.batch), r.threads,
            STATUS[r.status], _num(r.size_mb), _num(r.miou_fg, ".4f"), _num(r.create_s),
            _num(r.first_ms), lat, _num(r.slices_per_s), _num(r.gflops), _num(r.peak_pct, ".0f"),
            _num(r.rss_mb, ".0f"), budget,
        ])
    return rows


def report_notes(report: BenchReport) -> list[str]:
    """Lines under the table: skipped/failed targets, the machine, ratios, noise warnings."""
    m = report.machine
    notes = [f"{r.target}: {'skipped' if r.status == 'skip' else 'FAILED'}: {r.reason}"
             for r in report.results if r.status != "ok"]
    peaks = ", ".join(f"{k} threads {v['gflops']:.0f} GFLOP/s ({v['lib']})"
                      for k, v in m.get("matmul_peak", {}).items())
    macs = m.get("macs_per_slice")
    notes.append(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['arch']}; load average"
        f" {m['load_avg_start'][0]:.1f} -> {m.get('load_avg_end', [0])[0]:.1f};"
        f" matmul peak {peaks or 'not measured'};"
        f" model {macs / 1e9:.3g} GMAC per {report.config['size']}² slice" if macs else
        f"machine: {m['cpu']}, {m['cores']} cores, {m['arch']}")
    if m.get("eval_set"):
        notes.append(f"mIoU fg on {m['eval_set']}")
    q = report.ratios
    if q:
        parts = [f"best CPU target {q['best_cpu']}: p50 {q['best_p50_ms']:.1f} ms"]
        parts += [f"{q[k]:.2f}x {label}" for k, label in (("vs_eager", "PyTorch eager"),
                                                         ("vs_openvino", "OpenVINO fp32"))
                  if k in q]
        if "delta_miou_pt" in q:
            parts.append(f"ΔmIoU {q['delta_miou_pt']:+.2f} pt vs fp32")
        if q.get("best_rss_mb") is not None:
            parts.append(f"peak RSS {q['best_rss_mb']:.0f} MB")
        if "fp32_peak_pct" in q:
            parts.append(f"ORT fp32 at {q['fp32_peak_pct']:.0f}% of the matmul peak")
        notes.append("; ".join(parts))
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


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file in the same folder and a rename."""
    import tempfile

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EdgesegError(f"{path}: cannot write the report here ({exc}); pick another path") \
            from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

