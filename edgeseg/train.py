"""Training: the tutorial's recipe, and a faster default that reaches more on 2 CPU cores.

Run ``edgeseg train`` (the demo MRI set, default preset) or
``edgeseg train --preset tutorial --data DIR``. Each run writes ``runs/<name>/``:
``best.pt``, ``last.pt``, ``config.json``, ``history.json``/``history.csv``,
``curves.png`` and ``predictions.png``. ``--resume runs/<name>`` continues after a kill.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg import __version__
from edgeseg.augment import RobustPatches
from edgeseg.data import Slices, load_slices
from edgeseg.demo import build_demo, read_demo_provenance
from edgeseg.errors import EdgesegError, Interrupted
from edgeseg.evaluate import evaluate, format_metrics_table
from edgeseg.files import atomic_write, write_csv
from edgeseg.metrics import IGNORE, ConfusionMatrix
from edgeseg.model import NORM_CONTRACT, ModelConfig, UNet, load_checkpoint, save_checkpoint
from edgeseg.split import Split, is_demo_set, make_split


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` beside it."""

    preset: str = "default"  # "default" (fast on 2 CPU cores) or "tutorial" (its exact recipe)
    data: str | None = None  # dataset root in the tutorial layout; None builds the demo MRI set
    epochs: int = 8  # passes over the training slices
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


# ----------------------------------------------------------------------------- losses


def segmentation_loss(kind: str, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss over logits ``(N, C, H, W)`` and integer masks ``(N, H, W)``."""
    if kind == "bce":

        def tutorial_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            valid = (mask != IGNORE).unsqueeze(1).to(logits.dtype)
            target = F.one_hot(mask.clamp_max(num_classes - 1), num_classes).permute(0, 3, 1, 2)
            per_pixel = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
            return (per_pixel * valid).sum() / (valid.sum() * num_classes).clamp_min(1)

        return tutorial_bce
    if kind == "ce_dice":

        def ce_dice(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            # all-IGNORE batches (a patch inside a held-out ball) would make the mean NaN
            ce = F.cross_entropy(logits, mask, ignore_index=IGNORE) if (mask != IGNORE).any() else logits.sum() * 0
            valid = (mask != IGNORE).unsqueeze(1)
            prob = logits.float().softmax(dim=1)[:, 1:] * valid  # foreground classes only
            target = F.one_hot(mask.clamp_max(num_classes - 1), num_classes).permute(0, 3, 1, 2)[:, 1:]
            target = (target * valid).to(prob.dtype)
            inter = (prob * target).sum(dim=(0, 2, 3))
            denom = prob.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
            dice = (2 * inter + 1.0) / (denom + 1.0)
            return ce + (1 - dice).mean()

        return ce_dice
    raise EdgesegError(f"unknown loss {kind!r}; choose 'ce_dice' or 'bce'")


# ----------------------------------------------------------------------------- the run


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgesegError("--device cuda: no CUDA device is visible to PyTorch; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise EdgesegError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def new_run_dir(runs_dir: Path, name: str | None) -> Path:
    """``runs/<name>``, or the first free ``runs/train``, ``runs/train2``, ... ."""
    if name:
        if Path(name).name != name or name in (".", ".."):
            raise EdgesegError(f"--name {name!r} must be a plain folder name, not a path")
        return runs_dir / name
    for k in range(1, 10_000):
        candidate = runs_dir / ("train" if k == 1 else f"train{k}")
        if not candidate.exists():
            return candidate
    raise EdgesegError(f"{runs_dir}: no free run name; pass --name")


def train(
    config: TrainConfig,
    resume: Path | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[..., Any] | None = None,
) -> TrainResult:
    """Train a U-Net; returns the best checkpoint and its held-out metrics.

    Args:
        config: the run's settings (see :class:`TrainConfig`); ignored fields when resuming
            are taken from the run's saved ``config.json``.
        resume: a run folder or its ``last.pt``; continues after the last finished epoch.
        log: receives one summary line per epoch.
        progress: optional ``progress(epoch, step, steps, loss, iou)`` callback per step.

    Raises:
        Interrupted: on Ctrl-C, naming the epochs kept in the run folder and the resume command.
    """
    run_dir, state = _prepare_run(config, resume)
    try:
        return _train_run(config, run_dir, state, log, progress)
    except KeyboardInterrupt:
        raise Interrupted(_resume_note(run_dir)) from None


def _resume_note(run_dir: Path) -> str:
    """What an interrupted run kept: epochs finish atomically (last.pt, then history.json)."""
    try:
        finished = len(json.loads((run_dir / "history.json").read_text()))
    except (OSError, ValueError):
        finished = 0
    if not finished or not (run_dir / "last.pt").is_file():
        return f"no epoch had finished in {run_dir}; rerun the same command to start over"
    return f"{finished} epoch(s) finished and saved in {run_dir}; continue with: edgeseg train --resume {run_dir}"


def _train_run(
    config: TrainConfig,
    run_dir: Path,
    state: dict[str, Any] | None,
    log: Callable[[str], None],
    progress: Callable[..., Any] | None,
) -> TrainResult:
    """The body of :func:`train` once the run folder is chosen."""
    start = time.perf_counter()
    if state is not None:
        config = TrainConfig(
            **{
                **state["train_config"],
                "widths": tuple(state["train_config"]["widths"]),
                "class_names": tuple(state["train_config"]["class_names"]),
            }
        )
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    slices = _load_data(config)
    if config.split == "regions" and not is_demo_set(slices.root):
        log(f"{slices.root} is not the demo set: no 3-D volume to hold regions out of; using --split slabs")
        config.split = "slabs"
    split = make_split(slices, config.split, config.test_fraction, config.seed)
    test_idx = split.test
    scored = Slices(slices.root, slices.keys, slices.images, split.test_masks)
    model_config = ModelConfig(1, config.num_classes, config.widths, config.class_names)
    model = UNet(model_config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Items come normalised with their whole frame's statistics (model.segment skips the
    # model's own normalisation), so patches look like inference on whole frames.
    images, masks = _sources(slices, split, config, log)
    dataset = RobustPatches(
        images,
        masks,
        len(images) * config.patches_per_slice,
        patch=config.patch,
        augment=config.augment,
        seed=config.seed,
    )
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _make_scheduler(config, optimizer, steps_per_epoch)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = segmentation_loss(config.loss, config.num_classes)
    history: list[EpochRecord] = []
    best = {"miou_fg": -1.0, "epoch": -1, "metrics": {}}
    first_epoch = 0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = [EpochRecord(**r) for r in state["history"]]
        best = dict(state["best"])
        first_epoch = int(state["epoch"]) + 1
        log(f"resuming {run_dir} after epoch {first_epoch}/{config.epochs}")
    _write_json(run_dir / "config.json", _config_dict(config))
    data_info = {
        "root": str(slices.root),
        "split": config.split,
        "split_note": split.note,
        "test_keys": [slices.keys[i] for i in test_idx],
        # Inference resamples scans of known voxel size to this before the model sees them.
        "pixel_spacing_mm": config.pixel_spacing_mm or _demo_pixel_mm(slices.root),
    }
    for epoch in range(first_epoch, config.epochs):
        t0 = time.perf_counter()
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=config.workers,
            generator=torch.Generator().manual_seed(config.seed * 1000 + epoch),
            drop_last=False,
        )
        loss, iou = _train_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, config, device, epoch, progress)
        metrics, test_loss = evaluate(
            model,
            scored,
            test_idx,
            batch_size=config.eval_batch_size,
            device=device,
            loss_fn=loss_fn,
            class_names=config.class_names,
            num_classes=config.num_classes,
        )
        test_iou = metrics["miou_fg"] if metrics["miou_fg"] is not None else float("nan")
        record = EpochRecord(
            epoch + 1, loss, iou, test_loss, test_iou, optimizer.param_groups[0]["lr"], time.perf_counter() - t0
        )
        history.append(record)
        ckpt_extra = dict(
            train_config=_config_dict(config),
            metrics=metrics,
            epoch=epoch,
            data=data_info,
            edgeseg_version=__version__,
            history=[asdict(r) for r in history],
        )
        if test_iou > best["miou_fg"]:
            best = {"miou_fg": test_iou, "epoch": epoch + 1, "metrics": metrics}
            save_checkpoint(run_dir / "best.pt", model, **ckpt_extra)
        save_checkpoint(
            run_dir / "last.pt",
            model,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            best=best,
            **ckpt_extra,
        )
        _write_history(run_dir, history)
        log(
            f"epoch {epoch + 1}/{config.epochs}  loss {loss:.4f}  iou {iou:.4f}  "
            f"test_loss {test_loss:.4f}  test_iou {test_iou:.4f}  ({record.seconds:.0f}s)"
        )
    _write_reports(run_dir, history, scored, test_idx, config, device)
    return TrainResult(
        run_dir,
        run_dir / "best.pt",
        best["miou_fg"],
        best["epoch"],
        best["metrics"],
        history,
        time.perf_counter() - start,
    )


def _train_epoch(
    model, loader, optimizer, scheduler, scaler, loss_fn, config, device, epoch, progress
) -> tuple[float, float]:
    """One pass; returns (mean loss, foreground mIoU of the training predictions)."""
    model.train()
    cm = ConfusionMatrix(config.num_classes)
    total, count = 0.0, 0
    steps = len(loader)
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model.segment(x)
            loss = loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            raise EdgesegError(
                f"training diverged: loss is {loss.item()} at epoch {epoch + 1} step {step + 1};"
                " the last good checkpoint is kept — lower --lr or check the data for extreme values"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.item() * len(x)
        count += len(x)
        cm.update(logits.detach().argmax(dim=1).cpu().numpy(), y.cpu().numpy())
        if progress is not None:
            progress(epoch, step + 1, steps, total / count, cm.miou_fg() or 0.0)
    return total / max(count, 1), cm.miou_fg() or 0.0


def _make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=config.epochs * steps_per_epoch,
            pct_start=0.15,
            div_factor=10.0,
            final_div_factor=100.0,
        )
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise EdgesegError(f"unknown schedule {config.schedule!r}; choose onecycle or constant")


def _prepare_run(config: TrainConfig, resume: Path | None) -> tuple[Path, dict[str, Any] | None]:
    if resume is None:
        run_dir = new_run_dir(Path(config.runs_dir), config.name)
        if (run_dir / "last.pt").exists():
            raise EdgesegError(f"{run_dir}: a run already exists here; pass --resume {run_dir} or another --name")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, None
    last = Path(resume) / "last.pt" if Path(resume).is_dir() else Path(resume)
    if not last.is_file():
        raise EdgesegError(f"{last}: nothing to resume (no last.pt); start a new run without --resume")
    _, state = load_checkpoint(last)
    if "optimizer" not in state or "train_config" not in state:
        raise EdgesegError(f"{last}: not a resumable last.pt (no optimizer state)")
    if int(state.get("normalization_contract", 1)) != NORM_CONTRACT:
        raise EdgesegError(
            f"{last}: trained under normalisation contract {state.get('normalization_contract', 1)},"
            f" this edgeseg trains contract {NORM_CONTRACT}; start a new run instead of --resume"
        )
    return last.parent, state


def _sources(
    slices: Slices, split: Split, config: TrainConfig, log: Callable[[str], None]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training planes: the split's training slices, plus oblique planes of the demo template.

    Oblique planes are resampled from the template once per run (about 0.1 s each) and
    augmented anew every epoch. Their pixels in held-out anatomy are IGNORE, so they supervise
    nothing the test scores: the held-out balls and their gaps (regions split), or the voxels
    of every slice that does not train, test slabs and their gaps (slab split).
    """
    images = [slices.images[i] for i in split.train]
    masks = [split.train_masks[i] for i in split.train]
    if config.split not in ("regions", "slabs") or not config.augment or config.oblique_planes <= 0:
        return images, masks
    if not is_demo_set(slices.root):
        return images, masks
    from edgeseg.volume import brain_voxels, load_template, oblique_plane, sample_plane

    template, rng = load_template(), np.random.default_rng([config.seed, 7])
    brain, held_out = brain_voxels(template), _held_out_voxels(slices, split, config)
    size = slices.images[0].shape[0]
    while len(images) < len(split.train) + config.oblique_planes:
        plane = oblique_plane(template, rng, config.oblique_tilt_deg, size, brain)
        image, labels = sample_plane(template, plane)
        if (labels > 0).mean() >= 0.02:  # the demo set's own rule for a slice with brain
            images.append(image)
            masks.append(np.where(held_out(plane), IGNORE, labels).astype(np.uint8))
    log(
        f"{config.oblique_planes} oblique planes (tilt up to {config.oblique_tilt_deg:g} deg)"
        f" added to {len(split.train)} slices"
    )
    return images, masks


def _held_out_voxels(slices: Slices, split: Split, config: TrainConfig) -> Callable[[Any], np.ndarray]:
    """``plane -> (H, W) bool``: the pixels of a template plane that must not supervise training."""
    from edgeseg.volume import demo_planes, held_out_regions, held_out_slabs

    if config.split == "regions":
        regions = held_out_regions(config.seed)
        return lambda plane: regions.classify(plane) != 0  # held out or gap
    planes = demo_planes(slices.root)
    kept = set(split.train)
    slabs = held_out_slabs([p for i, p in enumerate(planes) if i not in kept])
    return slabs.classify


def _load_data(config: TrainConfig) -> Slices:
    root = Path(config.data) if config.data else build_demo()
    return load_slices(root, config.num_classes)


def _demo_pixel_mm(root: Path) -> float | None:
    """The demo set's pixel size from its provenance; None for other data."""
    try:
        return float(read_demo_provenance(root)["pixel_mm"])
    except (EdgesegError, KeyError, TypeError, ValueError, OSError):
        return None


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d["widths"] = list(config.widths)
    d["class_names"] = list(config.class_names)
    return d


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def _write_history(run_dir: Path, history: list[EpochRecord]) -> None:
    rows = [asdict(r) for r in history]
    _write_json(run_dir / "history.json", rows)
    write_csv(run_dir / "history.csv", rows)


# ----------------------------------------------------------------------------- figures


def _write_reports(
    run_dir: Path,
    history: list[EpochRecord],
    slices: Slices,
    test_idx: list[int],
    config: TrainConfig,
    device: torch.device,
) -> None:
    """``curves.png`` (loss and IoU per epoch) and ``predictions.png`` (image / truth / prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history:
        epochs = [r.epoch for r in history]
        fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
        # markers: a run of one epoch is one point per line, which a line alone does not draw
        ax_loss.plot(epochs, [r.loss for r in history], marker="o", label="train")
        ax_loss.plot(epochs, [r.test_loss for r in history], marker="o", label="test")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
        ax_iou.plot(epochs, [r.iou for r in history], marker="o", label="train")
        ax_iou.plot(epochs, [r.test_iou for r in history], marker="o", label="test")
        ax_iou.set(xlabel="epoch", ylabel="mean foreground IoU", title="IoU")
        for ax in (ax_loss, ax_iou):
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / "curves.png", dpi=100)
        plt.close(fig)
    best_path = run_dir / "best.pt"
    if not test_idx or not best_path.exists():
        return
    model, _ = load_checkpoint(best_path, device)
    picks = [test_idx[int(k)] for k in np.linspace(0, len(test_idx) - 1, min(4, len(test_idx)))]
    fig, axes = plt.subplots(len(picks), 3, figsize=(9, 3 * len(picks)), squeeze=False)
    with torch.inference_mode():
        for row, i in zip(axes, picks, strict=True):
            x = torch.from_numpy(slices.images[i][None, None]).to(device)
            pred = model(x).argmax(dim=1)[0].cpu().numpy()
            truth = np.ma.masked_equal(slices.masks[i], IGNORE)  # unscored pixels left blank
            for ax, img, title in zip(
                row, (slices.images[i], truth, pred), (slices.keys[i], "ground truth", "prediction"), strict=True
            ):
                ax.imshow(
                    img,
                    cmap="gray" if img is slices.images[i] else "viridis",
                    vmin=None if img is slices.images[i] else 0,
                    vmax=None if img is slices.images[i] else config.num_classes - 1,
                )
                ax.set_title(title, fontsize=9)
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(run_dir / "predictions.png", dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------- console front-end


def run_training(preset: str, overrides: dict[str, Any], resume: Path | None = None) -> TrainResult:
    """``edgeseg train``: a rich progress bar per epoch, one summary line per epoch, a final table."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    config = make_config(preset, **overrides)
    if config.patch == 0:  # --patch 0: whole slices
        config.patch = None
    if config.data is None and resume is None:
        demo = build_demo()
        console.print(f"no --data given: using the demo MRI set (nilearn's MNI152 2009a template) at {demo}")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("epoch", total=None, stats="")

        def on_step(epoch: int, step: int, steps: int, loss: float, iou: float) -> None:
            bar.update(
                task,
                description=f"epoch {epoch + 1}",
                completed=step,
                total=steps,
                stats=f"loss {loss:.4f} iou {iou:.4f}",
            )

        result = train(config, resume, log=bar.console.print, progress=on_step)
    console.print(format_metrics_table(result.metrics))
    print(
        f"best held-out mean foreground IoU {result.best_miou_fg:.4f} at epoch {result.best_epoch}"
        f" in {result.seconds / 60:.1f} min -> {result.best_checkpoint}"
    )
    return result
