"""`edgeseg train` and `edgeseg evaluate`: training a checkpoint and scoring it.

Both need torch (evaluate's robustness table of an .onnx file excepted), which the library
functions import inside the command bodies: `edgeseg --help` and the torch-free commands never
load it, and a core install without it gets one line naming ``edgeseg[train]`` from ``main``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.options import DataOpt, batch_size_option


class Preset(str, Enum):
    default = "default"
    synth = "synth"
    tutorial = "tutorial"


class Split(str, Enum):
    regions = "regions"
    slabs = "slabs"
    tutorial = "tutorial"


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value} is not > 0")
    return value


def train_cmd(
    ctx: typer.Context,
    data: DataOpt = None,
    preset: Annotated[
        Preset,
        typer.Option(help="default: fast on 2 CPU cores; synth: + synthetic raw heads (45 min); tutorial: exact."),
    ] = Preset.default,
    epochs: Annotated[
        int | None, typer.Option(min=1, show_default="default 14, tutorial 30", help="Passes over the training slices.")
    ] = None,
    batch_size: Annotated[int | None, batch_size_option("Samples per step.", show_default="16")] = None,
    lr: Annotated[
        float | None,
        typer.Option(callback=_positive, show_default="default 0.002, tutorial 0.0003", help="(Peak) learning rate."),
    ] = None,
    patch: Annotated[
        int | None,
        typer.Option(min=0, show_default="default 128, tutorial 0", help="Random-crop size; 0 trains on whole slices."),
    ] = None,
    patches_per_slice: Annotated[
        int | None,
        typer.Option(
            "--patches-per-slice",
            min=1,
            show_default="default 2, tutorial 1",
            help="Crops per training slice per epoch.",
        ),
    ] = None,
    split: Annotated[
        Split | None,
        typer.Option(
            show_default="default regions, tutorial tutorial",
            help="Held-out 3-D regions (demo set; other data: slabs), slabs, or the tutorial's last 100.",
        ),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option("--augment/--no-augment", show_default="default on, tutorial off", help="Training augmentation."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(show_default="0", help="Seed for weights, shuffling, augmentation.")
    ] = None,
    device: Annotated[str | None, typer.Option(show_default="auto", help="auto, cpu or cuda.")] = None,
    name: Annotated[
        str | None, typer.Option(show_default="train, train2, ...", help="Run folder name under --runs-dir.")
    ] = None,
    runs_dir: Annotated[
        Path | None, typer.Option("--runs-dir", show_default="runs", help="Parent of run folders.")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Run folder (or last.pt) to continue after a kill.")] = None,
    pixel_spacing: Annotated[
        float | None,
        typer.Option(
            "--pixel-spacing",
            callback=_positive,
            show_default="demo 0.5, else unknown",
            help="In-plane mm per pixel of --data.",
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Training processes (DDP via torchrun: gloo on CPU, one per GPU, NCCL); --batch-size stays global.",
        ),
    ] = 1,
    synth_planes: Annotated[
        int | None,
        typer.Option(
            "--synth-planes", min=0, show_default="default 0, synth 640", help="Planes of synthetic raw heads."
        ),
    ] = None,
    synth_recipe: Annotated[
        str | None,
        typer.Option("--synth-recipe", show_default="full", help="full, no-head, no-contrast or no-deform."),
    ] = None,
) -> None:
    """Train the U-Net (the demo MRI set when --data is not given)."""
    from edgeseg.train.loop import run_training

    overrides = dict(
        data=str(data) if data else None,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patch=patch,
        patches_per_slice=patches_per_slice,
        split=split.value if split else None,
        augment=augment,
        seed=seed,
        device=device,
        name=name,
        runs_dir=str(runs_dir) if runs_dir else None,
        pixel_spacing_mm=pixel_spacing,
        synth_planes=synth_planes,
        synth_recipe=synth_recipe,
    )
    run_training(preset.value, overrides, resume, nproc, _given_options(ctx, drop={"nproc"}))


def _given_options(ctx: typer.Context, drop: set[str]) -> list[str]:
    """The options the user gave, as command-line words again (what --nproc hands each process)."""
    words: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        source = ctx.get_parameter_source(param.name)
        if param.name in drop or value is None or getattr(source, "name", "") == "DEFAULT":
            continue
        if getattr(param, "is_flag", False) and getattr(param, "secondary_opts", None):
            words.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            words += [param.opts[0], str(value.value if isinstance(value, Enum) else value)]
    return words


def evaluate_cmd(
    checkpoint: Annotated[Path | None, typer.Argument(help="Checkpoint; default: newest run's best.pt.")] = None,
    data: DataOpt = None,
    split: Annotated[Split | None, typer.Option(help="Split to evaluate when --data is given.")] = None,
    per_slice: Annotated[
        Path | None, typer.Option("--per-slice", help="Also write one CSV row per held-out slice here.")
    ] = None,
    robustness: Annotated[
        bool,
        typer.Option("--robustness", help="mIoU per perturbation family on the held-out 3-D regions (.pt or .onnx)."),
    ] = False,
    robustness_slices: Annotated[int, typer.Option("--robustness-slices", min=1, help="Slices scored.")] = 32,
) -> None:
    """Per-class IoU and Dice of a checkpoint on held-out slices (or its robustness table)."""
    if robustness:  # torch-free for an .onnx file
        from edgeseg.train.robustness import run_robustness

        if checkpoint is None:
            from edgeseg.artifacts import find_latest_checkpoint

            checkpoint = find_latest_checkpoint()
        run_robustness(checkpoint, data, robustness_slices)
        return
    from edgeseg.train.evaluate import run_evaluation

    run_evaluation(checkpoint, data, split.value if split else None, per_slice)
