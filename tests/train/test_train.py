"""Training: presets, run folder, checkpoints, resume after a kill, divergence, the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeseg import EdgesegError
from edgeseg.artifacts import find_latest_checkpoint
from edgeseg.model import load_checkpoint
from edgeseg.train.config import make_config
from edgeseg.train.loop import new_run_dir, train
from edgeseg.train.losses import segmentation_loss

EDGESEG = [sys.executable, "-m", "edgeseg.cli"]


def make_dataset(root: Path, n: int = 40, size: int = 40, seed: int = 0) -> Path:
    """Synthetic 'brains': a white-matter disk inside a gray-matter ring, on noisy background."""
    rng = np.random.default_rng(seed)
    (root / "MRIs").mkdir(parents=True)
    (root / "Segmentations").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = size / 2 + rng.uniform(-3, 3, 2)
        r = np.hypot(yy - cy, xx - cx)
        outer = size * rng.uniform(0.3, 0.42)
        mask = np.where(r < outer * 0.6, 2, np.where(r < outer, 1, 0)).astype(np.uint8)
        image = np.choose(mask, [50.0, 600.0, 900.0]) + rng.normal(0, 30, mask.shape)
        np.save(root / "MRIs" / f"synth_{i:03d}.npy", image.astype(np.float32))
        np.save(root / "Segmentations" / f"segm_{i:03d}.npy", mask)
    return root


@pytest.fixture()
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def tiny_config(data: Path, runs: Path, **kw):
    base = dict(
        data=str(data),
        runs_dir=str(runs),
        epochs=2,
        batch_size=8,
        patch=32,
        patches_per_slice=1,
        widths=(4, 8, 16),
        eval_batch_size=8,
        lr=1e-2,
    )
    return make_config("default", **{**base, **kw})


def test_tutorial_preset_is_the_tutorial_recipe() -> None:
    cfg = make_config("tutorial")
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.loss, cfg.split) == (3e-4, 16, 30, "bce", "tutorial")
    assert cfg.patch is None and cfg.weight_decay == 0 and cfg.schedule == "constant"
    assert not cfg.augment and not cfg.channels_last


@pytest.mark.parametrize("bad", [dict(preset="nope"), dict(preset="default", momentum=0.9)])
def test_unknown_preset_or_option(bad: dict) -> None:
    with pytest.raises(EdgesegError):
        make_config(**bad)


@pytest.mark.parametrize("kind", ["bce", "ce_dice"])
def test_losses_prefer_the_right_answer(kind: str) -> None:
    mask = torch.randint(0, 3, (2, 16, 16))
    good = torch.nn.functional.one_hot(mask, 3).permute(0, 3, 1, 2).float() * 10 - 5
    loss = segmentation_loss(kind, 3)
    assert loss(good, mask) < loss(-good, mask)


def test_run_folder_and_checkpoints(tiny_data: Path, tmp_path: Path) -> None:
    result = train(tiny_config(tiny_data, tmp_path / "runs"), log=lambda s: None)
    run = result.run_dir
    for name in ["best.pt", "last.pt", "config.json", "history.json", "history.csv", "curves.png", "predictions.png"]:
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(history[0]) >= {"loss", "iou", "test_loss", "test_iou"}
    model, ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["metrics"]["miou_fg"] == pytest.approx(result.best_miou_fg)
    assert ckpt["data"]["test_keys"] and ckpt["model_config"]["widths"] == [4, 8, 16]
    assert find_latest_checkpoint(tmp_path / "runs") == run / "best.pt"


def test_training_learns_the_synthetic_task(tiny_data: Path, tmp_path: Path) -> None:
    result = train(tiny_config(tiny_data, tmp_path / "runs", epochs=6, patches_per_slice=2), log=lambda s: None)
    assert result.best_miou_fg > 0.6


def test_training_is_deterministic_on_cpu(tiny_data: Path, tmp_path: Path) -> None:
    a = train(tiny_config(tiny_data, tmp_path / "a", epochs=1), log=lambda s: None)
    b = train(tiny_config(tiny_data, tmp_path / "b", epochs=1), log=lambda s: None)
    assert a.history[0].loss == b.history[0].loss
    sa, sb = torch.load(a.best_checkpoint, weights_only=True), torch.load(b.best_checkpoint, weights_only=True)
    assert all(torch.equal(sa["state_dict"][k], sb["state_dict"][k]) for k in sa["state_dict"])


def test_divergence_stops_with_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="diverged"):
        train(tiny_config(tiny_data, tmp_path / "runs", lr=1e30, schedule="constant"), log=lambda s: None)


def test_run_names_and_refusing_to_clobber(tmp_path: Path) -> None:
    assert new_run_dir(tmp_path, None).name == "train"
    (tmp_path / "train").mkdir()
    assert new_run_dir(tmp_path, None).name == "train2"
    with pytest.raises(EdgesegError, match="plain folder name"):
        new_run_dir(tmp_path, "../escape")


def _cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*EDGESEG, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_train_then_evaluate(tiny_data: Path, tmp_path: Path) -> None:
    r = _cli(
        "train",
        "--data",
        str(tiny_data),
        "--epochs",
        "1",
        "--patch",
        "32",
        "--batch-size",
        "8",
        "--name",
        "t",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "best held-out mean foreground IoU" in r.stdout
    assert (tmp_path / "runs" / "t" / "best.pt").is_file()
    r = _cli("evaluate", "--per-slice", "slices.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "gray_matter" in r.stdout and "white_matter" in r.stdout
    lines = (tmp_path / "slices.csv").read_text().splitlines()
    assert lines[0].startswith("key,foreground_px,miou_fg,iou_background")
    held_out = load_checkpoint(tmp_path / "runs" / "t" / "best.pt")[1]["data"]["test_keys"]
    assert [line.split(",")[0] for line in lines[1:]] == held_out
    assert "worst foreground mIoU" in r.stdout


def test_cli_bad_data_is_one_line(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n=6)
    np.save(data / "Segmentations" / "segm_003.npy", np.full((40, 40), 7, np.uint8))
    r = _cli("train", "--data", str(data), "--epochs", "1", cwd=tmp_path)
    assert r.returncode == 1
    assert "segm_003.npy" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_kill_mid_training_then_resume_finishes(tiny_data: Path, tmp_path: Path) -> None:
    args = ["train", "--data", str(tiny_data), "--epochs", "4", "--patch", "32", "--batch-size", "2", "--name", "k"]
    proc = subprocess.Popen(
        [*EDGESEG, *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    last = tmp_path / "runs" / "k" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "no epoch finished before the kill"
    done = torch.load(last, weights_only=True)["history"]
    assert 1 <= len(done) < 4
    r = _cli("train", "--resume", str(tmp_path / "runs" / "k"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    history = json.loads((tmp_path / "runs" / "k" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[: len(done)] == done  # finished epochs are kept, not redone


def test_cli_tutorial_preset_runs_the_tutorial_recipe(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", n=108, size=32)
    r = _cli("train", "--preset", "tutorial", "--data", str(data), "--epochs", "1", "--name", "tut", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tut"
    config = json.loads((run / "config.json").read_text())
    assert (config["loss"], config["lr"], config["batch_size"], config["split"]) == ("bce", 3e-4, 16, "tutorial")
    assert config["patch"] is None and not config["augment"]
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["data"]["test_keys"] == [f"{i:03d}" for i in range(8, 108)]  # the last 100 in sorted order


def test_one_epoch_curves_show_their_points(tiny_data: Path, tmp_path: Path) -> None:
    """After one epoch each curve is a single point: it must be drawn (a marker), not empty axes."""
    from PIL import Image

    result = train(tiny_config(tiny_data, tmp_path / "runs", epochs=1), log=lambda s: None)
    pixels = np.asarray(Image.open(result.run_dir / "curves.png").convert("RGB")).astype(int)
    train_blue = np.abs(pixels - [31, 119, 180]).sum(-1) < 30  # matplotlib's C0, the "train" line
    test_orange = np.abs(pixels - [255, 127, 14]).sum(-1) < 30  # C1, "test"
    legend_px = 2 * 60  # both legends hold a short line sample of each colour
    assert train_blue.sum() > legend_px and test_orange.sum() > legend_px
