"""The robustness report's raw-scan families: a head around the brain, other contrasts, other anatomy, no brain.

Each family is generated here, in 2-D on the held-out slice itself, by code that shares
nothing with the training generator (:mod:`edgeseg.data.synth`, 3-D, random ranges): other
shapes (layers follow a closed 2-D brain outline, their thickness a sum of a few sinusoids
of the angle), fixed strengths, and their own seeds (HEAD_SEED):

* ``head on``: CSF, skull (tables and marrow), fat, muscle and skin wrapped around the brain,
  T1 intensities relative to the slice's own white matter; the added tissue is scored as
  background (label 0), so scalp called brain costs mIoU;
* ``contrast``: the slice's intensities through a map fixed by its own tissue quantiles:
  inverted, GM/WM contrast compressed to 40 %, and T2-like (CSF bright, GM above WM);
* ``deformed``: a smooth 2-D elastic displacement of image and mask together;
* ``empty``: slices with no brain at all (a skull cap, a neck, pure noise): the report gives
  the share of their pixels labelled background.

numpy and scipy only (the ONNX report stays torch-free).
"""

from __future__ import annotations

import numpy as np

PX_MM = 0.5  # the demo slices' pixel size
HEAD_SEED = 9_022  # seeds of this module: none is used by the training generator
HEAD_MARGIN_PX = 64  # zeros added around the slice so the head fits (32 mm)
# (name, [(tissue, thickness mm, intensity / the slice's white matter)]) inside out
HEADS = (
    ("thin", [("csf", 1.5, 0.25), ("bone", 4.0, 0.05), ("fat", 3.0, 1.1), ("skin", 1.0, 0.6)]),
    (
        "thick",
        [
            ("csf", 3.0, 0.2),
            ("bone", 2.0, 0.04),
            ("marrow", 4.0, 0.65),
            ("bone", 2.0, 0.04),
            ("fat", 6.0, 1.25),
            ("muscle", 5.0, 0.45),
            ("skin", 2.0, 0.7),
        ],
    ),
)
CONTRASTS = ("inverted", "compressed", "T2-like")
DEFORM_MM = (2.0, 4.0)  # largest displacement of the elastic field
EMPTY_KINDS = ("skull cap", "neck", "noise")


def _rng(image: np.ndarray, salt: int) -> np.random.Generator:
    """A generator fixed by the slice (its shape and total) and the perturbation."""
    return np.random.default_rng([HEAD_SEED, salt, image.shape[0], image.shape[1], int(image.sum()) % 2**31])


def _white_level(image: np.ndarray) -> float:
    """The slice's bright-tissue level: the 90th percentile of its nonzero pixels."""
    tissue = image[image > 0]
    return float(np.percentile(tissue, 90)) if tissue.size else 1.0


def _outline_distance(support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance in mm outside a closed, filled outline of ``support``, and the angle about its centre."""
    from scipy import ndimage

    disk = np.hypot(*np.mgrid[-8:9, -8:9]) <= 8
    closed = ndimage.binary_fill_holes(ndimage.binary_closing(support, disk, iterations=2))
    distance = ndimage.distance_transform_edt(~closed) * PX_MM
    rows, cols = np.nonzero(closed)
    cy, cx = (rows.mean(), cols.mean()) if rows.size else (support.shape[0] / 2, support.shape[1] / 2)
    yy, xx = np.mgrid[: support.shape[0], : support.shape[1]]
    return distance, np.arctan2(yy - cy, xx - cx)


def head_on(kind: str):
    """Perturbation: the slice padded by HEAD_MARGIN_PX and wrapped in the ``kind`` head of HEADS."""
    layers = dict(HEADS)[kind]

    def apply(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from edgeseg.metrics import IGNORE

        rng = _rng(image, 1)
        im = np.pad(image, HEAD_MARGIN_PX)
        m = np.pad(mask, HEAD_MARGIN_PX, constant_values=IGNORE)
        distance, angle = _outline_distance(im > 0)
        wobble = sum(rng.uniform(0.05, 0.2) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        white = _white_level(image)
        out = im.copy()
        edge = np.zeros_like(distance)
        for _, mm, level in layers:
            lo, edge = edge, edge + mm * (1 + wobble)
            ring = (distance > lo) & (distance <= edge) & (im <= 0)
            out[ring] = level * white * (1 + 0.05 * rng.standard_normal(int(ring.sum())))
            m[ring] = 0
        return np.maximum(out, 0).astype(np.float32), m

    return apply


def contrast(kind: str):
    """Perturbation: the brain's intensities through the ``kind`` map of CONTRASTS; background stays 0."""

    def apply(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tissue = image > 0
        if not tissue.any():
            return image, mask
        dark, mid, bright, peak = np.percentile(image[tissue], [10, 45, 85, 100])
        if kind == "inverted":
            out = np.where(tissue, peak - image + 0.05 * peak, 0.0)
        elif kind == "compressed":  # GM/WM difference to 40 %, around the bright level
            out = np.interp(image, [0, dark, mid, bright, peak], [0, dark, bright - 0.4 * (bright - mid), bright, peak])
        else:  # T2-like: CSF brightest, then GM, then WM
            out = np.interp(image, [0, dark, mid, bright, peak], [0, peak, 0.55 * peak, 0.38 * peak, 0.35 * peak])
        return np.where(tissue, out, 0.0).astype(np.float32), mask

    return apply


def deformed(max_mm: float):
    """Perturbation: image (linear) and mask (nearest) moved by a smooth field of at most ``max_mm``."""
    from scipy import ndimage

    def apply(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from edgeseg.metrics import IGNORE

        rng = _rng(image, 3)
        fields = []
        for _ in range(2):
            f = ndimage.gaussian_filter(rng.standard_normal(image.shape), 24.0)
            fields.append(f / max(float(np.abs(f).max()), 1e-12) * max_mm / PX_MM)
        yy, xx = np.mgrid[: image.shape[0], : image.shape[1]].astype(np.float64)
        coords = np.stack([yy + fields[0], xx + fields[1]])
        warped = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
        moved = ndimage.map_coordinates(mask, coords, order=0, mode="constant", cval=IGNORE)
        return warped.astype(np.float32), moved.astype(np.uint8)

    return apply


def empty_slices(kind: str, count: int, size: int = 394) -> list[np.ndarray]:
    """``count`` slices with no brain: a skull cap, a neck, or Rician noise (intensities ~ 0..300)."""
    rng = np.random.default_rng([HEAD_SEED, 4, EMPTY_KINDS.index(kind)])
    yy, xx = np.mgrid[:size, :size].astype(np.float64) - size / 2
    out = []
    for _ in range(count):
        noise = rng.uniform(2, 12)
        if kind == "noise":
            image = np.zeros((size, size))
        else:
            a, b = rng.uniform(100, 170, 2) * (0.55 if kind == "skull cap" else 1.0)
            r = np.hypot(yy / b, xx / a)  # 1 at the skin
            if kind == "skull cap":  # skin, fat, bone, marrow, bone, then a dark inside
                edges, levels = [0.0, 0.72, 0.8, 0.85, 0.9, 0.95, 1.0], [20, 15, 160, 10, 250, 140]
            else:  # neck: muscle, a vertebra, the airway, fat and skin
                edges, levels = [0.0, 0.85, 0.94, 1.0], [120, 260, 150]
            image = np.zeros((size, size))
            for lo, hi, level in zip(edges[:-1], edges[1:], levels, strict=True):
                image[(r > lo) & (r <= hi)] = level
            if kind == "neck":
                image[np.hypot(yy - 0.3 * b, xx) < 0.12 * a] = 200  # vertebral body
                image[np.hypot(yy + 0.35 * b, xx) < 0.08 * a] = 0  # airway
        n1, n2 = rng.normal(0, noise, (2, size, size))
        out.append(np.sqrt((image + n1) ** 2 + n2**2).astype(np.float32))
    return out
