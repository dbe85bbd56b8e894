"""Training losses over logits ``(N, C, H, W)`` and integer masks ``(N, H, W)`` (IGNORE unscored).

``ce_dice`` (the default: cross-entropy + soft Dice over the foreground classes) and ``bce``
(the tutorial's BCEWithLogits on one-hot masks). Each is a ratio of sums, so that under DDP
the sums are added over the processes first and the loss is that of the global batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from edgeseg.errors import EdgesegError
from edgeseg.metrics import IGNORE


def segmentation_loss(
    kind: str, num_classes: int, total: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss over logits ``(N, C, H, W)`` and integer masks ``(N, H, W)``.

    Every term is a ratio of sums over the batch; ``total`` adds those sums over the training
    processes (``World.all_sum``), so that under DDP the loss is that of the global batch.
    """
    if kind == "bce":

        def tutorial_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            valid = (mask != IGNORE).unsqueeze(1).to(logits.dtype)
            target = F.one_hot(mask.clamp_max(num_classes - 1), num_classes).permute(0, 3, 1, 2)
            per_pixel = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
            loss_sum, count = total(torch.stack([(per_pixel * valid).sum(), valid.sum() * num_classes]))
            return loss_sum / count.clamp_min(1)

        return tutorial_bce
    if kind == "ce_dice":

        def ce_dice(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            valid = (mask != IGNORE).unsqueeze(1)
            ce_sum = F.cross_entropy(logits, mask, ignore_index=IGNORE, reduction="sum")
            prob = logits.float().softmax(dim=1)[:, 1:] * valid  # foreground classes only
            target = F.one_hot(mask.clamp_max(num_classes - 1), num_classes).permute(0, 3, 1, 2)[:, 1:]
            target = (target * valid).to(prob.dtype)
            inter = (prob * target).sum(dim=(0, 2, 3))
            denom = prob.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
            sums = total(torch.cat([ce_sum.float()[None], valid.sum().float()[None], inter, denom]))
            k = num_classes - 1
            # an all-IGNORE batch (a patch inside a held-out ball) has no CE term rather than a NaN mean
            ce = sums[0] / sums[1].clamp_min(1)
            dice = (2 * sums[2 : 2 + k] + 1.0) / (sums[2 + k :] + 1.0)
            return ce + (1 - dice).mean()

        return ce_dice
    raise EdgesegError(f"unknown loss {kind!r}; choose 'ce_dice' or 'bce'")
