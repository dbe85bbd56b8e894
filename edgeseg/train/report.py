"""What a training run leaves beside its checkpoints: history.json/.csv, curves.png, predictions.png."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from edgeseg.data.dataset import Slices
from edgeseg.files import write_csv, write_json
from edgeseg.metrics import IGNORE
from edgeseg.model import load_checkpoint
from edgeseg.train.config import EpochRecord, TrainConfig


def write_history(run_dir: Path, history: list[EpochRecord]) -> None:
    rows = [asdict(r) for r in history]
    write_json(run_dir / "history.json", rows)
    write_csv(run_dir / "history.csv", rows)


def write_figures(
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
