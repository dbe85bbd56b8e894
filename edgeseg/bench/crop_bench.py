"""The cropped shape that ``edgeseg bench`` and ``edgeseg tune`` also time (torch-free, numpy only).

``edgeseg infer`` crops each volume to its brain (:mod:`edgeseg.infer.crop`), so what a slice costs there
is the model on the box, not on the whole frame. bench and tune time every backend twice: on the
whole ``size``² frame (the worst case: a volume the crop leaves whole) and on :func:`typical_crop`,
the median of the per-slice brain boxes of the model's own held-out slices, scaled to ``size`` and
grown to the model's grid. Both figures come from the same run, so their ratio is this machine's
gain from cropping, per backend and per target.

On the shipped model's 8 held-out slices (394², demo-mni152) the boxes were 184x168 to 368x304,
20-76 % of the frame; the median box was 320x312 (64 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeseg.infer.crop import GRIDS, plan_crop


@dataclass(frozen=True)
class CropShape:
    """One box shape to time, and where it came from."""

    height: int
    width: int
    fraction: float  # of the timed frame's pixels
    source: str  # e.g. "median of 8 held-out slices' brain boxes (184x168 to 368x304)"

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def describe(self) -> str:
        return f"{self.height}x{self.width} ({100 * self.fraction:.0f} % of the frame; {self.source})"


def typical_crop(images: list[np.ndarray], contract: int, min_size: int, size: int) -> CropShape | None:
    """The median brain box of ``images`` (by area) as a ``size``² frame's box; None when the model's
    labels depend on framing (a contract without a grid), there are no slices, or no slice is cropped.

    A slice the crop leaves whole counts as the whole frame. Boxes of slices of another size than
    ``size`` are scaled to it and grown outwards to the grid, at least ``min_size``.
    """
    grid = GRIDS.get(contract)
    if grid is None or not images:
        return None
    shapes = []
    for image in images:
        h, w = image.shape[-2:]
        box = plan_crop([np.asarray(image, np.float32).reshape(1, h, w)], grid, min_size)
        bh, bw = box.shape if box is not None else (h, w)
        shapes.append((_scaled(bh, h, size, grid, min_size), _scaled(bw, w, size, grid, min_size)))
    by_area = sorted(shapes, key=lambda s: (s[0] * s[1], s))
    height, width = by_area[len(by_area) // 2]
    if (height, width) == (size, size):
        return None
    small, big = by_area[0], by_area[-1]
    source = f"median of {len(images)} held-out slices' brain boxes ({small[0]}x{small[1]} to {big[0]}x{big[1]})"
    return CropShape(height, width, height * width / size**2, source)


def _scaled(length: int, frame: int, size: int, grid: int, least: int) -> int:
    """A box side of a ``frame``-long side, on a ``size``-long one, up to the grid, within [least, size]."""
    if frame == size:
        return length
    return min(size, max(least, math.ceil(length * size / frame / grid) * grid))
