"""Planes and whole volumes cut from synthetic heads: what training and the raw-head check see.

:func:`synth_planes` cuts planes through random :class:`edgeseg.data.synth.SynthHead` heads at any
orientation (through the brain, through skull and neck only, or above the head: labels all
background), each rendered with its own random contrast; held-out anatomy is IGNORE (255),
as in every other training plane, through :func:`held_out_points`. :func:`raw_head_volume`
renders one undeformed head as a 1 mm volume, for the raw-head check (``head.nii.gz`` as a
clinic would send it). About 0.2 s a plane on one core.

Split from :mod:`edgeseg.data.synth` (451 lines), which keeps the tissue generation, deformation
and contrast: this module only samples what a head is. numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeseg.data.demo import _labels
from edgeseg.data.synth import BRAIN, PAD_MM, SynthHead, SynthRecipe, draw_contrast, render, smooth_field
from edgeseg.data.volume import PIXEL_VOXELS, Template, load_template, rotate
from edgeseg.metrics import IGNORE


def _plane_points(rng: np.random.Generator, head: SynthHead, r: SynthRecipe, size: int) -> np.ndarray:
    """Head-space voxel points (size, size, 3) of a random 0.5 mm plane through the head."""
    t1 = load_template().t1
    pick = rng.random()
    tilt = r.tilt_deg
    if pick < r.above_head_p:  # near-axial, from the top of the brain to well above the head
        base = 0
        centre = np.array([rng.uniform(60, 140), rng.uniform(60, 180), head.top_z + rng.uniform(-6, 45)], np.float32)
        tilt = 10.0
    else:
        base = int(rng.integers(3))
        if pick < r.above_head_p + r.brain_centre_p:
            brain = np.argwhere(t1[::3, ::3, ::3] > 0) * 3
            centre = brain[rng.integers(len(brain))].astype(np.float32)
        else:
            lo, hi = np.array([-20, -20, -45]), np.array(t1.shape) + np.array([20, 20, 25])
            centre = rng.uniform(lo, hi).astype(np.float32)
    col, row = {0: (np.eye(3)[0], -np.eye(3)[1]), 1: (np.eye(3)[0], -np.eye(3)[2]), 2: (np.eye(3)[1], -np.eye(3)[2])}[
        base
    ]
    col, row = col.astype(np.float32), row.astype(np.float32)
    for axis in (col, row):
        angle = np.deg2rad(rng.uniform(-tilt, tilt))
        col, row = rotate(col, axis, angle), rotate(row, axis, angle)
    drow, dcol = row * PIXEL_VOXELS, col * PIXEL_VOXELS
    origin = centre - (size - 1) / 2 * (drow + dcol)
    rr = np.arange(size, dtype=np.float32)[:, None, None]
    cc = np.arange(size, dtype=np.float32)[None, :, None]
    return (origin + rr * drow + cc * dcol).astype(np.float32)


def _at(volume: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Trilinear values of a template volume at template points ``q`` (..., 3); 0 outside."""
    from scipy import ndimage

    coords = np.moveaxis(q, -1, 0).reshape(3, -1)
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0).reshape(q.shape[:-1])


def synth_plane(
    rng: np.random.Generator,
    head: SynthHead,
    held_out: Callable[[np.ndarray], np.ndarray] | None = None,
    recipe: SynthRecipe | None = None,
    size: int = 448,
    template: Template | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random plane of ``head``: (image float32, labels uint8 with IGNORE, tissue classes uint8).

    Args:
        held_out: template points (..., 3) -> True where a pixel must not supervise training.
        size: plane side in 0.5 mm pixels (448: 224 mm, a whole head).
    """
    r = recipe or SynthRecipe()
    t = template or load_template()
    q = head.to_template(_plane_points(rng, head, r, size))
    t1 = _at(t.t1, q)
    labels = _labels(_at(t.gm, q), _at(t.wm, q), 0.5)
    tissue = head.tissue(q, t1)
    labels[tissue != BRAIN] = 0
    texture = smooth_field(rng, 12, (size, size))
    image = render(rng, tissue, t1, draw_contrast(rng, r), texture, r)
    if held_out is not None:
        labels = np.where(held_out(q), IGNORE, labels).astype(np.uint8)
    return image, labels, tissue


def synth_planes(
    count: int,
    seed: int,
    held_out: Callable[[np.ndarray], np.ndarray] | None = None,
    heads: int = 8,
    recipe: SynthRecipe | None = None,
    size: int = 448,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` planes through ``heads`` random heads (round robin): images and labels.

    About 0.2 s a plane on one core; a run makes them once and augments them every epoch.
    """
    rng = np.random.default_rng([seed, 22])
    drawn = [SynthHead.draw(rng, recipe) for _ in range(max(1, heads))]
    images, masks = [], []
    for k in range(count):
        image, labels, _ = synth_plane(rng, drawn[k % len(drawn)], held_out, recipe, size)
        images.append(image)
        masks.append(labels)
    return images, masks


def held_out_points(held: object) -> Callable[[np.ndarray], np.ndarray]:
    """Template points -> True where held out or in a gap, for a :class:`edgeseg.data.volume.Regions`
    or :class:`edgeseg.data.volume.Slabs` (the same voxels the other training planes ignore)."""
    from edgeseg.data.volume import Regions

    if isinstance(held, Regions):
        reach = (held.radius_mm + held.gap_mm) ** 2

        def in_regions(q: np.ndarray) -> np.ndarray:
            return np.min([((q - c) ** 2).sum(-1) for c in held.centres], axis=0) <= reach

        return in_regions

    def in_slabs(q: np.ndarray) -> np.ndarray:
        out = np.zeros(q.shape[:-1], bool)
        for axis, lo, hi in held.ranges:  # type: ignore[attr-defined]
            out |= (q[..., axis] >= lo) & (q[..., axis] <= hi)
        return out

    return in_slabs


def raw_head_volume(seed: int = 0, recipe: SynthRecipe | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 1 mm T1-like raw head around the undeformed template: (image, brain labels, tissue classes).

    The template's box grown by PAD_MM on every side (and a neck below it); same RAS axes,
    so its affine is the template's shifted by -PAD_MM voxels. For the raw-head check only:
    ``head.nii.gz`` as a clinic would send it, no skull-strip.
    """
    r = recipe or SynthRecipe()
    rng = np.random.default_rng([seed, 4])
    head = SynthHead.draw(rng, r)
    head.matrix = np.eye(3, dtype=np.float32)
    head.displacement[:] = 0.0
    t = load_template()
    shape = np.array(t.t1.shape) + 2 * PAD_MM
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) - PAD_MM for n in shape], indexing="ij"), -1)
    image = np.zeros(tuple(shape), np.float32)
    labels = np.zeros(tuple(shape), np.uint8)
    tissue = np.zeros(tuple(shape), np.uint8)
    contrast = {
        k: (v[0], v[1]) for k, v in draw_contrast(np.random.default_rng([seed, 5]), SynthRecipe(t1_like_p=1.0)).items()
    }
    for z in range(shape[2]):
        q = grid[:, :, z]
        t1 = _at(t.t1, q)
        tissue[:, :, z] = head.tissue(q, t1)
        labels[:, :, z] = np.where(tissue[:, :, z] == BRAIN, _labels(_at(t.gm, q), _at(t.wm, q), 0.5), 0)
        texture = smooth_field(rng, 12, q.shape[:2])
        image[:, :, z] = render(rng, tissue[:, :, z], t1, contrast, texture, SynthRecipe(blur_px=(0.0, 0.0)))
    return image, labels, tissue
