"""`edgeseg tune` and `edgeseg bench`: time the runtimes here and pick one; report per deployment target.

Both time what `edgeseg infer` runs, torch-free for ONNX files: the library (``edgeseg.bench.tune``,
``edgeseg.bench.suite``) is imported inside the command bodies, and torch only where a ``.pt`` sibling
is timed as a peer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.options import (
    DataOpt,
    TargetsOpt,
    crop_option,
    json_option,
    max_seconds_option,
    runs_option,
)


def tune_cmd(
    model: Annotated[
        Path | None,
        typer.Argument(help="fp32 ONNX model; its _fp16/_int8/.pt siblings are tried too. Default: the shipped one."),
    ] = None,
    target: Annotated[str, typer.Option(help="Target whose threads cap and RSS budget apply.")] = "edge-x86",
    runs: Annotated[int, runs_option("Timed inferences per candidate at most.")] = 30,
    max_seconds: Annotated[
        float, max_seconds_option("Stop timing a candidate after this long (once 5 runs are in; 3 above batch 1).")
    ] = 8.0,
    slices: Annotated[int, typer.Option(min=1, help="Held-out slices for ΔmIoU against ONNX Runtime fp32.")] = 8,
    batch: Annotated[
        int | None,
        typer.Option(
            min=1, show_default="the target's", help="Slices per timed inference (>1: OpenVINO throughput too)."
        ),
    ] = None,
    threads: Annotated[
        str | None, typer.Option(help="Comma-separated thread settings; default 1 and all cores.")
    ] = None,
    peers: Annotated[
        bool, typer.Option("--peers/--no-peers", help="Also time eager PyTorch and OpenVINO's defaults.")
    ] = True,
    crop: Annotated[bool, crop_option("Also time each candidate on the typical brain box (crop columns).")] = True,
    targets: TargetsOpt = None,
    data: DataOpt = None,
) -> None:
    """Time every gated backend x precision x threads here, each in its own process; write MODEL.deploy.json."""
    from edgeseg.bench.tune import TuneConfig, parse_threads, run_tune

    config = TuneConfig(
        target=target,
        targets_file=targets,
        runs=runs,
        max_seconds=max_seconds,
        slices=slices,
        batch=batch,
        threads=parse_threads(threads),
        peers=peers,
        crop=crop,
        data=data,
    )
    run_tune(model, config)


def bench_cmd(
    model: Annotated[
        Path | None,
        typer.Argument(
            help="fp32 ONNX model; its _fp16/_int8/.pt siblings are found next to it."
            " Default: the packaged shipped model."
        ),
    ] = None,
    target: Annotated[str, typer.Option(help="A target from the targets file, or all.")] = "all",
    json_path: Annotated[Path | None, json_option("Also write the report as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the table as markdown.")] = None,
    targets: TargetsOpt = None,
    runs: Annotated[int, runs_option("Timed inferences per target at most.")] = 50,
    max_seconds: Annotated[float, max_seconds_option("Stop timing a target after this long (>= 5 runs).")] = 10.0,
    miou: Annotated[bool, typer.Option("--miou/--no-miou", help="Score mIoU on the demo test slices.")] = True,
    rss: Annotated[bool, typer.Option("--rss/--no-rss", help="Peak RSS of a fresh inference process.")] = True,
    crop: Annotated[bool, crop_option("Also time every target on the typical brain box (crop columns).")] = True,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Every column (file size, create and first-run times, all percentiles, GFLOP/s)."),
    ] = False,
) -> None:
    """Latency, throughput, mIoU, memory and budgets per deployment target (the packaged targets file or --targets)."""
    from edgeseg.bench.suite import BenchConfig, bench

    config = BenchConfig(runs=runs, max_seconds=max_seconds, miou=miou, rss=rss, crop=crop)
    if targets:
        config.targets_file = targets
    bench(model, target, config, json_path, markdown, wide)
