"""What ``edgeseg tune`` prints: the table of candidates, the pick, its ratios to the peers, and the
candidate the RSS budget left out.

Every candidate has two timings from the same run (:mod:`edgeseg.bench.crop_bench`): on the whole frame
(the columns ``p50 ms``, ``RSS MB``: the worst case, a volume the crop leaves whole, on which the pick
is made) and on the typical brain box (``crop p50``, ``crop RSS``: what ``edgeseg infer`` runs on
most volumes). The peers are what a user runs without edgeseg, on whole frames, so the cropped
ratios compare the pick on the box with them on the frame.

The budget rule, stated where it applies: a target's ``rss_mb`` (bench/targets.toml) is the peak RSS
of the inference process on the whole frame. When a faster candidate passed its gate but not the
budget, the summary says what it would have given (p50 and peak RSS, whole frame and box), so a
budget that costs speed is visible, and whoever owns the target can state another one there.
"""

from __future__ import annotations

from typing import Any

from edgeseg.runtime.deploy import Candidate, DeployPlan

PEER_NAMES = {"vs_torch": "eager PyTorch", "vs_openvino": "OpenVINO's defaults"}


def ratios(plan: DeployPlan, cropped: bool = False) -> dict[str, float]:
    """The pick's p50 against each peer's (whole frame) in the same run: ``vs_torch``, ``vs_openvino``.
    ``cropped``: the pick's p50 on the brain box instead ({} when it was not timed there)."""
    pick = plan.picked
    mine = None if pick is None else (pick.crop_p50_ms if cropped else pick.p50_ms)
    if mine is None:
        return {}
    return {
        f"vs_{c.backend}": mine / c.p50_ms
        for c in plan.candidates
        if c.role == "peer" and c.status == "ok" and c.p50_ms
    }


def over_budget(plan: DeployPlan) -> Candidate | None:
    """The fastest candidate that passed its gate, is faster than the pick and was left out by the
    RSS budget alone; None when the budget cost nothing."""
    pick = plan.picked
    left = [
        c
        for c in plan.candidates
        if c.role == "candidate" and c.passed and "budget" in c.reason and c.p50_ms is not None
        if pick is None or (pick.p50_ms is not None and c.p50_ms < pick.p50_ms)
    ]
    return min(left, key=lambda c: c.p50_ms or 0.0) if left else None


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def table(plan: DeployPlan) -> Any:
    """A rich table: one row per candidate, the pick marked, peers last; no cell is read as markup
    (a hint such as ``pip install 'edgeseg[openvino]'`` keeps its brackets)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"edgeseg tune: {plan.model} on {plan.machine.cpu}, batch {plan.settings.get('batch', 1)}"))
    batch = int(plan.settings.get("batch", 1))
    cols = ("", "backend", "asked", "ran", "threads", "p50 ms", "p99 ms", "slices/s", "RSS MB")
    crop = plan.settings.get("crop")
    box = ("crop p50", "crop RSS") if crop else ()
    for col in (*cols, *box, "ΔmIoU", "agree %", "gate"):
        t.add_column(col)
    for i, c in enumerate(plan.candidates):
        if c.status == "ok":
            gate = "pass" if not c.failures else "FAIL: " + "; ".join(c.failures)
            gate += f" ({c.reason})" if c.reason else ""
        else:
            gate = f"{c.status}: {c.reason}"
        cells = (
            "★" if i == plan.pick else ("peer" if c.role == "peer" else ""),
            c.label or c.backend,
            c.precision,
            c.ran_precision or "—",
            str(c.threads or "default") + ("" if c.hint == "latency" else f", {c.hint}"),
            _num(c.p50_ms, ".1f"),
            _num(c.p99_ms, ".1f"),
            _num(None if not c.p50_ms else 1e3 * batch / c.p50_ms, ".1f"),
            _num(c.rss_mb, ".0f"),
            *((_num(c.crop_p50_ms, ".1f"), _num(c.crop_rss_mb, ".0f")) if crop else ()),
            _num(None if c.d_miou is None else 100 * c.d_miou, "+.2f") + (" pt" if c.d_miou is not None else ""),
            _num(None if c.agreement is None else 100 * c.agreement, ".2f"),
            gate,
        )
        t.add_row(*map(escape, cells))
    return t


def summary_lines(plan: DeployPlan) -> list[str]:
    """The lines under the table: the machine, the load, the box, the pick and its ratios, and what
    the budget left out."""
    s = plan.settings
    lines = [
        f"machine: {plan.machine.describe()}",
        f"load average {s['load_avg_start'][0]:.2f} -> {s['load_avg_end'][0]:.2f} (figures under load are noisy)",
        f"held-out slices: {s['eval']}; reference ONNX Runtime fp32 mIoU fg {s['reference_miou']:.4f}",
    ]
    if s.get("crop"):
        lines.append(f"brain box timed (crop columns): {s['crop']['describe']}")
    pick = plan.picked
    if pick is None:
        lines.append("pick: none passed its gate and fits the budget; `edgeseg infer` runs ONNX Runtime fp32")
    else:
        parts = [f"{v:.2f}x {PEER_NAMES[k]}" for k, v in ratios(plan).items()]
        budget = f" (budget {plan.rss_budget_mb:.0f} MB, target {plan.target})" if plan.rss_budget_mb else ""
        lines.append(
            f"pick: {pick.label} on {pick.file}, {pick.threads or 'default'} threads: p50 {pick.p50_ms:.1f} ms"
            f"{', ' + ', '.join(parts) if parts else ''}; peak RSS {pick.rss_mb:.0f} MB{budget};"
            f" ΔmIoU {100 * (pick.d_miou or 0.0):+.2f} pt vs ONNX Runtime fp32"
        )
        cropped = "".join(f", {v:.2f}x {PEER_NAMES[k]} (whole frames)" for k, v in ratios(plan, True).items())
        if pick.crop_p50_ms is not None:
            lines.append(
                f"pick on the brain box: p50 {pick.crop_p50_ms:.1f} ms ({pick.crop_p50_ms / pick.p50_ms:.2f}x its"
                f" whole frame){cropped}; peak RSS {_num(pick.crop_rss_mb, '.0f')} MB"
            )
    left = over_budget(plan)
    if left is not None:
        box = "" if left.crop_p50_ms is None else f" ({left.crop_p50_ms:.1f} ms on the brain box)"
        rss = "" if left.crop_rss_mb is None else f" ({left.crop_rss_mb:.0f} MB on the brain box)"
        lines.append(
            f"over budget: {left.label or left.name} on {left.file}, {left.threads or 'default'} threads would have"
            f" given p50 {left.p50_ms:.1f} ms{box}, peak RSS {left.rss_mb:.0f} MB{rss} > {plan.rss_budget_mb:.0f} MB"
            f" (target {plan.target}; state another rss_mb there if this machine can afford it)"
        )
    return lines
