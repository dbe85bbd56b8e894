"""The 3-D template behind the demo set, and the leakage-free regions split."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.data.dataset import load_slices
from edgeseg.data.demo import build_demo
from edgeseg.data.split import make_split
from edgeseg.data.volume import (
    demo_planes,
    held_out_regions,
    held_out_slabs,
    load_template,
    oblique_plane,
    region_masks,
    sample_plane,
)
from edgeseg.metrics import IGNORE


@pytest.fixture(scope="module")
def demo():  # noqa: ANN201
    root = build_demo()
    return root, load_slices(root), demo_planes(root)


def test_demo_slices_are_placed_exactly_in_the_template(demo) -> None:  # noqa: ANN001
    """Resampling each demo slice's plane from the template gives back the stored file."""
    _, slices, planes = demo
    template = load_template()
    for i in range(0, len(slices), 19):
        image, labels = sample_plane(template, planes[i])
        assert np.abs(image - slices.images[i]).max() < 1e-3 * slices.images[i].max(), slices.keys[i]
        assert (labels == slices.masks[i]).mean() > 0.999, slices.keys[i]


def _ball_distance(plane, centres) -> np.ndarray:  # noqa: ANN001
    """Brute force: each pixel's voxel distance to the nearest ball centre."""
    pts = plane.points().astype(np.float64)
    return np.sqrt(((pts[..., None, :] - centres) ** 2).sum(-1)).min(-1)


def test_held_out_voxels_supervise_no_training_pixel_in_any_plane(demo) -> None:  # noqa: ANN001
    root, slices, planes = demo
    split = make_split(slices, "regions")
    regions = held_out_regions(0)
    rng = np.random.default_rng(1)
    template = load_template()
    oblique = [oblique_plane(template, rng, 30.0) for _ in range(6)]
    oblique_masks = [sample_plane(template, p)[1] for p in oblique]
    train_obl, _ = region_masks(oblique_masks, oblique, regions)
    pairs = [(planes[i], split.train_masks[i]) for i in range(0, len(slices), 5)]
    pairs += list(zip(oblique, train_obl, strict=True))
    near_total = 0
    for plane, train_mask in pairs:
        near = _ball_distance(plane, regions.centres) <= regions.radius_mm + regions.gap_mm - 1e-3
        near_total += int(near.sum())
        assert (train_mask[near] == IGNORE).all()
    assert near_total > 10_000  # the planes really cross the balls
    for i in split.test:  # scored pixels: inside a ball only, and every test slice has some
        inside = _ball_distance(planes[i], regions.centres) <= regions.radius_mm + 1e-3
        scored = split.test_masks[i] != IGNORE
        assert scored.any() and not (scored & ~inside).any()


def test_regions_split_holds_out_a_real_share_of_the_brain(demo) -> None:  # noqa: ANN001
    _, slices, _ = demo
    split = make_split(slices, "regions")
    brain = sum(int((m > 0).sum()) for m in slices.masks)
    ignored = sum(int(((m > 0) & (t == IGNORE)).sum()) for m, t in zip(slices.masks, split.train_masks, strict=True))
    assert 0.08 < ignored / brain < 0.5  # held-out balls and their gap shells, as brain pixels
    assert len(split.test) >= 32 and split.train == list(range(len(slices)))


def test_oblique_planes_of_the_slab_split_skip_every_slice_that_does_not_train(demo) -> None:  # noqa: ANN001
    """The slab split's oblique planes: a pixel whose voxel lies in a test slab or its gap is IGNORE."""
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.data import training_sources

    root, slices, planes = demo
    split = make_split(slices, "slabs")
    out = [planes[i] for i in range(len(slices)) if i not in set(split.train)]
    slabs = held_out_slabs(out)
    assert all(slabs.classify(p).all() for p in out)  # every held-out slice lies in its slab
    template, rng = load_template(), np.random.default_rng(2)
    held_total = 0
    for plane in (oblique_plane(template, rng, 30.0) for _ in range(6)):
        pts = plane.points()
        axis = [int(np.flatnonzero((p.drow == 0) & (p.dcol == 0))[0]) for p in out]
        near = [np.abs(pts[..., a] - p.origin[a]) for a, p in zip(axis, out, strict=True)]
        brute = np.min(near, axis=0) <= 0.5  # brute force: within half a voxel of a non-training slice
        held = slabs.classify(plane)
        assert not (brute & ~held).any() and not (held & (np.min(near, axis=0) > 1.0)).any()
        held_total += int(brute.sum())
    assert held_total > 10_000  # the planes really cross the slabs
    config = TrainConfig(split="slabs", oblique_planes=3)
    images, masks = training_sources(slices, split, config, log=lambda _: None)
    assert len(images) == len(split.train) + 3
    assert sum(int((m == IGNORE).sum()) for m in masks[len(split.train) :]) > 0
