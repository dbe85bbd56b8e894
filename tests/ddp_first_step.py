"""One DDP training step on each rank, for tests/train/test_distributed.py (not collected by pytest).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_first_step.py DATA OUT

Builds the training patches of DATA as ``edgeseg train`` does, takes the rank's first batch
through ShardedBatches, the DDP-wrapped model and the all-summed loss, runs one backward pass
and writes ``OUT/rank<R>.pt``: the rank's items of the epoch and of the first batch, that batch,
the initial weights and the gradients DDP left on the model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from edgeseg.data.augment import RobustPatches
from edgeseg.data.dataset import load_slices
from edgeseg.model import UNet
from edgeseg.model_contract import ModelConfig
from edgeseg.train import distributed
from edgeseg.train.losses import segmentation_loss

WIDTHS = (4, 8, 16)
BATCH = 8  # the global batch: 4 patches on each of 2 ranks
PATCH = 48
SEED = 0


def patches(data: Path) -> RobustPatches:
    """Augmented 48x48 training patches of every slice of ``data`` (two per slice)."""
    slices = load_slices(data)
    return RobustPatches(slices.images, slices.masks, 2 * len(slices.images), patch=PATCH, augment=True, seed=SEED)


def initial_model() -> UNet:
    torch.manual_seed(SEED)
    return UNet(ModelConfig(widths=WIDTHS))


def main(data: Path, out: Path) -> None:
    torch.set_num_threads(1)
    dataset = patches(data)
    with distributed.joined(torch.device("cpu")) as (world, device):
        model = initial_model()
        start = {k: v.clone() for k, v in model.state_dict().items()}
        net = distributed.wrap(model, world, device)
        batches = distributed.ShardedBatches(len(dataset), BATCH, world, SEED)
        batches.set_epoch(0)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches)
        x, y = next(iter(loader))
        net.train()
        segmentation_loss("ce_dice", 3, total=world.all_sum)(net(x), y).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        torch.save(
            dict(epoch=list(batches), first=next(iter(batches)), x=x, y=y, start=start, grads=grads),
            out / f"rank{world.rank}.pt",
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
