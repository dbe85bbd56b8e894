"""Training patches that look like the scans users have: any field of view, oblique, biased, noisy.

Each item is one draw from a source plane (a demo slice, or an oblique plane resampled from
the 3-D template): a random frame around the brain (it fills 20-95 % of the frame, or the
frame is the whole source plane), a small rotation, flip and zoom, zero or noise background,
a smooth multiplicative bias field, gamma, Rician noise, a global intensity scale and, at
times, a lower in-plane or through-plane resolution. The model's own normalisation
(:func:`edgeseg.model_contract.tissue_scale`) is computed on the whole frame (on every STAT_STRIDE-th
pixel, which keeps the data path fast), and the item is a ``patch`` x ``patch`` window of the
normalised frame: what ``UNet.forward`` would compute on the whole frame at inference.

Masks may hold IGNORE (255): pixels that must not supervise training (held-out regions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg.errors import EdgesegError
from edgeseg.metrics import IGNORE
from edgeseg.model_contract import tissue_scale

STAT_STRIDE = 4  # the frame's normalisation statistic is taken on every 4th pixel of each axis
MAX_FRAME = 1024  # frame side cap in pixels (a 20 %-brain frame of a big slice)
BRAIN_PICK_STEP = 7  # patch centres are drawn from every 7th brain pixel (less memory, same spread)
BIAS_LENGTH = 200.0  # pixels (100 mm) per unit of the bias field's polynomial coordinates


@dataclass(frozen=True)
class RobustAugment:
    """The augmentation recipe; every range is sampled uniformly unless noted."""

    native_fov_p: float = 0.25  # chance the frame is the source plane as stored (394x394)
    brain_fill: tuple[float, float] = (0.2, 0.95)  # brain bounding box area / frame area
    aspect: tuple[float, float] = (0.75, 1.33)  # frame height / width, log-uniform
    hflip_p: float = 0.5  # left-right flip: brains are near-symmetric
    max_rotation_deg: float = 10.0  # in-plane rotation; oblique planes come from the volume
    zoom: tuple[float, float] = (0.9, 1.1)  # isotropic zoom: head size varies
    noise_background_p: float = 0.5  # Rician noise also outside the brain (else exact zeros)
    noise: tuple[float, float] = (0.0, 0.06)  # Rician sigma / the plane's peak intensity
    bias: float = 0.3  # max |coefficient| of the log bias field's 2nd-order polynomial
    gamma_p: float = 0.5  # chance of a gamma change
    gamma: tuple[float, float] = (0.7, 1.5)  # log-uniform, on intensities / the plane's peak
    scale: tuple[float, float] = (0.01, 100.0)  # global intensity scale, log-uniform
    lowres_p: float = 0.3  # chance of a lower resolution
    lowres: tuple[float, float] = (1.5, 6.0)  # pixel-size factor (0.5 mm -> up to 3 mm)
    brain_bias: float = 0.8  # chance the patch centre is a brain pixel


class RobustPatches(torch.utils.data.Dataset):
    """Seeded augmented ``(image (1, p, p) normalised, mask int64 (p, p))`` items.

    Args:
        images: source planes, float32 (H, W) raw intensities (background 0).
        masks: their labels, uint8 (H, W), IGNORE where nothing may be learnt.
        count: items per epoch; item k uses source ``k % len(images)``.
        patch: item side; None gives whole source planes (no field-of-view change).
        augment: False gives plain windows of the stored planes, normalised as a whole.
        seed: items depend only on (seed, epoch, k); call ``set_epoch`` each epoch.
        recipe: the augmentation; default :class:`RobustAugment`.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        masks: list[np.ndarray],
        count: int,
        patch: int | None = 128,
        augment: bool = True,
        seed: int = 0,
        recipe: RobustAugment | None = None,
    ) -> None:
        if not images or len(images) != len(masks):
            raise EdgesegError(
                f"training set: {len(images)} images for {len(masks)} masks; need matching, non-empty lists"
            )
        small = [i for i, im in enumerate(images) if patch is not None and min(im.shape) < patch]
        if small:
            raise EdgesegError(f"patch={patch} does not fit source planes {small[:10]}; choose a smaller patch")
        self.images, self.masks, self.count = images, masks, int(count)
        self.patch, self.augment, self.seed = patch, augment, seed
        self.recipe = recipe or RobustAugment()
        self.epoch = 0
        self.brain = [np.argwhere((m > 0) & (m != IGNORE))[::BRAIN_PICK_STEP] for m in masks]
        self.tissue = [_bbox(im > 0) for im in images]
        self.peaks = [float(im.max()) or 1.0 for im in images]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(k)])
        i = int(k) % len(self.images)
        if not self.augment or self.patch is None:
            return self._plain(rng, i)
        return self._augmented(rng, i)

    def _plain(self, rng: np.random.Generator, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[i], self.masks[i]
        size = self.patch or min(image.shape)
        h, w = (size, size) if self.patch else image.shape
        cy, cx = self._brain_centre(rng, i, image.shape, (h, w), 0.0 if self.patch is None else self.recipe.brain_bias)
        top, left = int(round(cy - (h - 1) / 2)), int(round(cx - (w - 1) / 2))
        scale = float(tissue_scale(torch.from_numpy(image)[None, None]))  # the whole plane's, as at inference
        x = torch.from_numpy(image[top : top + h, left : left + w] / scale)[None]
        return x.float().contiguous(), torch.from_numpy(mask[top : top + h, left : left + w].astype(np.int64))

    def _brain_centre(
        self, rng: np.random.Generator, i: int, shape: tuple[int, int], window: tuple[int, int], bias: float
    ) -> tuple[float, float]:
        """A window centre inside ``shape``, on a random brain pixel with probability ``bias``."""
        (h, w), (wh, ww) = shape, window
        brain = self.brain[i]
        if len(brain) and rng.random() < bias:
            cy, cx = brain[rng.integers(len(brain))]
        else:
            cy, cx = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
        return (
            float(np.clip(cy, (wh - 1) / 2, h - 1 - (wh - 1) / 2)),
            float(np.clip(cx, (ww - 1) / 2, w - 1 - (ww - 1) / 2)),
        )

    # ------------------------------------------------------------------ augmented draws

    def _augmented(self, rng: np.random.Generator, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r, p = self.recipe, self.patch
        angle = np.deg2rad(rng.uniform(-r.max_rotation_deg, r.max_rotation_deg))
        zoom = rng.uniform(*r.zoom)
        flip = -1.0 if rng.random() < r.hflip_p else 1.0
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        a = rot @ np.diag([flip, 1.0]) / zoom  # frame offset (x, y) -> source offset (x, y)
        centre, frame = self._frame(rng, i, zoom)
        frame = (max(frame[0], p), max(frame[1], p))
        # the patch: a window of the frame, on the brain with probability brain_bias
        inv = np.linalg.inv(a)
        brain = self.brain[i]
        if len(brain) and rng.random() < r.brain_bias:
            py, px = brain[rng.integers(len(brain))]
            ox, oy = inv @ (np.array([px, py]) - centre)
        else:
            ox, oy = rng.uniform(-frame[1] / 2, frame[1] / 2), rng.uniform(-frame[0] / 2, frame[0] / 2)
        oy = float(np.clip(oy, -(frame[0] - p) / 2, (frame[0] - p) / 2))
        ox = float(np.clip(ox, -(frame[1] - p) / 2, (frame[1] - p) / 2))
        ys = oy + np.arange(p) - (p - 1) / 2
        xs = ox + np.arange(p) - (p - 1) / 2
        fy = np.arange(0, frame[0], STAT_STRIDE) - (frame[0] - 1) / 2
        fx = np.arange(0, frame[1], STAT_STRIDE) - (frame[1] - 1) / 2
        draw = self._intensity_draw(rng, i)
        x_patch, m_patch = self._render(rng, i, a, centre, ys, xs, draw, with_mask=True)
        x_stat, _ = self._render(rng, i, a, centre, fy, fx, draw, with_mask=False)
        if rng.random() < r.lowres_p:
            x_patch = _lower_resolution(rng, x_patch, r.lowres)
        scale = tissue_scale(x_stat[None])
        return (x_patch / scale[0]).float().contiguous(), m_patch

    def _frame(self, rng: np.random.Generator, i: int, zoom: float) -> tuple[np.ndarray, tuple[int, int]]:
        """Frame centre (source x, y) and size (h, w) in frame pixels."""
        r, image = self.recipe, self.images[i]
        h0, w0 = image.shape
        box = self.tissue[i]
        if rng.random() < r.native_fov_p or box is None:
            return np.array([(w0 - 1) / 2, (h0 - 1) / 2]), (h0, w0)
        y0, x0, y1, x1 = box
        bh, bw = (y1 - y0 + 1) * zoom, (x1 - x0 + 1) * zoom
        area = bh * bw / rng.uniform(*r.brain_fill)
        aspect = math.exp(rng.uniform(*np.log(r.aspect)))
        fh = int(min(MAX_FRAME, round(math.sqrt(area * aspect))))
        fw = int(min(MAX_FRAME, round(math.sqrt(area / aspect))))
        # shift the frame within the slack between it and the brain box (cuts the brain when smaller)
        jy, jx = rng.uniform(-0.5, 0.5, 2) * np.abs([fh - bh, fw - bw]) / zoom
        return np.array([(x0 + x1) / 2 + jx, (y0 + y1) / 2 + jy]), (fh, fw)

    def _intensity_draw(self, rng: np.random.Generator, i: int) -> dict[str, float | np.ndarray]:
        r = self.recipe
        return {
            "bias": rng.uniform(-r.bias, r.bias, 5),
            "gamma": math.exp(rng.uniform(*np.log(r.gamma))) if rng.random() < r.gamma_p else 1.0,
            "sigma": rng.uniform(*r.noise) * self.peaks[i],
            "noise_background": rng.random() < r.noise_background_p,
            "scale": math.exp(rng.uniform(*np.log(r.scale))),
        }

    def _render(
        self,
        rng: np.random.Generator,
        i: int,
        a: np.ndarray,
        centre: np.ndarray,
        ys: np.ndarray,
        xs: np.ndarray,
        draw: dict,
        with_mask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The augmented frame at frame offsets ``ys`` x ``xs``: image (1, h, w), mask (h, w)."""
        image, peak = self.images[i], self.peaks[i]
        h0, w0 = image.shape
        gx, gy = np.meshgrid(xs, ys)
        sx = centre[0] + a[0, 0] * gx + a[0, 1] * gy  # source pixel coordinates
        sy = centre[1] + a[1, 0] * gx + a[1, 1] * gy
        grid = torch.from_numpy(np.stack([(2 * sx + 1) / w0 - 1, (2 * sy + 1) / h0 - 1], -1)[None]).float()
        src = torch.from_numpy(image)[None, None]
        x = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy()
        mask = None
        if with_mask:
            m = torch.from_numpy(self.masks[i].astype(np.float32))[None, None]
            mask = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0].long()
        # Pixel-wise maths in numpy: torch's multi-threaded kernels on these small tensors
        # waited ~5 ms per op for the training threads on 2 busy cores.
        u = ((sy - h0 / 2) / BIAS_LENGTH).astype(np.float32)
        v = ((sx - w0 / 2) / BIAS_LENGTH).astype(np.float32)
        c = draw["bias"].astype(np.float32)
        x = x * np.exp(c[0] * u + c[1] * v + c[2] * u * v + c[3] * u * u + c[4] * v * v)
        if draw["gamma"] != 1.0:
            x = np.float32(peak) * (np.maximum(x, 0) / np.float32(peak)) ** np.float32(draw["gamma"])
        if draw["sigma"] > 0:
            sigma = np.float32(draw["sigma"])
            n1 = rng.standard_normal(x.shape, dtype=np.float32)
            n2 = rng.standard_normal(x.shape, dtype=np.float32)
            noisy = np.sqrt((x + sigma * n1) ** 2 + (sigma * n2) ** 2)
            x = noisy if draw["noise_background"] else np.where(x > 0, noisy, x)
        return torch.from_numpy((x * np.float32(draw["scale"])).astype(np.float32)), mask


def _bbox(where: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the True pixels, inclusive; None if there are none."""
    rows, cols = np.flatnonzero(where.any(1)), np.flatnonzero(where.any(0))
    return None if rows.size == 0 else (rows[0], cols[0], rows[-1], cols[-1])


def _lower_resolution(rng: np.random.Generator, x: torch.Tensor, factors: tuple[float, float]) -> torch.Tensor:
    """Average down by a random factor on one axis (thick slices) or both, then back up bilinearly."""
    h, w = x.shape[-2:]
    f = rng.uniform(*factors)
    fy, fx = [(f, f), (f, 1.0), (1.0, f)][rng.integers(3)]
    small = F.interpolate(x[None], size=(max(2, round(h / fy)), max(2, round(w / fx))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
