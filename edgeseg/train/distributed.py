"""Multi-process training: DistributedDataParallel under torchrun, or ``edgeseg train --nproc N``.

    torchrun --standalone --nproc-per-node N -m edgeseg train ...   # gloo on CPU, NCCL on GPUs
    edgeseg train --nproc N ...                                      # the same, launched for you

A DDP run is the single-process recipe computed on N processes. ``--batch-size`` stays the
global batch: every step takes the same patches, in the same order, as one process would,
and each rank takes its share of them. The loss is a ratio of sums over the global batch,
BatchNorm uses the global batch's statistics, and DDP averages the gradients, so a step's
gradient is the single-process gradient of the same batch (tested to float tolerance). The
learning rate is therefore not scaled with N. Augmentation draws are keyed by (seed, epoch,
item), and ranks take disjoint items, so no two ranks draw the same augmentation.

Rank 0 evaluates (with the single-process code) and writes every file of the run; the others
wait for its result.

When a process dies, ``--nproc`` names the one that started it (its rank, pid and signal), not
the others that torchrun then stopped with SIGTERM or that lost it mid-collective, and offers
``--resume`` only when an epoch was saved. Ctrl-C is one line there (exit 130). Under a torchrun
you start yourself, rank 0 prints the same one line, and torchrun then prints its own traceback
(SignalException) and exits 1: that one is torchrun's, and the run folder is kept all the same.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edgeseg.errors import EdgesegError, Interrupted

# Set by `edgeseg train --nproc N` for its workers: the launcher reports an interrupt itself.
LAUNCHED_ENV = "EDGESEG_LAUNCHED"
# The exit status of a rank whose collective failed because another process vanished: not a cause.
PEER_LOST = 75
# What gloo says when the other end of a collective has died (torch raises a plain RuntimeError).
PEER_WORDS = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing")
# Rank 0 evaluates and writes checkpoints while the others wait; a full evaluation is minutes at most.
TIMEOUT = timedelta(minutes=30)

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, differentiable: the backward pass sums the gradients too."""
        return t if self.size == 1 else _AllSum.apply(t)

    def sum_array(self, a: np.ndarray) -> np.ndarray:
        """A float64 or int64 array summed over the ranks (epoch totals, confusion matrices)."""
        if self.size == 1:
            return a
        t = torch.from_numpy(np.ascontiguousarray(a))
        dist.all_reduce(t)
        return t.numpy()

    def first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only; every rank returns its result, or raises its EdgesegError."""
        if self.size == 1:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except EdgesegError as exc:
                box[0] = ("error", str(exc))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise EdgesegError(value)
        return value

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def describe(self, batch_size: int, lr: float) -> dict[str, Any]:
        """What config.json records of the run's processes, batch and learning rate."""
        return {
            "world_size": self.size,
            "backend": dist.get_backend() if self.size > 1 else None,
            "batch_per_rank": per_rank_batch(batch_size, self.size),
            "global_batch_size": batch_size,
            "lr_used": lr,
            "lr_scaling": "none: the global batch is --batch-size at any world size",
        }


class _AllSum(torch.autograd.Function):
    """Sum over the ranks; its gradient is the sum of every rank's gradient (torch's own is deprecated)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        total = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def torchrun_world() -> World:
    """The ranks torchrun gave this process (its RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


@contextmanager
def joined(device: torch.device) -> Iterator[tuple[World, torch.device]]:
    """Join torchrun's process group for the run (gloo on CPU, NCCL on CUDA); yields the world and this rank's device.

    Outside torchrun (or with a group already joined) it yields one process and ``device``.
    """
    world = torchrun_world()
    if world.size == 1 or dist.is_initialized():
        yield world, device
        return
    check_devices(device, int(os.environ.get("LOCAL_WORLD_SIZE", world.size)))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield world, device
    finally:
        dist.destroy_process_group()


def check_devices(device: torch.device, nproc: int) -> None:
    """EdgesegError unless each of ``nproc`` processes on this node can have a GPU of its own (CUDA runs)."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise EdgesegError(
            f"{nproc} processes on this node but {torch.cuda.device_count()} CUDA device(s);"
            " start at most one process per GPU (--nproc / --nproc-per-node) or use --device cpu"
        )


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """``batch_size`` split evenly across the ranks; EdgesegError if it does not split."""
    if batch_size % world_size:
        raise EdgesegError(
            f"--batch-size {batch_size} (the global batch) does not split across {world_size} processes;"
            f" choose a multiple of {world_size}, e.g. {batch_size - batch_size % world_size or world_size}"
        )
    return batch_size // world_size


class ShardedBatches(torch.utils.data.Sampler):
    """This rank's share of each global batch, in the order one process would take them.

    The global batches are those of ``DataLoader(shuffle=True)`` with the run's generator,
    so one process (rank 0 of 1) trains on exactly what ``edgeseg train`` always did. A
    final global batch smaller than the world (at most size-1 items) is skipped under DDP:
    a rank without items cannot take the step. Call ``set_epoch`` every epoch.
    """

    def __init__(self, count: int, batch_size: int, world: World, seed: int) -> None:
        per_rank_batch(batch_size, world.size)
        self.count, self.batch_size, self.world, self.seed = count, batch_size, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> list[torch.Tensor]:
        """The epoch's global batches of item indices."""
        order = torch.utils.data.DataLoader(
            range(self.count),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch),
        )
        return [batch for batch in order if len(batch) >= self.world.size]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield torch.tensor_split(batch, self.world.size)[self.world.rank].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.count, self.batch_size)
        return full + (rest >= self.world.size)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with the global batch's statistics in training, on any device and backend.

    torch's SyncBatchNorm refuses CPU tensors; this one sums per-channel moments with a
    differentiable all-reduce (float64, so one pass is exact enough), which gloo runs on CPU.
    In eval mode it is BatchNorm2d.
    """

    def __init__(self, num_features: int, world: World, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.world = world

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=torch.float64, device=x.device)
        x64 = x.double()
        moments = self.world.all_sum(torch.cat([x64.sum((0, 2, 3)), (x64 * x64).sum((0, 2, 3)), count]))
        c = self.num_features
        n = moments[-1]
        mean = moments[:c] / n
        var = (moments[c : 2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():  # running statistics as BatchNorm2d keeps them (unbiased variance)
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), momentum)
        scale = (self.weight / torch.sqrt(var.to(x.dtype) + self.eps)).view(1, c, 1, 1)
        return (x - mean.to(x.dtype).view(1, c, 1, 1)) * scale + self.bias.view(1, c, 1, 1)


def _global_batchnorm(module: nn.Module, world: World) -> nn.Module:
    """``module`` with every BatchNorm2d replaced by a GlobalBatchNorm2d holding the same state."""
    if type(module) is nn.BatchNorm2d:
        bn = GlobalBatchNorm2d(module.num_features, world, eps=module.eps, momentum=module.momentum)
        bn.load_state_dict(module.state_dict())
        return bn.to(device=module.weight.device)
    for name, child in module.named_children():
        setattr(module, name, _global_batchnorm(child, world))
    return module


class _Segment(nn.Module):
    """The training forward: normalised patches through ``UNet.segment`` (DDP wraps ``forward``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.segment(x)


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module a training step calls: ``model.segment``, under DDP with global-batch BatchNorm when N > 1.

    ``model`` keeps its parameters (DDP shares them), so it is what evaluation and checkpoints use.
    """
    if world.size == 1:
        return _Segment(model)
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        model = _global_batchnorm(model, world)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(_Segment(model), device_ids=ids)


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another training process is gone."""
    return isinstance(exc, dist.DistNetworkError) or (
        isinstance(exc, RuntimeError) and any(words in str(exc) for words in PEER_WORDS)
    )


@contextmanager
def one_voice(world: World) -> Iterator[None]:
    """Only rank 0 reports a user mistake or an interrupt (the launcher, when there is one, reports interrupts).

    A rank that lost another process exits :data:`PEER_LOST` without a traceback: the launcher
    names the process that died; under a torchrun of your own, rank 0 says so in one line.
    """
    launched = bool(os.environ.get(LAUNCHED_ENV))
    try:
        yield
    except Interrupted:
        if world.is_main and not launched:
            raise
        raise SystemExit(130) from None
    except EdgesegError:
        if world.is_main:
            raise
        raise SystemExit(1) from None
    except RuntimeError as exc:
        if world.size == 1 or not peer_lost(exc):
            raise
        if world.is_main and not launched:
            raise EdgesegError(
                "rank 0 lost another training process mid-step; torchrun's report below names it"
            ) from None
        raise SystemExit(PEER_LOST) from None


class RankFailed(EdgesegError):
    """A training process died by a signal (or every one lost the others) without saying why itself."""


def first_cause(failures: dict[int, Any]) -> tuple[int, Any]:
    """The (rank, ProcessFailure) that started a failed run, of torchrun's ``ChildFailedError.failures``.

    torchrun records the processes it finds dead, in that order, and then stops the rest with
    SIGTERM; a rank that lost a peer mid-collective exits :data:`PEER_LOST`. Neither is a cause
    when another failure is there.
    """
    seen = list(failures.items())  # in the order torchrun found them

    def consequence(k: int) -> tuple[bool, bool, int]:
        code = seen[k][1].exitcode
        return code == PEER_LOST, code == -signal.SIGTERM, k

    return seen[min(range(len(seen)), key=consequence)]


def _killed(rank: int, failure: Any) -> str:
    """One line on how process ``rank`` ended, for a failure that printed nothing itself."""
    if failure.exitcode == PEER_LOST:
        return f"the training processes lost each other (rank {rank}, pid {failure.pid}, saw its peer vanish)"
    name = signal.Signals(-failure.exitcode).name
    why = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
    return f"training process rank {rank} (pid {failure.pid}) was killed by {name}{why}"


def launch(words: list[str], nproc: int) -> None:
    """``torchrun --standalone --nproc-per-node N -m edgeseg train WORDS``, run by torch.distributed.run here.

    In this process rather than a subprocess, so that its failures become one line here:
    workers print their own errors; a worker killed by a signal is named here.

    Raises:
        KeyboardInterrupt: on Ctrl-C (torchrun forwards it to the workers and waits for them).
        SystemExit: with a worker's exit code when it failed and said why.
        RankFailed: a worker was killed by a signal: names the first one (see :func:`first_cause`).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "edgeseg", "train", *words])
    # Each worker gets its share of the cores (torchrun's own default is 1 thread, with a warning).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    saved_env = {k: os.environ.get(k) for k in (LAUNCHED_ENV, "OMP_NUM_THREADS")}
    saved_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    os.environ.update({LAUNCHED_ENV: "1", "OMP_NUM_THREADS": threads})
    # torchrun's own log lines (a failed rank, a forwarded signal) would follow the rank's one line
    elastic = [lg for name, lg in logging.Logger.manager.loggerDict.items() if name.startswith("torch.distributed")]
    levels = {lg: lg.level for lg in elastic if isinstance(lg, logging.Logger)}
    for lg in levels:
        lg.setLevel(logging.CRITICAL)
    try:
        run(args)
    except SignalException:
        raise KeyboardInterrupt from None
    except ChildFailedError as exc:
        rank, failure = first_cause(exc.failures)
        if failure.exitcode == 130:
            raise KeyboardInterrupt from None
        if failure.exitcode < 0 or failure.exitcode == PEER_LOST:
            raise RankFailed(_killed(rank, failure)) from None
        raise SystemExit(failure.exitcode) from None  # it printed its own one line
    finally:
        for lg, level in levels.items():
            lg.setLevel(level)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
