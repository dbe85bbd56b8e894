"""The training run's configuration: one dataclass, the presets, and what a run returns.

``default`` is the recipe that reaches the most on 2 CPU cores; ``synth`` adds synthetic raw
heads (:mod:`edgeseg.data.synth`) in at most 45 minutes; ``tutorial`` is the tutorial's exact
recipe. :func:`make_config` applies a preset and the user's overrides and checks them.
Saved as ``config.json`` beside every run, so a run can be repeated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` beside it."""

    preset: str = "default"  # "default" (fast on 2 CPU cores), "synth" (raw heads) or "tutorial"
    data: str | None = None  # dataset root in the tutorial layout; None builds the demo MRI set
    epochs: int = 14  # passes over the training slices (14: 0.873 on the slab split in 8.5 min, 2 cores)
    batch_size: int = 16  # patches per step (the tutorial: 16 full slices)
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 1e-4  # AdamW decoupled weight decay; 0 gives the tutorial's plain Adam
    schedule: str = "onecycle"  # "onecycle" (warm-up then cosine decay) or "constant"
    loss: str = "ce_dice"  # "ce_dice" (cross-entropy + soft Dice) or "bce" (the tutorial's)
    patch: int | None = 128  # random crops of patch x patch; None trains on whole slices
    patches_per_slice: int = 2  # crops drawn from each source plane per epoch (553 planes by default)
    augment: bool = True  # field of view, oblique planes, bias, gamma, noise, scale, resolution
    oblique_planes: int = 96  # planes resampled from the 3-D template at random tilts (demo set)
    oblique_tilt_deg: float = 30.0  # their tilt from axial/coronal/sagittal, about both in-plane axes
    synth_planes: int = 0  # planes of synthetic heads (edgeseg.data.synth) added to the training planes
    synth_heads: int = 8  # random heads (skull, scalp, contrast, deformation) they are cut from
    synth_recipe: str = "full"  # edgeseg.data.synth.RECIPES: "full", or one part left out (ablations)
    # "regions" (held-out 3-D balls of the demo template; other data fall back to slabs),
    # "slabs" (held-out slabs of adjacent slices, one plane each) or "tutorial" (last 100)
    split: str = "regions"
    test_fraction: float = 0.2  # share of slices held out by the slab split
    channels_last: bool = True  # NHWC convolutions: ~1.7x faster on this CPU
    eval_batch_size: int = 8  # slices per evaluation forward pass
    seed: int = 0  # seeds weights, shuffling and augmentation
    device: str = "auto"  # "auto" (CUDA if available, with AMP), "cpu" or "cuda"
    workers: int = 0  # DataLoader workers; 0 keeps both CPU cores for the convolutions
    widths: tuple[int, ...] = (16, 32, 64, 128)  # the tutorial's U-Net widths
    runs_dir: str = "runs"  # parent folder of run folders
    name: str | None = None  # run folder name; None picks train, train2, ...
    pixel_spacing_mm: float | None = None  # in-plane pixel size of the data; None: the demo's 0.5 or unknown
    num_classes: int = 3  # background, gray matter, white matter
    class_names: tuple[str, ...] = ("background", "gray_matter", "white_matter")


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # Synthetic heads (issue 22): 640 planes of 8 generated heads beside the demo slices and
    # oblique planes (2.2x the default's patches per epoch), 14 epochs: 32.1 min end to end on the
    # 2-core AMD EPYC (avx2, idle; 115-141 s an epoch, 3 min of planes first). The first sizing,
    # 26 epochs from the Xeon's default rate, would take 26 x 115-141 s = 50-61 min there.
    "synth": dict(epochs=14, synth_planes=640, synth_heads=8),
    # The tutorial: 394x394 whole slices, Adam 3e-4, BCEWithLogits on one-hot masks, batch 16,
    # 30 epochs, the last 100 slices in sorted order as test, no augmentation, eager NCHW.
    "tutorial": dict(
        epochs=30,
        batch_size=16,
        lr=3e-4,
        weight_decay=0.0,
        schedule="constant",
        loss="bce",
        patch=None,
        patches_per_slice=1,
        augment=False,
        split="tutorial",
        channels_last=False,
    ),
}


def make_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    """Build a TrainConfig from a preset and explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise EdgesegError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise EdgesegError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(preset=preset, **values)


@dataclass
class EpochRecord:
    """One row of the run's history (the tutorial's ``hist``)."""

    epoch: int
    loss: float
    iou: float
    test_loss: float
    test_iou: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """What a finished run returns."""

    run_dir: Path
    best_checkpoint: Path
    best_miou_fg: float
    best_epoch: int
    metrics: dict[str, Any]
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0


def config_dict(config: TrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d["widths"] = list(config.widths)
    d["class_names"] = list(config.class_names)
    return d
