"""Training: the tutorial's recipe, and a faster default that reaches more on 2 CPU cores.

Run ``edgeseg train`` (the demo MRI set, default preset) or
``edgeseg train --preset tutorial --data DIR``. Each run writes ``runs/<name>/``:
``best.pt``, ``last.pt``, ``config.json``, ``history.json``/``history.csv``,
``curves.png`` and ``predictions.png``. ``--resume runs/<name>`` continues after a kill.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg import __version__
from edgeseg.data import Slices, build_demo, load_slices, make_train_dataset, read_demo_provenance, split_indices
from edgeseg.errors import EdgesegError
from edgeseg.metrics import ConfusionMatrix
from edgeseg.model import ModelConfig, UNet, load_checkpoint, save_checkpoint
from edgeseg.outputs import atomic_write


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
    patches_per_slice: int = 4  # crops drawn from each training slice per epoch
    augment: bool = True  # flips, small affine, intensity scale/gamma, noise
    split: str = "slabs"  # "slabs" (held-out slabs of adjacent slices) or "tutorial" (last 100)
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
        epochs=30, batch_size=16, lr=3e-4, weight_decay=0.0, schedule="constant", loss="bce",
        patch=None, patches_per_slice=1, augment=False, split="tutorial", channels_last=False,
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
        bce = nn.BCEWithLogitsLoss()

        def tutorial_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            target = F.one_hot(mask, num_classes).permute(0, 3, 1, 2).to(logits.dtype)
            return bce(logits, target)

        return tutorial_bce
    if kind == "ce_dice":

        def ce_dice(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            ce = F.cross_entropy(logits, mask)
            prob = logits.float().softmax(dim=1)[:, 1:]  # foreground classes only
            target = F.one_hot(mask, num_classes).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
            inter = (prob * target).sum(dim=(0, 2, 3))
            denom = prob.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
            dice = (2 * inter + 1.0) / (denom + 1.0)
            return ce + (1 - dice).mean()

        return ce_dice
    raise EdgesegError(f"unknown loss {kind!r}; choose 'ce_dice' or 'bce'")


# ----------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    slices: Slices,
    indices: list[int],
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    class_names: tuple[str, ...] | None = None,
    num_classes: int = 3,
    per_slice: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], float]:
    """Whole-slice evaluation over ``indices``, batched by equal shape.

    Args:
        per_slice: if given, receives one row per slice (key, foreground pixels, per-class
            IoU, foreground mIoU), in ``indices`` order, to find where a model fails.

    Returns:
        ``(metrics summary, mean loss)``; loss is NaN when ``loss_fn`` is None.
    """
    model.eval()
    cm = ConfusionMatrix(num_classes, class_names)
    rows: dict[int, dict[str, Any]] = {}
    losses: list[float] = []
    channels_last = _is_channels_last(model)
    for batch in _shape_batches(slices, indices, batch_size):
        x = torch.from_numpy(np.stack([slices.images[i] for i in batch])[:, None]).to(device)
        y = torch.from_numpy(np.stack([slices.masks[i] for i in batch]).astype(np.int64)).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        if loss_fn is not None:
            losses.append(float(loss_fn(logits, y)) * len(batch))
        pred, truth = logits.argmax(dim=1).cpu().numpy(), y.cpu().numpy()
        cm.update(pred, truth)
        if per_slice is not None:
            rows.update({i: _slice_row(slices.keys[i], p, t, num_classes, class_names)
                         for i, p, t in zip(batch, pred, truth, strict=True)})
    if per_slice is not None:
        per_slice.extend(rows[i] for i in indices)
    mean_loss = sum(losses) / max(len(indices), 1) if losses else float("nan")
    return cm.summary(), mean_loss


def _slice_row(key: str, pred: np.ndarray, truth: np.ndarray, num_classes: int,
               class_names: tuple[str, ...] | None) -> dict[str, Any]:
    cm = ConfusionMatrix(num_classes, class_names)
    cm.update(pred, truth)
    summary = cm.summary()
    return {"key": key, "foreground_px": int((truth > 0).sum()), "miou_fg": summary["miou_fg"],
            **{f"iou_{name}": iou for name, iou in summary["iou"].items()}}


def _shape_batches(slices: Slices, indices: list[int], batch_size: int) -> Iterator[list[int]]:
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        by_shape.setdefault(slices.images[i].shape, []).append(i)
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _is_channels_last(model: nn.Module) -> bool:
    weight = next(model.parameters())
    return weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


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


def find_latest_checkpoint(runs_dir: Path = Path("runs")) -> Path:
    """The newest run's ``best.pt`` under ``runs_dir``."""
    candidates = sorted(Path(runs_dir).glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise EdgesegError(
            f"{runs_dir}: no run with a best.pt; train one with `edgeseg train` or pass a checkpoint"
        )
    return candidates[-1]


def train(config: TrainConfig, resume: Path | None = None, log: Callable[[str], None] = print,
          progress: Callable[..., Any] | None = None) -> TrainResult:
    """Train a U-Net; returns the best checkpoint and its held-out metrics.

    Args:
        config: the run's settings (see :class:`TrainConfig`); ignored fields when resuming
            are taken from the run's saved ``config.json``.
        resume: a run folder or its ``last.pt``; continues after the last finished epoch.
        log: receives one summary line per epoch.
        progress: optional ``progress(epoch, step, steps, loss, iou)`` callback per step.
    """
    start = time.perf_counter()
    run_dir, state = _prepare_run(config, resume)
    if state is not None:
        config = TrainConfig(**{**state["train_config"], "widths": tuple(state["train_config"]["widths"]),
                                "class_names": tuple(state["train_config"]["class_names"])})
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    slices = _load_data(config)
    train_idx, test_idx = split_indices(len(slices), config.split, config.test_fraction, config.seed)
    model_config = ModelConfig(1, config.num_classes, config.widths, config.class_names)
    model = UNet(model_config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Repeated indices draw different crops: the dataset seeds each item by its position.
    # Items come z-scored with their whole slice's statistics (model.segment skips the
    # model's own per-input normalisation), so patches look like inference on whole slices.
    dataset = make_train_dataset(
        slices, train_idx * config.patches_per_slice, patch=config.patch,
        augment=config.augment, seed=config.seed, normalize=True,
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
        "root": str(slices.root), "split": config.split,
        "test_keys": [slices.keys[i] for i in test_idx],
        # Inference resamples scans of known voxel size to this before the model sees them.
        "pixel_spacing_mm": config.pixel_spacing_mm or _demo_pixel_mm(slices.root),
    }
    for epoch in range(first_epoch, config.epochs):
        t0 = time.perf_counter()
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, shuffle=True, num_workers=config.workers,
            generator=torch.Generator().manual_seed(config.seed * 1000 + epoch), drop_last=False,
        )
        loss, iou = _train_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, config,
                                 device, epoch, progress)
        metrics, test_loss = evaluate(
            model, slices, test_idx, batch_size=config.eval_batch_size, device=device,
            loss_fn=loss_fn, class_names=config.class_names, num_classes=config.num_classes,
        )
        test_iou = metrics["miou_fg"] if metrics["miou_fg"] is not None else float("nan")
        record = EpochRecord(epoch + 1, loss, iou, test_loss, test_iou,
                             optimizer.param_groups[0]["lr"], time.perf_counter() - t0)
        history.append(record)
        ckpt_extra = dict(
            train_config=_config_dict(config), metrics=metrics, epoch=epoch, data=data_info,
            edgeseg_version=__version__, history=[asdict(r) for r in history],
        )
        if test_iou > best["miou_fg"]:
            best = {"miou_fg": test_iou, "epoch": epoch + 1, "metrics": metrics}
            save_checkpoint(run_dir / "best.pt", model, **ckpt_extra)
        save_checkpoint(
            run_dir / "last.pt", model, optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), best=best, **ckpt_extra,
        )
        _write_history(run_dir, history)
        log(
            f"epoch {epoch + 1}/{config.epochs}  loss {loss:.4f}  iou {iou:.4f}  "
            f"test_loss {test_loss:.4f}  test_iou {test_iou:.4f}  ({record.seconds:.0f}s)"
        )
    _write_reports(run_dir, history, slices, test_idx, config, device)
    return TrainResult(run_dir, run_dir / "best.pt", best["miou_fg"], best["epoch"],
                       best["metrics"], history, time.perf_counter() - start)


def _train_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, config, device, epoch,
                 progress) -> tuple[float, float]:
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
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
            pct_start=0.15, div_factor=10.0, final_div_factor=100.0,
        )
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise EdgesegError(f"unknown schedule {config.schedule!r}; choose onecycle or constant")


def _prepare_run(config: TrainConfig, resume: Path | None) -> tuple[Path, dict[str, Any] | None]:
    if resume is None:
        run_dir = new_run_dir(Path(config.runs_dir), config.name)
        if (run_dir / "last.pt").exists():
            raise EdgesegError(
                f"{run_dir}: a run already exists here; pass --resume {run_dir} or another --name"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, None
    last = Path(resume) / "last.pt" if Path(resume).is_dir() else Path(resume)
    if not last.is_file():
        raise EdgesegError(f"{last}: nothing to resume (no last.pt); start a new run without --resume")
    _, state = load_checkpoint(last)
    if "optimizer" not in state or "train_config" not in state:
        raise EdgesegError(f"{last}: not a resumable last.pt (no optimizer state)")
    return last.parent, state


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
    _write_rows_csv(run_dir / "history.csv", rows)


def _write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["key"])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


# ----------------------------------------------------------------------------- figures


def _write_reports(run_dir: Path, history: list[EpochRecord], slices: Slices, test_idx: list[int],
                   config: TrainConfig, device: torch.device) -> None:
    """``curves.png`` (loss and IoU per epoch) and ``predictions.png`` (image / truth / prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history:
        epochs = [r.epoch for r in history]
        fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot(epochs, [r.loss for r in history], label="train")
        ax_loss.plot(epochs, [r.test_loss for r in history], label="test")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
        ax_iou.plot(epochs, [r.iou for r in history], label="train")
        ax_iou.plot(epochs, [r.test_iou for r in history], label="test")
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
            for ax, img, title in zip(row, (slices.images[i], slices.masks[i], pred),
                                      (slices.keys[i], "ground truth", "prediction"), strict=True):
                ax.imshow(img, cmap="gray" if img is slices.images[i] else "viridis",
                          vmin=None if img is slices.images[i] else 0,
                          vmax=None if img is slices.images[i] else config.num_classes - 1)
                ax.set_title(title, fontsize=9)
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(run_dir / "predictions.png", dpi=80)
    plt.close(fig)


def evaluate_checkpoint(checkpoint: Path, data: Path | None = None, split: str | None = None,
                        batch_size: int = 8, per_slice: bool = False) -> dict[str, Any]:
    """Per-class metrics of a checkpoint on its held-out slices (or all of ``data``'s test split).

    With ``per_slice`` the report also holds ``per_slice``: one row per held-out slice.
    """
    model, ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.get("train_config", {})
    names = tuple(model.config.class_names)
    root = Path(data) if data else Path(ckpt.get("data", {}).get("root") or build_demo())
    if not root.exists():
        root = build_demo()
    slices = load_slices(root, model.config.num_classes)
    test_keys = set(ckpt.get("data", {}).get("test_keys", [])) if data is None and split is None else set()
    if test_keys and all(k in set(slices.keys) for k in test_keys):
        test_idx = [i for i, k in enumerate(slices.keys) if k in test_keys]
    else:
        _, test_idx = split_indices(len(slices), split or cfg.get("split", "slabs"),
                                    cfg.get("test_fraction", 0.2), cfg.get("seed", 0))
    rows: list[dict[str, Any]] | None = [] if per_slice else None
    metrics, _ = evaluate(model, slices, test_idx, batch_size=batch_size, class_names=names,
                          num_classes=model.config.num_classes, per_slice=rows)
    report = {"checkpoint": str(checkpoint), "data": str(root), "slices": len(test_idx), **metrics}
    return report if rows is None else {**report, "per_slice": rows}



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
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("epoch", total=None, stats="")

        def on_step(epoch: int, step: int, steps: int, loss: float, iou: float) -> None:
            bar.update(task, description=f"epoch {epoch + 1}", completed=step, total=steps,
                       stats=f"loss {loss:.4f} iou {iou:.4f}")

        result = train(config, resume, log=bar.console.print, progress=on_step)
    console.print(format_metrics_table(result.metrics))
    print(
        f"best held-out mean foreground IoU {result.best_miou_fg:.4f} at epoch {result.best_epoch}"
        f" in {result.seconds / 60:.1f} min -> {result.best_checkpoint}"
    )
    return result


def run_evaluation(checkpoint: Path | None, data: Path | None, split: str | None,
                   per_slice_csv: Path | None = None) -> dict[str, Any]:
    """``edgeseg evaluate``: prints the per-class table of a checkpoint.

    With ``per_slice_csv`` it also writes one row per held-out slice there (atomically) and
    prints the five worst slices.
    """
    from rich.console import Console

    checkpoint = checkpoint or find_latest_checkpoint()
    report = evaluate_checkpoint(checkpoint, data, split, per_slice=per_slice_csv is not None)
    Console().print(f"{report['checkpoint']} on {report['slices']} held-out slices of {report['data']}")
    Console().print(format_metrics_table(report))
    if per_slice_csv is not None:
        rows = report["per_slice"]
        _write_rows_csv(Path(per_slice_csv), rows)
        scored = sorted((r for r in rows if r["miou_fg"] is not None), key=lambda r: r["miou_fg"])
        worst = ", ".join(f"{r['key']} {r['miou_fg']:.3f}" for r in scored[:5])
        Console().print(f"per-slice rows -> {per_slice_csv}; worst foreground mIoU: {worst}")
    return report



def format_metrics_table(metrics: dict[str, Any]):
    """A rich table of per-class IoU and Dice with the two means."""
    from rich.table import Table

    table = Table(title="held-out metrics")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Dice", justify="right")

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.4f}"

    for name, iou in metrics.get("iou", {}).items():
        table.add_row(name, fmt(iou), fmt(metrics.get("dice", {}).get(name)))
    table.add_row("mean (foreground)", fmt(metrics.get("miou_fg")), "")
    table.add_row("mean (all)", fmt(metrics.get("miou_all")), "")
    return table
