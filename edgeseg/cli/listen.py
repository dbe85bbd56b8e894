"""`edgeseg listen`: the DICOM node (C-STORE in, segment each complete series, SEG and SR out).

Settings come from ``--config`` and the options override them (``node_config.override``); the
node runs `edgeseg infer`'s torch-free path, and pynetdicom is imported only when it starts, so a
core install without ``edgeseg[node]`` gets one line naming the extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.options import Backend, model_option, seg_flagged_option


def listen_cmd(
    config_file: Annotated[
        Path | None, typer.Option("--config", help="JSON file of settings (see README); options override it.")
    ] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="This node's AE title. [default: EDGESEG]")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="DICOM port. [default: 11112]")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind. [default: 127.0.0.1]")] = None,
    allow: Annotated[
        list[str] | None, typer.Option("--allow", help="A calling AE title to accept (repeat it); others are refused.")
    ] = None,
    allow_any: Annotated[
        bool, typer.Option("--allow-any", help="Accept any calling AE title (a trusted network only).")
    ] = False,
    state: Annotated[
        Path | None, typer.Option("--state", help="Spool, queue, results, audit.jsonl. [default: edgeseg-node]")
    ] = None,
    quiet_seconds: Annotated[
        float | None,
        typer.Option("--quiet-seconds", min=0.01, help="A series is complete after this long without an instance."),
    ] = None,
    send_to: Annotated[
        str | None, typer.Option("--send-to", help="C-STORE results to AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242).")
    ] = None,
    stow_url: Annotated[str | None, typer.Option("--stow-url", help="Or STOW-RS them to this DICOMweb URL.")] = None,
    model: Annotated[Path | None, model_option("ONNX model; default: the shipped one.")] = None,
    backend: Annotated[Backend | None, typer.Option(help="As `edgeseg infer --backend`. [default: auto]")] = None,
    retry_seconds: Annotated[
        float | None, typer.Option("--retry-seconds", min=0.01, help="Wait before sending again after a failure.")
    ] = None,
    seg_flagged: Annotated[
        bool, seg_flagged_option("Send a SEG and SR marked 'QC FLAGGED' for series QC flags (default none).")
    ] = False,
    watch: Annotated[
        Path | None,
        typer.Option("--watch", help="Also take in DICOM files exported to this folder (removed once spooled)."),
    ] = None,
    stow_port: Annotated[
        int | None,
        typer.Option("--stow-port", min=1, max=65535, help="Also accept DICOMweb STOW-RS on this port (no auth)."),
    ] = None,
) -> None:
    """A DICOM node: receive series by C-STORE, segment each when complete, send SEG and SR on (edgeseg[node])."""
    from edgeseg.node.config import NodeConfig, load_config, override
    from edgeseg.node.server import run_node
    from edgeseg.signals import stop_on_signals

    config = override(
        load_config(config_file) if config_file else NodeConfig(),
        ae_title=ae_title,
        port=port,
        host=host,
        allowed=tuple(allow) if allow else None,
        allow_any=allow_any or None,
        state=state,
        quiet_seconds=quiet_seconds,
        destination=send_to,
        stow_url=stow_url,
        model=model,
        backend=backend.value if backend else None,
        retry_seconds=retry_seconds,
        seg_flagged=seg_flagged or None,
        watch=watch,
        stow_port=stow_port,
    )
    with stop_on_signals():  # SIGTERM as Ctrl-C: the server stops between two steps
        run_node(config, say=lambda line: typer.echo(line, err=True))
