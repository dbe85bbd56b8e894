"""The planes a training run learns from: the split's slices, plus oblique and synthetic planes.

:func:`training_sources` appends, for the demo set, oblique planes of the template and planes
of synthetic heads (:mod:`edgeseg.data.synth`), with every pixel in held-out anatomy IGNORE: the
held-out balls and their gaps (regions split) or the test slabs and their gaps (slab split),
so nothing added supervises what the test scores. Split from :mod:`edgeseg.train.loop` (488 lines)
so that the loop reads on its own; :func:`edgeseg.train.loop.train` calls these once per run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.data.dataset import Slices, load_slices
from edgeseg.data.demo import build_demo, read_demo_provenance
from edgeseg.data.split import Split, is_demo_set
from edgeseg.errors import EdgesegError
from edgeseg.metrics import IGNORE
from edgeseg.train.config import TrainConfig

if TYPE_CHECKING:
    from edgeseg.train.distributed import World


def training_sources(
    slices: Slices, split: Split, config: TrainConfig, log: Callable[[str], None]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training planes: the split's training slices, plus oblique planes of the demo template
    and planes of synthetic heads (:mod:`edgeseg.data.synth`, ``--preset synth``).

    Both are resampled from the template once per run (oblique planes about 0.1 s each,
    synthetic-head planes about 0.6 s) and augmented anew every epoch. Their pixels in held-out
    anatomy are IGNORE, so they supervise nothing the test scores: the held-out balls and their
    gaps (regions split), or the voxels of every slice that does not train, test slabs and their
    gaps (slab split).
    """
    images = [slices.images[i] for i in split.train]
    masks = [split.train_masks[i] for i in split.train]
    if config.split not in ("regions", "slabs") or not config.augment or not is_demo_set(slices.root):
        return images, masks
    if config.oblique_planes > 0:
        images, masks = _oblique_sources(slices, split, config, images, masks)
        log(
            f"{config.oblique_planes} oblique planes (tilt up to {config.oblique_tilt_deg:g} deg)"
            f" added to {len(split.train)} slices"
        )
    if config.synth_planes > 0:
        from edgeseg.data.synth import synth_recipe
        from edgeseg.data.synth_planes import held_out_points, synth_planes

        held = held_out_points(_held_out_anatomy(slices, split, config))
        recipe = synth_recipe(config.synth_recipe)
        extra = synth_planes(config.synth_planes, config.seed, held, config.synth_heads, recipe)
        images, masks = images + extra[0], masks + extra[1]
        log(f"{config.synth_planes} synthetic-head planes ({config.synth_heads} heads) added")
    return images, masks


def _oblique_sources(
    slices: Slices, split: Split, config: TrainConfig, images: list[np.ndarray], masks: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The training planes with ``config.oblique_planes`` oblique template planes appended."""
    from edgeseg.data.volume import brain_voxels, load_template, oblique_plane, sample_plane

    template, rng = load_template(), np.random.default_rng([config.seed, 7])
    brain, held_out = brain_voxels(template), _held_out_voxels(slices, split, config)
    size = slices.images[0].shape[0]
    images, masks = list(images), list(masks)
    target = len(images) + config.oblique_planes
    while len(images) < target:
        plane = oblique_plane(template, rng, config.oblique_tilt_deg, size, brain)
        image, labels = sample_plane(template, plane)
        if (labels > 0).mean() >= 0.02:  # the demo set's own rule for a slice with brain
            images.append(image)
            masks.append(np.where(held_out(plane), IGNORE, labels).astype(np.uint8))
    return images, masks


def _held_out_anatomy(slices: Slices, split: Split, config: TrainConfig) -> Any:
    """The template voxels that must not supervise training: a Regions (held out or gap) or Slabs."""
    from edgeseg.data.volume import demo_planes, held_out_regions, held_out_slabs

    if config.split == "regions":
        return held_out_regions(config.seed)
    planes = demo_planes(slices.root)
    kept = set(split.train)
    return held_out_slabs([p for i, p in enumerate(planes) if i not in kept])


def _held_out_voxels(slices: Slices, split: Split, config: TrainConfig) -> Callable[[Any], np.ndarray]:
    """``plane -> (H, W) bool``: the pixels of a template plane that must not supervise training."""
    held = _held_out_anatomy(slices, split, config)
    if config.split == "regions":
        return lambda plane: held.classify(plane) != 0  # held out or gap
    return held.classify


def load_data(config: TrainConfig, world: World) -> Slices:
    root = Path(config.data) if config.data else world.first(build_demo)  # one process builds it
    return load_slices(root, config.num_classes)


def demo_pixel_mm(root: Path) -> float | None:
    """The demo set's pixel size from its provenance; None for other data."""
    try:
        return float(read_demo_provenance(root)["pixel_mm"])
    except (EdgesegError, KeyError, TypeError, ValueError, OSError):
        return None
