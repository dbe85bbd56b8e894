"""Training: the tutorial's recipe, and a faster default that reaches more on 2 CPU cores.

Run ``edgeseg train`` (the demo MRI set, default preset) or
``edgeseg train --preset tutorial --data DIR``. Each run writes ``runs/<name>/``:
``best.pt``, ``last.pt``, ``config.json``, ``history.json``/``history.csv``,
``curves.png`` and ``predictions.png``. ``--resume runs/<name>`` continues after a kill.
Under torchrun (or ``--nproc N``) the same run is computed on N processes; see
:mod:`edgeseg.train.distributed`. What a run learns from (the split's slices, oblique and synthetic
planes) is assembled by :mod:`edgeseg.train.data`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseg import __version__
from edgeseg.data.augment import RobustPatches
from edgeseg.data.dataset import Slices
from edgeseg.data.demo import build_demo
from edgeseg.data.split import is_demo_set, make_split
from edgeseg.errors import EdgesegError, Interrupted
from edgeseg.files import write_json
from edgeseg.metrics import ConfusionMatrix
from edgeseg.model import UNet, load_checkpoint, save_checkpoint
from edgeseg.model_contract import NORM_CONTRACT, ModelConfig
from edgeseg.train import distributed
from edgeseg.train.config import EpochRecord, TrainConfig, TrainResult, config_dict, make_config
from edgeseg.train.data import demo_pixel_mm, load_data, training_sources
from edgeseg.train.evaluate import evaluate, format_metrics_table
from edgeseg.train.losses import segmentation_loss
from edgeseg.train.report import write_figures, write_history

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
    run_dir, state = _prepare_run(config, resume) if resume is not None else (None, None)
    if state is not None:
        config = _saved_config(state)
    with distributed.joined(resolve_device(config.device)) as (world, device):
        if run_dir is None:  # rank 0 picks the folder (train, train2, ...) for all
            run_dir = world.first(lambda: _prepare_run(config, None)[0])
        try:
            return _train_run(config, run_dir, state, log, progress, world, device)
        except KeyboardInterrupt:  # under a torchrun of your own, rank 0 names the same world size
            raise Interrupted(_resume_note(run_dir, world.size)) from None


def _saved_config(state: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a resumable checkpoint was trained with."""
    saved = state["train_config"]
    return TrainConfig(**{**saved, "widths": tuple(saved["widths"]), "class_names": tuple(saved["class_names"])})


def _resume_note(run_dir: Path, nproc: int = 1) -> str:
    """What an interrupted run kept: epochs finish atomically (last.pt, then history.json)."""
    try:
        finished = len(json.loads((run_dir / "history.json").read_text()))
    except (OSError, ValueError):
        finished = 0
    if not finished or not (run_dir / "last.pt").is_file():
        return f"no epoch had finished in {run_dir}; rerun the same command to start over"
    command = f"edgeseg train --resume {run_dir}" + (f" --nproc {nproc}" if nproc > 1 else "")
    return f"{finished} epoch(s) finished and saved in {run_dir}; continue with: {command}"


def _train_run(
    config: TrainConfig,
    run_dir: Path,
    state: dict[str, Any] | None,
    log: Callable[[str], None],
    progress: Callable[..., Any] | None,
    world: distributed.World,
    device: torch.device,
) -> TrainResult:
    """The body of :func:`train` once the run folder is chosen; rank 0 evaluates and writes files."""
    start = time.perf_counter()
    distributed.per_rank_batch(config.batch_size, world.size)
    torch.manual_seed(config.seed)
    slices = load_data(config, world)
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
    net = distributed.wrap(model, world, device)  # model.segment, under DDP when N > 1
    # Items come normalised with their whole frame's statistics (model.segment skips the
    # model's own normalisation), so patches look like inference on whole frames.
    images, masks = training_sources(slices, split, config, log)
    dataset = RobustPatches(
        images,
        masks,
        len(images) * config.patches_per_slice,
        patch=config.patch,
        augment=config.augment,
        seed=config.seed,
    )
    batches = distributed.ShardedBatches(len(dataset), config.batch_size, world, config.seed)
    steps_per_epoch = len(batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _make_scheduler(config, optimizer, steps_per_epoch)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = segmentation_loss(config.loss, config.num_classes)  # evaluation: rank 0 alone
    train_loss = segmentation_loss(config.loss, config.num_classes, total=world.all_sum)
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
    if world.is_main:
        write_json(run_dir / "config.json", {**config_dict(config), **world.describe(config.batch_size, config.lr)})
    data_info = {
        "root": str(slices.root),
        "split": config.split,
        "split_note": split.note,
        "test_keys": [slices.keys[i] for i in test_idx],
        # Inference resamples scans of known voxel size to this before the model sees them.
        "pixel_spacing_mm": config.pixel_spacing_mm or demo_pixel_mm(slices.root),
    }

    def end_epoch(
        epoch: int, loss: float, iou: float, t0: float, best: dict[str, Any]
    ) -> tuple[EpochRecord, dict[str, Any]]:
        """Rank 0: evaluate, checkpoint and log the epoch; returns its record and the best so far."""
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
        ckpt_extra = dict(
            train_config=config_dict(config),
            metrics=metrics,
            epoch=epoch,
            data=data_info,
            edgeseg_version=__version__,
            history=[asdict(r) for r in [*history, record]],
        )
        new_best = best
        if test_iou > best["miou_fg"]:
            new_best = {"miou_fg": test_iou, "epoch": epoch + 1, "metrics": metrics}
            save_checkpoint(run_dir / "best.pt", model, **ckpt_extra)
        save_checkpoint(
            run_dir / "last.pt",
            model,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            best=new_best,
            **ckpt_extra,
        )
        write_history(run_dir, [*history, record])
        log(
            f"epoch {epoch + 1}/{config.epochs}  loss {loss:.4f}  iou {iou:.4f}  "
            f"test_loss {test_loss:.4f}  test_iou {test_iou:.4f}  ({record.seconds:.0f}s)"
        )
        return record, new_best

    for epoch in range(first_epoch, config.epochs):
        t0 = time.perf_counter()
        dataset.set_epoch(epoch)
        batches.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=config.workers)
        loss, iou = _train_epoch(
            net, loader, optimizer, scheduler, scaler, train_loss, config, device, epoch, progress, world
        )
        # rank 0 evaluates and writes; the other ranks wait here for its record
        record, best = world.first(partial(end_epoch, epoch, loss, iou, t0, best))
        history.append(record)
    if world.is_main:
        write_figures(run_dir, history, scored, test_idx, config, device)
    world.barrier()  # every rank returns once the run folder is complete
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
    net, loader, optimizer, scheduler, scaler, loss_fn, config, device, epoch, progress, world
) -> tuple[float, float]:
    """One pass; returns (mean loss, foreground mIoU of the training predictions) over all ranks."""
    net.train()
    cm = ConfusionMatrix(config.num_classes)
    total, count = 0.0, 0
    steps = len(loader)
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = net(x)
            loss = loss_fn(logits.float(), y)  # the global batch's: every rank stops together
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
    total, count = world.sum_array(np.array([total, count], dtype=np.float64))
    cm = ConfusionMatrix.from_counts(world.sum_array(cm.matrix))
    return float(total / max(count, 1)), cm.miou_fg() or 0.0


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


# ----------------------------------------------------------------------------- console front-end


def run_training(
    preset: str, overrides: dict[str, Any], resume: Path | None = None, nproc: int = 1, words: list[str] | None = None
) -> TrainResult | None:
    """``edgeseg train``: a rich progress bar per epoch, one summary line per epoch, a final table.

    Args:
        nproc: above 1, launch torchrun with that many processes running ``edgeseg train WORDS``
            (the same options without ``--nproc``) and return None once they finish.
    """
    config = make_config(preset, **overrides)
    if config.patch == 0:  # --patch 0: whole slices
        config.patch = None
    if nproc > 1:
        _launch_training(config, resume, nproc, list(words or []))
        return None
    world = distributed.torchrun_world()
    with distributed.one_voice(world):
        if not world.is_main:  # rank 0 speaks for the run
            return train(config, resume, log=lambda _: None)
        return _run_with_progress(config, resume)


def _launch_training(config: TrainConfig, resume: Path | None, nproc: int, words: list[str]) -> None:
    """``edgeseg train --nproc N``: checks what can fail early, picks the run folder, starts torchrun."""
    if distributed.torchrun_world().size > 1:
        raise EdgesegError("--nproc inside torchrun: torchrun already started the processes; drop --nproc")
    if resume is not None:
        run_dir, state = _prepare_run(config, resume)
        config = _saved_config(state)
    else:
        run_dir = new_run_dir(Path(config.runs_dir), config.name)
        if (run_dir / "last.pt").exists():
            raise EdgesegError(f"{run_dir}: a run already exists here; pass --resume {run_dir} or another --name")
        words += [] if config.name else ["--name", run_dir.name]  # every rank, the same folder
    distributed.per_rank_batch(config.batch_size, nproc)
    distributed.check_devices(resolve_device(config.device), nproc)
    if config.data is None:
        build_demo()  # once, before the processes that read it start
    try:
        distributed.launch(words, nproc)
    except KeyboardInterrupt:
        raise Interrupted(_resume_note(run_dir, nproc)) from None
    except distributed.RankFailed as exc:  # --resume only where an epoch was saved
        raise EdgesegError(f"{exc}; {_resume_note(run_dir, nproc)}") from None


def _run_with_progress(config: TrainConfig, resume: Path | None) -> TrainResult:
    """One process's (or rank 0's) console: the progress bar, epoch lines and the final table."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
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
