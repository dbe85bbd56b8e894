"""Synthetic heads (edgeseg.data.synth, synth_planes): non-brain tissue is background, held-out anatomy
never supervises."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.data.synth import (
    AIR,
    BRAIN,
    RECIPES,
    SynthHead,
    synth_recipe,
)
from edgeseg.data.synth_planes import held_out_points, raw_head_volume, synth_plane, synth_planes
from edgeseg.data.volume import held_out_regions, load_template
from edgeseg.metrics import IGNORE


def _planes(count: int = 8, seed: int = 0, **kw):  # noqa: ANN202
    rng = np.random.default_rng([seed, 1])
    head = SynthHead.draw(rng, synth_recipe(kw.pop("recipe", "full")))
    return [synth_plane(rng, head, **kw) for _ in range(count)]


def test_every_non_brain_tissue_is_background_and_brain_labels_come_from_the_template() -> None:
    seen = set()
    for image, labels, tissue in _planes():
        assert image.dtype == np.float32 and labels.dtype == np.uint8 and image.shape == (448, 448)
        assert np.isfinite(image).all() and image.min() >= 0
        assert (labels[tissue != BRAIN] == 0).all()
        assert (image[tissue == AIR] == 0).sum() > 0.9 * (tissue == AIR).sum()  # air stays (blurred) zero
        seen |= set(np.unique(tissue).tolist())
    assert {BRAIN, AIR} < seen and len(seen) >= 6  # brain, air and several generated tissues


def test_held_out_anatomy_is_ignored_wherever_a_deformed_head_puts_it() -> None:
    held = held_out_points(held_out_regions(0))
    rng = np.random.default_rng([3, 1])
    head = SynthHead.draw(rng)
    ignored = 0
    for _ in range(6):
        image, labels, tissue = synth_plane(rng, head, held_out=held)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, IGNORE}
        assert not ((labels == 1) | (labels == 2))[tissue != BRAIN].any()
        ignored += int((labels == IGNORE).sum())
    assert ignored > 0  # planes through the brain cross the four 24 mm balls


def test_held_out_points_are_the_balls_and_their_gaps() -> None:
    regions = held_out_regions(0)
    held = held_out_points(regions)
    rng = np.random.default_rng(11)
    q = (regions.centres[rng.integers(len(regions.centres), size=4000)] + rng.uniform(-40, 40, (4000, 3))).astype(
        np.float32
    )
    reach = regions.radius_mm + regions.gap_mm
    nearest = np.min([np.linalg.norm(q - c, axis=1) for c in regions.centres], axis=0)
    clear = np.abs(nearest - reach) > 0.01
    assert (held(q)[clear] == (nearest <= reach)[clear]).all()
    assert held(q).any() and not held(q).all()


def test_an_undeformed_head_is_template_space() -> None:
    head = SynthHead.draw(np.random.default_rng(5))
    head.matrix = np.eye(3, dtype=np.float32)
    head.displacement[:] = 0
    q = np.random.default_rng(6).uniform(0, 180, (500, 3)).astype(np.float32)
    assert np.allclose(head.to_template(q), q, atol=1e-4)
    moved = SynthHead.draw(np.random.default_rng(5))
    assert not np.allclose(moved.to_template(q), q, atol=0.5)  # a drawn head is deformed


def test_planes_are_seeded_and_include_planes_without_brain() -> None:
    a_images, a_masks = synth_planes(12, seed=4, heads=2)
    b_images, _ = synth_planes(12, seed=4, heads=2)
    assert all(np.array_equal(x, y) for x, y in zip(a_images, b_images, strict=True))
    c_images, _ = synth_planes(2, seed=5, heads=2)
    assert not np.array_equal(a_images[0], c_images[0])
    assert any(((m > 0) & (m != IGNORE)).sum() == 0 for m in a_masks) or any((m > 0).mean() < 0.05 for m in a_masks)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_renders(name: str) -> None:
    image, labels, tissue = _planes(1, recipe=name)[0]
    assert image.shape == labels.shape == tissue.shape and image.max() > 0
    if name == "no-head":
        assert set(np.unique(tissue).tolist()) <= {AIR, BRAIN, 2}  # air, brain, sulcal CSF only


def test_unknown_recipe_is_one_clear_error() -> None:
    from edgeseg.errors import EdgesegError

    with pytest.raises(EdgesegError, match="no-deform"):
        synth_recipe("nope")


@pytest.mark.slow
def test_raw_head_volume_surrounds_the_brain_with_background_tissue() -> None:
    image, labels, tissue = raw_head_volume(0)
    t1 = load_template().t1
    assert image.shape == labels.shape == tuple(np.array(t1.shape) + 80)
    assert (labels[tissue != BRAIN] == 0).all() and labels.max() == 2
    non_brain = (tissue != BRAIN) & (tissue != AIR)
    assert non_brain.sum() > 0.5 * (tissue == BRAIN).sum()  # a head's worth of scalp, skull and neck


def test_non_brain_share_counts_gm_and_wm_outside_the_brain_only() -> None:
    from edgeseg.data.raw_head import non_brain_share

    labels = np.zeros((10, 10, 10), np.uint8)
    brain = np.zeros_like(labels, bool)
    brain[3:7, 3:7, 3:7] = True
    head = np.zeros_like(brain)
    head[1:9, 1:9, 1:9] = True
    labels[brain] = 2  # brain labels never count
    labels[1, 1, 1:9] = 1  # 8 of the 512 - 64 head-minus-brain voxels
    labels[0, 0, 0] = 2  # one air voxel
    tissue_pct, all_pct, n = non_brain_share(labels, brain, head)
    assert n == 512 - 64
    assert tissue_pct == pytest.approx(100 * 8 / 448)
    assert all_pct == pytest.approx(100 * 9 / (1000 - 64))


def test_the_default_run_has_no_synthetic_planes_and_the_synth_preset_has() -> None:
    from edgeseg.train.config import make_config

    assert make_config().synth_planes == 0
    synth = make_config("synth")
    assert synth.synth_planes == 640 and synth.synth_recipe == "full" and synth.epochs == 14


def test_training_sources_append_synthetic_planes_after_the_demo_and_oblique_ones() -> None:
    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo
    from edgeseg.data.split import make_split
    from edgeseg.train.config import make_config
    from edgeseg.train.data import training_sources

    slices = load_slices(build_demo())
    split = make_split(slices, "regions")
    config = make_config(oblique_planes=2, synth_planes=3, synth_heads=1)
    lines: list[str] = []
    images, masks = training_sources(slices, split, config, lines.append)
    assert len(images) == len(masks) == len(split.train) + 2 + 3
    assert [im.shape for im in images[-3:]] == [(448, 448)] * 3 and images[-4].shape == slices.images[0].shape
    assert any("3 synthetic-head planes" in line for line in lines)
