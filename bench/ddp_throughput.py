"""DDP training throughput: images/s of the default recipe's step on 1 process and on N, same run.

    python bench/ddp_throughput.py --nproc 2 --steps 12 --rounds 2       # from the repo root

Runs ``torchrun --standalone --nproc-per-node K`` for K = 1 and K = N, alternating, ``--rounds``
times: 1 process with all cores' threads, 1 process with ``cores // N`` threads, and N
processes with ``cores // N`` threads each (as ``edgeseg train --nproc`` sets them). Each run
times ``--steps`` training steps after 2 warm-up steps: the default recipe (128x128
augmented patches of the demo slices, global batch 16 split across the ranks, channels_last,
AdamW, CE + Dice all-summed over ranks, global-batch BatchNorm under DDP), including the
augmentation, which runs in the training processes (workers 0). Prints one JSON line per run
and the median global images (patches) per second of each setting, with their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from edgeseg.data.augment import RobustPatches
from edgeseg.data.dataset import load_slices
from edgeseg.data.demo import build_demo
from edgeseg.model import UNet
from edgeseg.train import distributed
from edgeseg.train.config import make_config
from edgeseg.train.losses import segmentation_loss

WARMUP = 2


def worker(steps: int) -> None:
    """One rank: time ``steps`` steps after the warm-up; rank 0 prints the figures as JSON."""
    cfg = make_config("default")
    slices = load_slices(build_demo())
    dataset = RobustPatches(slices.images, slices.masks, len(slices.images), patch=cfg.patch, seed=cfg.seed)
    with distributed.joined(torch.device("cpu")) as (world, device):
        torch.manual_seed(cfg.seed)
        model = UNet().to(memory_format=torch.channels_last)
        net = distributed.wrap(model, world, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = segmentation_loss(cfg.loss, cfg.num_classes, total=world.all_sum)
        batches = distributed.ShardedBatches(len(dataset), cfg.batch_size, world, cfg.seed)
        loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=batches))
        net.train()
        for step in range(WARMUP + steps):
            if step == WARMUP:
                world.barrier()
                start = time.perf_counter()
            x, y = next(loader)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(x.contiguous(memory_format=torch.channels_last)), y).backward()
            optimizer.step()
        world.barrier()
        seconds = time.perf_counter() - start
    if world.is_main:
        report = dict(
            processes=world.size,
            threads_per_process=torch.get_num_threads(),
            global_batch=cfg.batch_size,
            patch=cfg.patch,
            steps=steps,
            seconds=round(seconds, 2),
            img_per_s=round(steps * cfg.batch_size / seconds, 2),
        )
        print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps)
        return
    build_demo()  # once, before the ranks read it
    cores = os.cpu_count() or 1
    settings = [(1, cores), (1, max(1, cores // args.nproc)), (args.nproc, max(1, cores // args.nproc))]
    figures: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for k, threads in settings:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={k}"]
            run = [*cmd, __file__, "--worker", "--steps", str(args.steps)]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            line = (
                subprocess.run(run, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            )
            print(line, flush=True)
            figures.setdefault(f"{k}x{threads}", []).append(json.loads(line)["img_per_s"])
    medians = {name: round(statistics.median(values), 2) for name, values in figures.items()}
    base = medians[f"1x{cores}"]
    print(
        json.dumps(
            {"median_img_per_s": medians, "ratio_to_1_process": {n: round(v / base, 3) for n, v in medians.items()}}
        )
    )


if __name__ == "__main__":
    main()
