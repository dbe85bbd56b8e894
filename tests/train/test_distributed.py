"""Multi-process training: shards, global-batch BatchNorm, DDP gradients, torchrun and --nproc runs.

The process tests start 2 real gloo processes on CPU (torchrun, or ``edgeseg train --nproc 2``)
with a (4, 8, 16) U-Net on the tiny real-slice dataset of conftest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeseg import EdgesegError
from edgeseg.model import load_checkpoint
from edgeseg.train.config import make_config
from edgeseg.train.distributed import LAUNCHED_ENV, PEER_LOST, GlobalBatchNorm2d, ShardedBatches, World, per_rank_batch
from edgeseg.train.evaluate import evaluate_checkpoint
from edgeseg.train.loop import train
from edgeseg.train.losses import segmentation_loss

TESTS = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
EDGESEG = str(Path(sys.executable).parent / "edgeseg")  # the installed console script
ENV = {**{k: v for k, v in os.environ.items() if k != LAUNCHED_ENV}, "OMP_NUM_THREADS": "1"}
TINY = ["--epochs", "1", "--patch", "48", "--batch-size", "8", "--patches-per-slice", "1"]


def _worker_module():
    """tests/ddp_first_step.py, imported by path (its helpers build the same patches and model)."""
    spec = importlib.util.spec_from_file_location("ddp_first_step", TESTS / "ddp_first_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- shards


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> int:
        return k


@pytest.mark.parametrize("epoch", [0, 3])
def test_one_process_takes_the_batches_training_always_took(epoch: int) -> None:
    """World size 1: the batches of the shuffled DataLoader that train.py used before DDP."""
    old = torch.utils.data.DataLoader(
        _Items(21), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(7 * 1000 + epoch)
    )
    shards = ShardedBatches(21, 6, World(), seed=7)
    shards.set_epoch(epoch)
    assert list(shards) == [b.tolist() for b in old]
    assert len(shards) == 4


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_split_every_global_batch(size: int) -> None:
    one = ShardedBatches(20, 6, World(), seed=0)
    ranks = [ShardedBatches(20, 6, World(rank, size), seed=0) for rank in range(size)]
    for epoch in (0, 1):
        for s in [one, *ranks]:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        assert len({len(steps) for steps in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])
        # each step's shares, in rank order, are one global batch of the single process
        kept = [b for b in one if len(b) >= size]  # 20 % 6 = 2: a 3-rank world skips the last 2 items
        assert [sum(shares, []) for shares in zip(*per_rank, strict=True)] == kept
        items = [k for steps in per_rank for batch in steps for k in batch]
        assert len(items) == len(set(items)) == sum(map(len, kept))  # disjoint: no item drawn twice
    assert list(ranks[0]) != (ranks[0].set_epoch(0) or list(ranks[0]))  # a new order every epoch


def test_global_batch_must_split_across_ranks() -> None:
    assert per_rank_batch(16, 4) == 4
    with pytest.raises(EdgesegError, match=r"--batch-size 15 .* 2 processes; choose a multiple of 2, e.g. 14"):
        per_rank_batch(15, 2)


# ----------------------------------------------------------------------------- BatchNorm


def test_global_batchnorm_is_batchnorm_in_one_process() -> None:
    """Forward, gradients, running statistics and eval mode equal BatchNorm2d's (world of 1)."""
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(5)
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    ours = GlobalBatchNorm2d(5, World())
    ours.load_state_dict(plain.state_dict())
    for step in range(3):
        x = (torch.randn(4, 5, 7, 9) * 3 + step).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y, y2 = plain(x), ours(x2)
        (y * torch.arange(7.0)[:, None]).sum().backward()
        (y2 * torch.arange(7.0)[:, None]).sum().backward()
        torch.testing.assert_close(y2, y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(plain, name), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, plain.weight.grad, atol=1e-4, rtol=1e-5)
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(ours.eval()(x), plain.eval()(x))


# ----------------------------------------------------------------------------- 2 gloo processes


def test_ddp_first_step_gradients_equal_one_process(tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """Two ranks' DDP gradients are the single-process gradients of the same global batch.

    Measured: 8e-6 of the largest gradient, which is float32 noise (the single-process
    float32 gradient itself is 9e-6 from its float64 value). The same test without DDP's
    averaging (one rank's shard alone) misses by 0.34, and with per-rank BatchNorm and loss
    (plain DDP of the model) by 0.10: this comparison fails when the wiring is wrong.
    """
    data, _ = tiny_dataset
    r = subprocess.run(
        [*TORCHRUN, str(TESTS / "ddp_first_step.py"), str(data), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in (0, 1)]
    worker = _worker_module()
    dataset = worker.patches(data)
    # the single process's first batch, by the loader train.py always used
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=worker.BATCH, shuffle=True, generator=torch.Generator().manual_seed(worker.SEED * 1000)
    )
    x, y = next(iter(loader))
    assert torch.equal(torch.cat([ranks[0]["x"], ranks[1]["x"]]), x)  # the ranks' shares are that batch
    assert torch.equal(torch.cat([ranks[0]["y"], ranks[1]["y"]]), y)
    assert not torch.equal(ranks[0]["x"], ranks[1]["x"])  # different items, different augmentation draws
    items = [k for rank in ranks for batch in rank["epoch"] for k in batch]
    assert sorted(items) == list(range(len(dataset)))  # the epoch is split, every item once

    def gradients(xb: torch.Tensor, yb: torch.Tensor) -> dict[str, torch.Tensor]:
        model = worker.initial_model()
        model.load_state_dict(ranks[0]["start"])
        model.train()
        segmentation_loss("ce_dice", 3)(model.segment(xb), yb).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    expected = gradients(x, y)
    scale = max(g.abs().max() for g in expected.values())

    def error(grads: dict[str, torch.Tensor]) -> float:
        return float(max((grads[n] - expected[n]).abs().max() for n in expected) / scale)

    assert error(ranks[0]["grads"]) < 5e-5 and error(ranks[1]["grads"]) < 5e-5
    # what the comparison would see if DDP were wired wrong
    alone = gradients(ranks[0]["x"], ranks[0]["y"])
    other = gradients(ranks[1]["x"], ranks[1]["y"])
    assert error(alone) > 1e-2  # no gradient averaging
    assert error({n: (alone[n] + other[n]) / 2 for n in alone}) > 1e-2  # per-rank BatchNorm and loss


def test_torchrun_run_equals_one_process_run(tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """``torchrun -m edgeseg train``: rank 0 alone writes and speaks, and the run is the single-process run."""
    data, _ = tiny_dataset
    r = subprocess.run(
        [*TORCHRUN, "-m", "edgeseg", "train", "--data", str(data), *TINY, "--name", "ddp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    for name in ["best.pt", "last.pt", "config.json", "history.json", "history.csv", "curves.png", "predictions.png"]:
        assert (run / name).is_file(), name
    assert r.stdout.count("best held-out mean foreground IoU") == 1 and r.stderr.count("epoch 1/1") == 1
    config = json.loads((run / "config.json").read_text())
    assert (config["world_size"], config["backend"], config["batch_per_rank"]) == (2, "gloo", 4)
    assert (config["global_batch_size"], config["batch_size"], config["lr_used"]) == (8, 8, config["lr"])

    torch.set_num_threads(1)
    one = train(
        make_config(
            data=str(data), runs_dir=str(tmp_path / "one"), epochs=1, patch=48, batch_size=8, patches_per_slice=1
        ),
        log=lambda _: None,
    )
    ddp = json.loads((run / "history.json").read_text())[0]
    assert ddp["loss"] == pytest.approx(one.history[0].loss, rel=1e-4)
    # argmax counts: float noise may flip a few near-tied pixels (0.1924 vs 0.1922 measured)
    assert ddp["iou"] == pytest.approx(one.history[0].iou, abs=2e-3)
    assert ddp["test_loss"] == pytest.approx(one.history[0].test_loss, rel=1e-3)
    # rank 0's evaluation is a single-process evaluation of the weights it saved
    ckpt = load_checkpoint(run / "best.pt")[1]
    assert evaluate_checkpoint(run / "best.pt")["miou_fg"] == ckpt["metrics"]["miou_fg"]


def _edgeseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([EDGESEG, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)


def test_nproc_ctrl_c_then_resume_finishes(tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """``edgeseg train --nproc 2`` (the console script): Ctrl-C is one line and exit 130; --resume finishes."""
    data, _ = tiny_dataset
    args = ["train", "--data", str(data), *TINY, "--epochs", "12", "--nproc", "2", "--name", "k"]
    proc = subprocess.Popen([EDGESEG, *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=ENV)
    last = tmp_path / "runs" / "k" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the launcher (torchrun forwards it to the ranks)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    done = json.loads((tmp_path / "runs" / "k" / "history.json").read_text())
    assert 1 <= len(done) < 12
    note = [line for line in stderr.splitlines() if "interrupted" in line]
    assert note == [
        f"interrupted: {len(done)} epoch(s) finished and saved in runs/k;"
        " continue with: edgeseg train --resume runs/k --nproc 2"
    ]
    assert "Traceback" not in stderr and stderr.rstrip().endswith(note[0])
    r = _edgeseg("train", "--resume", "runs/k", "--nproc", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    history = json.loads((tmp_path / "runs" / "k" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert history[: len(done)] == done  # finished epochs are kept, not redone
    assert torch.load(last, weights_only=True)["epoch"] == 11
    assert json.loads((tmp_path / "runs" / "k" / "config.json").read_text())["world_size"] == 2


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--nproc", "0"], 2, "Invalid value for '--nproc'"),
        (["--nproc", "2", "--batch-size", "3"], 1, "--batch-size 3 (the global batch) does not split across 2"),
    ],
)
def test_nproc_mistakes_are_one_line(args: list[str], code: int, message: str, tmp_path: Path) -> None:
    r = _edgeseg("train", "--data", str(tmp_path), *args, cwd=tmp_path)
    assert r.returncode == code
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_nproc_error_in_the_ranks_is_one_line(tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """A mistake found inside the ranks (here: divergence) is rank 0's one line; torchrun adds none."""
    data, _ = tiny_dataset
    r = _edgeseg("train", "--data", str(data), *TINY, "--lr", "1e30", "--nproc", "2", cwd=tmp_path)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower() or "exitcode" in line]
    assert len(errors) == 1 and errors[0].startswith("error: training diverged"), r.stderr
    assert "Traceback" not in r.stderr


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of ``parent``'s child that torchrun started as ``rank`` (None until it has started)."""
    for children in Path(f"/proc/{parent}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue  # it has just exited
            if f"RANK={rank}".encode() in environ:
                return int(pid)
    return None


@pytest.mark.parametrize(
    "sig,after_epoch,note",
    [
        (signal.SIGKILL, False, "no epoch had finished in runs/k; rerun the same command to start over"),
        (
            signal.SIGTERM,
            True,
            r"\d+ epoch\(s\) finished and saved in runs/k; continue with: edgeseg train --resume runs/k --nproc 2",
        ),
    ],
)
def test_nproc_names_the_rank_that_was_killed(  # noqa: ANN001
    sig: signal.Signals, after_epoch: bool, note: str, tiny_dataset, tmp_path: Path
) -> None:
    """``kill`` of rank 1 names rank 1, its pid and its signal, not rank 0, which torchrun then
    stopped with SIGTERM; ``--resume`` is offered only once an epoch was saved (issue 25, case 8)."""
    data, _ = tiny_dataset
    args = ["train", "--data", str(data), *TINY, "--epochs", "12", "--nproc", "2", "--name", "k"]
    proc = subprocess.Popen([EDGESEG, *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=ENV)
    run = tmp_path / "runs" / "k"
    ready = run / "last.pt" if after_epoch else run  # rank 0 makes the folder once both ranks joined
    pid, deadline = None, time.time() + 240
    while not (pid and ready.exists()) and time.time() < deadline and proc.poll() is None:
        pid = _rank_pid(proc.pid, 1)
        time.sleep(0.05)
    assert pid and ready.exists() and proc.poll() is None
    os.kill(pid, sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-3000:]
    assert (run / "last.pt").exists() == after_epoch
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    name = signal.Signals(sig).name
    assert len(errors) == 1 and re.fullmatch(
        rf"error: training process rank 1 \(pid {pid}\) was killed by {name}( \([^)]*\))?; {note}", errors[0]
    ), stderr
    assert "rank 0" not in stderr and "Traceback" not in stderr and stderr.rstrip().endswith(errors[0])


@pytest.mark.parametrize(
    "launched,outcome",
    [
        (True, {"exit": PEER_LOST}),
        (
            False,
            {"error": "rank 0 lost another training process mid-step; torchrun's report below names it"},
        ),
    ],
)
def test_a_rank_that_lost_its_peer_exits_quietly(launched: bool, outcome: dict, tmp_path: Path) -> None:
    """Rank 0's all-reduce after rank 1's SIGKILL (a real gloo peer loss): the exit status the
    launcher passes over when naming the cause, or, under your own torchrun, one line."""
    env = {**ENV, LAUNCHED_ENV: "1"} if launched else ENV
    r = subprocess.run(
        [*TORCHRUN, str(TESTS / "ddp_peer_lost.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode != 0  # rank 1 was killed
    assert json.loads((tmp_path / "rank0.json").read_text()) == outcome, r.stderr[-3000:]


def test_own_torchrun_ctrl_c_is_one_line_from_rank_0(tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """Ctrl-C (SIGINT to the whole process group) of a torchrun you start: rank 0's one line names
    what was kept and the --nproc resume; the only traceback is torchrun's own, as documented."""
    data, _ = tiny_dataset
    args = ["-m", "edgeseg", "train", "--data", str(data), *TINY, "--epochs", "12", "--name", "k"]
    proc = subprocess.Popen(
        [*TORCHRUN, *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )
    last = tmp_path / "runs" / "k" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1  # torchrun's
    done = len(json.loads((tmp_path / "runs" / "k" / "history.json").read_text()))
    note = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert note == [
        f"interrupted: {done} epoch(s) finished and saved in runs/k;"
        " continue with: edgeseg train --resume runs/k --nproc 2"
    ], stderr
    assert stderr.count("Traceback") == 1 and stderr.rstrip().endswith("got signal: 2")
