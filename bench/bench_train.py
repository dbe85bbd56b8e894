"""Training-step throughput: the default recipe vs the tutorial's fit loop, same run.

The tutorial's loop: 394x394 whole slices, batch 16, eager NCHW, Adam 3e-4,
BCEWithLogitsLoss on one-hot masks. Ours: channels_last, AdamW with the one-cycle
schedule, CE+Dice, and 128x128 patches at batch 16 (the default preset). Both are
reported in 394x394-slice equivalents per second (pixels processed / 394^2), and
ours also at 394x394 whole slices with batch 4, so the ratio is not only a patch-size
effect. Plain ``pytest`` runs each case once on a tiny input as a smoke test.
"""

from __future__ import annotations

import pytest
import torch

from edgeseg.model import UNet
from edgeseg.train.config import make_config
from edgeseg.train.losses import segmentation_loss

FULL = 394


def _step_fn(preset: str, batch: int, size: int):
    cfg = make_config(preset)
    torch.manual_seed(0)
    model = UNet()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = segmentation_loss(cfg.loss, 3)
    x = torch.randn(batch, 1, size, size) * 300 + 500
    y = torch.randint(0, 3, (batch, size, size))
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step, model


CASES = [
    # name, preset, batch, size, baseline
    ("tutorial_fit_loop_b16_394", "tutorial", 16, FULL, True),
    ("default_recipe_b16_patch128", "default", 16, 128, False),
    ("default_recipe_b4_394", "default", 4, FULL, False),
]


@pytest.mark.benchmark(group="train-step", min_rounds=3, warmup=False)
@pytest.mark.parametrize("name,preset,batch,size,baseline", CASES, ids=[c[0] for c in CASES])
def test_train_step(benchmark, name: str, preset: str, batch: int, size: int, baseline: bool) -> None:
    torch.set_num_threads(torch.get_num_threads())
    if benchmark.disabled:  # smoke test only: the same code path on a tiny input
        batch, size = 2, 32
    step, model = _step_fn(preset, batch, size)
    before = [p.detach().clone() for p in model.parameters()]
    first = step()  # warm-up: allocator and oneDNN primitive caches
    benchmark.extra_info.update(items=batch * size * size / FULL**2, unit="394²-slices", baseline=baseline)
    last = benchmark.pedantic(step, rounds=3 if not benchmark.disabled else 1, iterations=1)
    # What was timed was training: every parameter moved, and the loss on this batch fell.
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert torch.isfinite(torch.tensor(last)) and last < first, (first, last)
