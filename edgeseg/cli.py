"""The `edgeseg` command line: a thin skin over the library.

Each command converts its options and calls one library function. Library
modules are imported inside the commands so that `edgeseg --help` is fast and
`edgeseg infer` never imports torch.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeseg.errors import EdgesegError

app = typer.Typer(
    help="Train, export, validate, run and benchmark the edgeseg MRI segmentation U-Net.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: build the real-MRI demo set.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Shared option aliases, defined once.
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Dataset root in the tutorial layout (MRIs/, Segmentations/)."),
]


class Preset(str, Enum):
    default = "default"
    tutorial = "tutorial"


class Split(str, Enum):
    slabs = "slabs"
    tutorial = "tutorial"


@app.command("train")
def train_cmd(
    data: DataOpt = None,
    preset: Annotated[Preset, typer.Option(help="default: fast on 2 CPU cores; tutorial: exact.")] = Preset.default,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training slices.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Samples per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="(Peak) learning rate.")] = None,
    patch: Annotated[int | None, typer.Option(help="Random-crop size; 0 trains on whole slices.")] = None,
    split: Annotated[Split | None, typer.Option(help="Held-out slabs, or the tutorial's last 100.")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help="Training augmentation.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights, shuffling, augmentation.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    name: Annotated[str | None, typer.Option(help="Run folder name under --runs-dir.")] = None,
    runs_dir: Annotated[Path | None, typer.Option("--runs-dir", help="Parent of run folders.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Run folder (or last.pt) to continue after a kill.")] = None,
) -> None:
    """Train the U-Net (the demo MRI set when --data is not given)."""
    from edgeseg.train import run_training

    overrides = dict(
        data=str(data) if data else None, epochs=epochs, batch_size=batch_size, lr=lr,
        patch=patch, split=split.value if split else None, augment=augment, seed=seed,
        device=device, name=name, runs_dir=str(runs_dir) if runs_dir else None,
    )
    run_training(preset.value, overrides, resume)


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[Path | None, typer.Argument(help="Checkpoint; default: newest run's best.pt.")] = None,
    data: DataOpt = None,
    split: Annotated[Split | None, typer.Option(help="Split to evaluate when --data is given.")] = None,
) -> None:
    """Per-class IoU and Dice of a checkpoint on held-out slices."""
    from edgeseg.train import run_evaluation

    run_evaluation(checkpoint, data, split.value if split else None)


@data_app.command("demo")
def data_demo_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Dataset folder; default ~/.cache/edgeseg/demo-mni152 ($EDGESEG_HOME).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a matching set is cached.")] = False,
) -> None:
    """Build the real-MRI demo set (MNI152 template from nilearn, offline) in the tutorial layout."""
    from rich.console import Console

    from edgeseg.data import build_demo, read_demo_provenance

    root = build_demo(out, force=force)
    counts = read_demo_provenance(root)["counts"]
    per_plane = ", ".join(f"{plane} {n}" for plane, n in counts.items())
    Console().print(f"{root}\n{sum(counts.values())} slices: {per_plane}")


def main() -> None:
    """Console-script entry: user mistakes print one line and exit 1, no traceback."""
    try:
        app(standalone_mode=False)
    except EdgesegError as exc:
        if os.environ.get("EDGESEG_DEBUG"):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
