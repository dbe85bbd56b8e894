"""Evaluation stage: per-class IoU and Dice of a model on held-out slices, pooled and per slice.

    edgeseg evaluate [CKPT] [--data DIR] [--split slabs|tutorial] [--per-slice FILE.csv]

:func:`evaluate` runs a PyTorch model over whole slices (training calls it every epoch);
:func:`evaluate_checkpoint` finds a checkpoint's held-out slices (the keys it recorded, else
the split of ``--data``) and scores them; ``--per-slice`` writes one CSV row per slice, to
see where a model fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeseg.data.dataset import Slices
from edgeseg.data.split import checkpoint_split
from edgeseg.errors import EdgesegError
from edgeseg.files import write_csv
from edgeseg.metrics import ConfusionMatrix
from edgeseg.model import load_checkpoint


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
            rows.update(
                {
                    i: _slice_row(slices.keys[i], p, t, num_classes, class_names)
                    for i, p, t in zip(batch, pred, truth, strict=True)
                }
            )
    if per_slice is not None:
        per_slice.extend(rows[i] for i in indices)
    mean_loss = sum(losses) / max(len(indices), 1) if losses else float("nan")
    return cm.summary(), mean_loss


def _slice_row(
    key: str, pred: np.ndarray, truth: np.ndarray, num_classes: int, class_names: tuple[str, ...] | None
) -> dict[str, Any]:
    cm = ConfusionMatrix(num_classes, class_names)
    cm.update(pred, truth)
    summary = cm.summary()
    return {
        "key": key,
        "foreground_px": int((truth > 0).sum()),
        "miou_fg": summary["miou_fg"],
        **{f"iou_{name}": iou for name, iou in summary["iou"].items()},
    }


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


def evaluate_checkpoint(
    checkpoint: Path, data: Path | None = None, split: str | None = None, batch_size: int = 8, per_slice: bool = False
) -> dict[str, Any]:
    """Per-class metrics of a checkpoint on its held-out slices (or all of ``data``'s test split).

    With ``per_slice`` the report also holds ``per_slice``: one row per held-out slice.
    """
    model, ckpt = load_checkpoint(checkpoint)
    held = checkpoint_split(ckpt, data, split)
    slices, test_idx, root = held.slices, held.test, held.slices.root
    rows: list[dict[str, Any]] | None = [] if per_slice else None
    metrics, _ = evaluate(
        model,
        slices,
        test_idx,
        batch_size=batch_size,
        class_names=tuple(model.config.class_names),
        num_classes=model.config.num_classes,
        per_slice=rows,
    )
    report = {"checkpoint": str(checkpoint), "data": str(root), "slices": len(test_idx), **metrics}
    return report if rows is None else {**report, "per_slice": rows}


def reframe_checkpoint(src: Path, dst: Path) -> dict[str, Any]:
    """Write a contract-2 checkpoint's weights as contract 3, re-scored on its held-out slices.

    Contract 3 adds only the aligned framing around the same network (no weights change), so a
    contract-2 model needs no retraining. ``dst`` records where it came from under ``reframed``
    (the source's sha256 and contract-2 metrics); its ``metrics`` are contract 3's.

    Returns:
        The new metrics.
    """
    import hashlib

    from edgeseg.model import UNet, checkpoint_model_config, save_checkpoint
    from edgeseg.model_contract import ModelConfig

    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    config = checkpoint_model_config(ckpt, src)
    if int(ckpt.get("normalization_contract", 1)) != 2:
        raise EdgesegError(f"{src}: only a contract-2 checkpoint can be re-framed as contract 3; retrain it")
    model = UNet(ModelConfig(**{**config, "aligned": True}))
    model.load_state_dict(ckpt["state_dict"])
    skip = ("format", "normalization_contract", "state_dict", "model_config")
    extra = {k: v for k, v in ckpt.items() if k not in skip}
    source = {"from_contract": 2, "checkpoint_sha256": hashlib.sha256(Path(src).read_bytes()).hexdigest()}
    extra["reframed"] = {**source, "metrics_contract_2": ckpt.get("metrics")}
    save_checkpoint(dst, model, **extra)
    extra["metrics"] = evaluate_checkpoint(dst)  # the report: metrics, and the slices they come from
    save_checkpoint(dst, model, **extra)
    return extra["metrics"]


def run_evaluation(
    checkpoint: Path | None, data: Path | None, split: str | None, per_slice_csv: Path | None = None
) -> dict[str, Any]:
    """``edgeseg evaluate``: prints the per-class table of a checkpoint.

    With ``per_slice_csv`` it also writes one row per held-out slice there (atomically) and
    prints the five worst slices.
    """
    from rich.console import Console

    from edgeseg.artifacts import find_latest_checkpoint

    if per_slice_csv is not None and Path(per_slice_csv).is_dir():
        raise EdgesegError(f"--per-slice {per_slice_csv}: is a folder; give a file name, e.g. slices.csv")
    checkpoint = checkpoint or find_latest_checkpoint()
    report = evaluate_checkpoint(checkpoint, data, split, per_slice=per_slice_csv is not None)
    Console().print(f"{report['checkpoint']} on {report['slices']} held-out slices of {report['data']}")
    Console().print(format_metrics_table(report))
    if per_slice_csv is not None:
        rows = report["per_slice"]
        write_csv(Path(per_slice_csv), rows)
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
