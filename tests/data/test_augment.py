"""Tests for edgeseg/data/augment.py: the training patches RobustPatches draws (the dataset train uses)."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from edgeseg.data.augment import RobustAugment, RobustPatches
from edgeseg.errors import EdgesegError
from edgeseg.metrics import IGNORE
from edgeseg.model_contract import tissue_scale

SIZE = 48


def planes(count: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Discs of labels 1 (rim) and 2 (core) on a zero background, intensities like T1."""
    images, masks = [], []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for k in range(count):
        r = np.hypot(yy - 23.5 - k, xx - 22.5)
        mask = np.where(r < 7, 2, np.where(r < 14, 1, 0)).astype(np.uint8)
        noise = np.random.default_rng(k).normal(0, 5, mask.shape)
        images.append(np.where(mask > 0, mask * 300.0 + noise, 0).astype(np.float32))
        masks.append(mask)
    return images, masks


def test_items_shapes_labels_determinism_and_epochs() -> None:
    images, masks = planes()
    ds = RobustPatches(images, masks, count=8, patch=16, seed=5)
    assert len(ds) == 8
    for k in range(len(ds)):
        image, mask = ds[k]
        assert image.shape == (1, 16, 16) and image.dtype == torch.float32 and torch.isfinite(image).all()
        assert mask.shape == (16, 16) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= {0, 1, 2}
    again = RobustPatches(images, masks, count=8, patch=16, seed=5)
    assert all(torch.equal(ds[k][0], again[k][0]) and torch.equal(ds[k][1], again[k][1]) for k in range(8))
    assert not torch.equal(ds[0][0], ds[4][0])  # the same source plane, another draw
    first = ds[0][0]
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0][0])
    restored = pickle.loads(pickle.dumps(ds))  # DataLoader workers with spawn pickle it
    assert torch.equal(restored[1][1], ds[1][1])


def test_plain_items_are_windows_normalised_by_the_whole_plane() -> None:
    """augment=False: a window of the stored plane, divided by the whole plane's tissue scale,
    which is what the model's in-graph normalisation computes on the whole slice at inference."""
    images, masks = planes()
    ds = RobustPatches(images, masks, count=12, patch=8, augment=False, recipe=RobustAugment(brain_bias=1.0))
    for k in range(len(ds)):
        image, mask = ds[k]
        source, labels = images[k % 4], masks[k % 4]
        scale = float(tissue_scale(torch.from_numpy(source)[None, None]))
        hits = [
            (r, c)
            for r in range(SIZE - 7)
            for c in range(SIZE - 7)
            if np.allclose(source[r : r + 8, c : c + 8] / scale, image[0].numpy(), atol=1e-6)
        ]
        assert len(hits) >= 1
        r, c = hits[0]
        np.testing.assert_array_equal(mask.numpy(), labels[r : r + 8, c : c + 8])
        assert mask.any()  # brain_bias 1: the window is centred on a brain pixel


def test_augmented_items_are_intensity_scale_free() -> None:
    """The global intensity scale (0.01-100x) is a draw, but the item is normalised: its tissue
    sits near 1 whatever the draw, as it does for the model at inference."""
    images, masks = planes()
    ds = RobustPatches(images, masks, count=16, patch=None, augment=False)
    base = ds[0][0]
    scaled = RobustPatches([im * 100 for im in images], masks, count=16, patch=None, augment=False)[0][0]
    torch.testing.assert_close(base, scaled, rtol=1e-4, atol=1e-5)
    aug = RobustPatches(images, masks, count=16, patch=24, seed=1)
    tissue = [float(x[0][m > 0].mean()) for x, m in (aug[k] for k in range(16)) if (m > 0).sum() > 20]
    assert tissue and all(0.2 < t < 5 for t in tissue), tissue


def test_ignored_pixels_stay_ignored() -> None:
    """Held-out pixels (IGNORE) never turn into labels under warps, flips and crops."""
    images, masks = planes()
    masks = [np.where(np.arange(SIZE)[None, :] < SIZE // 2, m, IGNORE).astype(np.uint8) for m in masks]
    ds = RobustPatches(images, masks, count=16, patch=16, seed=2)
    seen = set()
    for k in range(len(ds)):
        seen |= set(ds[k][1].unique().tolist())
    assert seen <= {0, 1, 2, IGNORE} and IGNORE in seen


def test_no_augmentation_recipe_reproduces_the_plane() -> None:
    """A recipe with every draw off and the native field of view: the item is the plane itself."""
    images, masks = planes(1)
    still = RobustAugment(
        native_fov_p=1.0,
        hflip_p=0.0,
        max_rotation_deg=0.0,
        zoom=(1.0, 1.0),
        noise=(0.0, 0.0),
        bias=0.0,
        gamma_p=0.0,
        scale=(1.0, 1.0),
        lowres_p=0.0,
    )
    image, mask = RobustPatches(images, masks, count=1, patch=SIZE, recipe=still)[0]
    scale = float(tissue_scale(torch.from_numpy(images[0])[None, None]))
    np.testing.assert_array_equal(mask.numpy(), masks[0])
    # The same picture up to one constant: the frame's scale, taken on every STAT_STRIDE-th pixel
    # to keep the data path fast, is within a few percent of the whole plane's.
    tissue = images[0] > 0
    ratio = image[0].numpy()[tissue] / images[0][tissue]
    assert ratio.std() / ratio.mean() < 1e-4 and abs(ratio.mean() * scale - 1) < 0.03, (ratio.mean(), 1 / scale)
    assert np.abs(image[0].numpy()[~tissue]).max() < 1e-3 * image[0].numpy().max()  # zero background kept
    flipped = dataclasses.replace(still, hflip_p=1.0)
    _, mask = RobustPatches(images, masks, count=1, patch=SIZE, recipe=flipped)[0]
    np.testing.assert_array_equal(mask.numpy(), masks[0][:, ::-1])


@pytest.mark.parametrize("images,masks,patch,match", [([], [], 8, "0 images"), (None, None, 64, "patch=64")])
def test_bad_training_sets_are_refused(images, masks, patch: int, match: str) -> None:  # noqa: ANN001
    if images is None:
        images, masks = planes(2)
    with pytest.raises(EdgesegError, match=match):
        RobustPatches(images, masks, count=1, patch=patch)
