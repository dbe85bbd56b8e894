"""Benchmark plumbing shared by the suites.

Plain ``pytest`` runs each benchmark once as a smoke test (pytest-benchmark's disabled
mode); ``pytest --benchmark-only`` times them. Each benchmark records how many items
(images, slices) one round processes and which case is its group's baseline; the
summary at the end prints throughput and the ratio to the baseline measured in the
same run, which is what we report (absolute times on shared machines are noise).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not (config.getoption("benchmark_only", False) or config.getoption("benchmark_enable", False)):
        config.option.benchmark_disable = True


@pytest.fixture
def paired() -> Callable[..., None]:
    """Time ``target(*args)`` with ``baseline(*args)`` run (untimed) before every round.

    On a shared machine the load drifts between sequential benchmarks; interleaving the
    baseline with each round and recording its median in ``extra_info`` gives a ratio taken
    under the same load (printed as "paired" in the summary).
    """

    def run(benchmark, target: Callable, baseline: Callable, args: tuple, rounds: int, warmup_rounds: int = 1) -> None:  # noqa: ANN001
        seconds: list[float] = []

        def setup() -> tuple[tuple, dict]:
            start = time.perf_counter()
            baseline(*args)
            seconds.append(time.perf_counter() - start)
            return args, {}

        for _ in range(0 if benchmark.disabled else warmup_rounds):
            baseline(*args)
            target(*args)
        benchmark.pedantic(target, setup=setup, rounds=1 if benchmark.disabled else rounds, iterations=1)
        benchmark.extra_info["paired_baseline_median_s"] = median(seconds)

    return run


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        if bench.stats is not None and bench.extra_info.get("items"):
            groups.setdefault(bench.group or "", []).append(bench)
    if not groups:
        return
    terminalreporter.section("throughput vs the baseline of each group (same run)")
    for group, benches in sorted(groups.items()):
        base = next((b for b in benches if b.extra_info.get("baseline")), None)
        base_rate = base.extra_info["items"] / base.stats.median if base else None
        for b in benches:
            rate = b.extra_info["items"] / b.stats.median
            unit = b.extra_info.get("unit", "items")
            ratio = f"{rate / base_rate:5.2f}x" if base_rate else "   n/a"
            tag = " (baseline)" if b is base else ""
            if "paired_baseline_median_s" in b.extra_info:  # interleaved with the baseline
                tag += f"  paired {b.extra_info['paired_baseline_median_s'] / b.stats.median:5.2f}x"
            if "delta_miou_pt" in b.extra_info:  # accuracy cost of a lever, same run
                tag += (
                    f"  ΔmIoU {b.extra_info['delta_miou_pt']:+.2f} pt,"
                    f" {b.extra_info['disagree_pct']:.2f}% pixels differ"
                )
            terminalreporter.write_line(f"{group:24s} {b.name:48s} {rate:9.2f} {unit}/s  {ratio}{tag}")
