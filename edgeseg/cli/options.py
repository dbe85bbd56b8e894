"""The options several commands share, defined once.

Where two commands take the same option with the same help (``--data``, ``--targets``,
``--size-slices``), it is one ``Annotated`` alias. Where the flag recurs with help that says
what it means for that command (``--out``, ``--crop``, ``--runs``, ``--max-seconds``), the
flag's spelling and bounds live in one factory and each command passes its own help: the
help texts are the CLI's documentation, so they stay as each command's reader needs them.
Nothing here imports more than typer, so ``edgeseg --help`` stays fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Dataset root in the tutorial layout (MRIs/, Segmentations/)."),
]
TargetsOpt = Annotated[
    Path | None,
    typer.Option("--targets", exists=True, dir_okay=False, help="Targets file; default: the packaged one."),
]
SizeSlicesOpt = Annotated[int, typer.Option("--size-slices", min=1, help="Slices at each other size.")]


class Backend(str, Enum):
    """Inference backends `edgeseg infer` and `edgeseg listen` accept."""

    auto = "auto"
    ort = "ort"
    openvino = "openvino"


def out_option(help: str) -> Any:
    """``--out``: where a command writes; the default and what lands there differ by command."""
    return typer.Option("--out", help=help)


def crop_option(help: str) -> Any:
    """``--crop/--no-crop``: run (or also time) the model on the brain box."""
    return typer.Option("--crop/--no-crop", help=help)


def runs_option(help: str) -> Any:
    """``--runs``: timed inferences, at least one."""
    return typer.Option(min=1, help=help)


def max_seconds_option(help: str) -> Any:
    """``--max-seconds``: a time bound on timing, 0 or more."""
    return typer.Option("--max-seconds", min=0.0, help=help)


def json_option(help: str) -> Any:
    """``--json``: a report file (the parameter is ``json_path``, so ``json`` the module is not shadowed)."""
    return typer.Option("--json", help=help)


def batch_size_option(help: str, show_default: bool | str = True) -> Any:
    """``--batch-size``: samples per step or per model call, at least one."""
    return typer.Option("--batch-size", min=1, show_default=show_default, help=help)


def seg_flagged_option(help: str) -> Any:
    """``--seg-flagged``: also write/send the SEG and SR of a scan QC flagged."""
    return typer.Option("--seg-flagged", help=help)


def model_option(help: str) -> Any:
    """``--model``: an exported ONNX model (infer, listen); default the shipped one."""
    return typer.Option("--model", help=help)
