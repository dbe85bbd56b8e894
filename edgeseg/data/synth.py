"""Synthetic heads from the one template: generated skull and scalp, random contrast, deformed anatomy.

We have one brain (nilearn's MNI152 2009a T1, skull-stripped, and its GM/WM maps) and must
segment raw heads of other people in other contrasts. As SynthSeg does, the variability is
generated. A :class:`SynthHead` is one random head:

* the template brain (T1 > 0: brain and the CSF the skull-strip kept), surrounded by layers
  cut from the distance to a smoothed brain envelope: a CSF rim, the inner table, marrow,
  the outer table, fat, muscle and skin, each of random thickness that also varies over the
  head (a smooth random field of up to ``shape_mm``); two eyes; a neck below the brain stem
  with a vertebra. Every one of them is label 0 (background), as is the air around;
* a 3-D affine (rotation, scale, shear) and a smooth elastic displacement of everything,
  template and labels together, before any plane is cut.

:func:`edgeseg.data.synth_planes.synth_planes` cuts planes through random heads at any orientation (through the brain,
through skull and neck only, or above the head: labels all background) and renders each
with its own random contrast: per tissue a random mean and spread (a Gaussian per class),
T1-like or anything (flipped or compressed GM/WM contrast, T2-like), a smooth texture per
non-brain tissue, and partial volume. Inside the brain the template's own CSF, GM and WM
levels are moved to the drawn means by a piecewise-linear map of the T1, so the held-out
anatomy is never drawn from its labels; its pixels are IGNORE (255) as in every other
training plane. Bias, gamma, noise, resolution, scale and field of view come later, from
:class:`edgeseg.data.augment.RobustPatches`, which treats these planes like any other.

numpy and scipy only. ``edgeseg train --preset synth`` trains on them beside the demo slices.
This module generates a head (tissue, deformation, contrast); :mod:`edgeseg.data.synth_planes`
cuts planes and whole raw-head volumes from it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from edgeseg.data.demo import _labels
from edgeseg.data.volume import load_template, rotate

GRID_MM = 2  # the envelope's distance map is kept at 2 mm: it is smooth, and 8x smaller
PAD_MM = 40  # room around the template for skull, scalp and neck (its brain nearly fills it)
# Tissue classes of a synthetic head (all label 0 except what the template's maps say in BRAIN).
AIR, BRAIN, CSF, BONE, MARROW, FAT, MUSCLE, SKIN, EYE, NECK = range(10)
LAYERS = (CSF, BONE, MARROW, BONE, FAT, MUSCLE, SKIN)  # inside out, beyond the brain envelope
EYE_MNI = (32.0, 52.0, -36.0)  # |x|, y, z of an eyeball's centre in MNI mm (roughly)
MNI_ORIGIN = np.array([98.0, 134.0, 72.0])  # voxel of MNI (0, 0, 0) in the template (1 mm, RAS)


@dataclass(frozen=True)
class SynthRecipe:
    """Ranges of the synthetic heads and their planes; uniform unless noted."""

    csf_mm: tuple[float, float] = (1.0, 4.0)  # CSF rim beyond the skull-strip's envelope
    table_mm: tuple[float, float] = (1.0, 3.0)  # inner and outer table of the skull, each
    marrow_mm: tuple[float, float] = (1.0, 5.0)  # diploe between the tables
    fat_mm: tuple[float, float] = (1.5, 7.0)  # subcutaneous fat
    muscle_mm: tuple[float, float] = (0.0, 6.0)  # temporalis and friends
    skin_mm: tuple[float, float] = (1.0, 2.5)
    shape_mm: float = 4.0  # max amplitude of the smooth field that thickens and thins the layers
    eye_mm: tuple[float, float] = (10.5, 12.5)  # eyeball radius
    neck_mm: tuple[float, float] = (45.0, 60.0)  # neck half-width below the brain stem
    rotation_deg: float = 12.0  # affine: about each axis
    scale: tuple[float, float] = (0.88, 1.12)  # affine: per axis
    shear: float = 0.06  # affine: off-diagonal terms
    elastic_mm: tuple[float, float] = (0.0, 4.0)  # max displacement of the elastic field
    elastic_grid: int = 6  # control points per axis of the elastic field
    tilt_deg: float = 30.0  # plane tilt from axial/coronal/sagittal
    brain_centre_p: float = 0.75  # planes through a brain voxel; else anywhere in the head box
    above_head_p: float = 0.08  # near-axial planes above the brain (skull cap, air): no brain
    t1_like_p: float = 0.45  # contrast: T1-like tissue means; else every mean at random
    min_gm_wm_gap: float = 0.08  # |GM - WM| mean difference / the brightest tissue, at least
    spread: tuple[float, float] = (0.0, 0.08)  # per-tissue Gaussian sigma / the brightest tissue
    texture: tuple[float, float] = (0.0, 0.25)  # non-brain tissue's smooth relative texture
    blur_px: tuple[float, float] = (0.0, 1.0)  # Gaussian sigma: partial volume at 0.5 mm


RECIPES = {  # "full", and each part of it left out in turn, to measure what it buys
    "full": {},
    "no-head": dict(
        csf_mm=(0.0, 0.0),
        table_mm=(0.0, 0.0),
        marrow_mm=(0.0, 0.0),
        fat_mm=(0.0, 0.0),
        muscle_mm=(0.0, 0.0),
        skin_mm=(0.0, 0.0),
        eye_mm=(0.0, 0.0),
        neck_mm=(0.0, 0.0),
        above_head_p=0.0,
        brain_centre_p=1.0,
    ),
    "no-contrast": dict(t1_like_p=1.0, spread=(0.0, 0.02)),
    "no-deform": dict(rotation_deg=0.0, scale=(1.0, 1.0), shear=0.0, elastic_mm=(0.0, 0.0)),
}


def synth_recipe(name: str) -> SynthRecipe:
    """The :class:`SynthRecipe` of a RECIPES name (``--synth-recipe``)."""
    from edgeseg.errors import EdgesegError

    if name not in RECIPES:
        raise EdgesegError(f"unknown synthetic-head recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return SynthRecipe(**RECIPES[name])


@functools.cache
def _envelope() -> tuple[np.ndarray, np.ndarray]:
    """Signed-free distance (mm) outside the smoothed brain mask on a 2 mm padded grid, and its origin.

    The skull-strip's mask has sulci cut into it; a Gaussian-smoothed, closed envelope is
    what a skull follows. About 1 s, once per process.
    """
    from scipy import ndimage

    t1 = load_template().t1
    small = t1[::GRID_MM, ::GRID_MM, ::GRID_MM] > 0
    pad = PAD_MM // GRID_MM
    small = np.pad(small, pad)
    hull = ndimage.gaussian_filter(small.astype(np.float32), 2.0) > 0.3
    hull = ndimage.binary_fill_holes(ndimage.binary_closing(hull, iterations=3))
    distance = ndimage.distance_transform_edt(~hull).astype(np.float32) * GRID_MM
    return distance, np.full(3, -float(PAD_MM), np.float32)  # grid index 0 = voxel -PAD_MM


def smooth_field(rng: np.random.Generator, grid: int, shape: tuple[int, ...]) -> np.ndarray:
    """A random field in [-1, 1]-ish: ``grid``^3 Gaussian control points, cubic-upsampled to ``shape``."""
    from scipy import ndimage

    coarse = rng.standard_normal((grid,) * len(shape)).astype(np.float32)
    return ndimage.zoom(coarse, [s / grid for s in shape], order=3, mode="nearest").astype(np.float32)


@dataclass
class SynthHead:
    """One random head: where a head-space voxel comes from in the template, and its tissue."""

    matrix: np.ndarray  # (3, 3) affine: head offset -> template offset about the brain centre
    centre: np.ndarray  # (3,) template voxel the affine turns about
    displacement: np.ndarray  # (3, g, g, g) elastic field in mm over the padded template box
    thickness: dict[int, float]  # layer index -> mm (LAYERS order)
    shape_field: np.ndarray  # (g, g, g) varies the layers' outer distances, in [-1, 1]-ish
    shape_mm: float
    eyes: np.ndarray  # (2, 3) eye centres, template voxels
    eye_mm: float
    neck_mm: float
    neck_centre: np.ndarray  # (2,) x, y of the brain stem, template voxels
    top_z: float  # highest brain voxel (template z), for planes above the head

    @staticmethod
    def draw(rng: np.random.Generator, recipe: SynthRecipe | None = None) -> SynthHead:
        r = recipe or SynthRecipe()
        t1 = load_template().t1
        brain = np.argwhere(t1[::4, ::4, ::4] > 0) * 4
        centre = brain.mean(0).astype(np.float32)
        m = np.eye(3, dtype=np.float32)
        for axis in np.eye(3, dtype=np.float32):
            angle = np.deg2rad(rng.uniform(-r.rotation_deg, r.rotation_deg))
            m = np.stack([rotate(v, axis, angle) for v in m.T], 1) @ np.eye(3, dtype=np.float32)
        m = m @ np.diag(rng.uniform(*r.scale, 3)).astype(np.float32)
        m = m + rng.uniform(-r.shear, r.shear, (3, 3)).astype(np.float32) * (1 - np.eye(3, dtype=np.float32))
        g = r.elastic_grid
        amplitude = rng.uniform(*r.elastic_mm)
        displacement = np.stack([smooth_field(rng, 4, (g, g, g)) for _ in range(3)]) * amplitude / 2
        ranges = (r.csf_mm, r.table_mm, r.marrow_mm, r.table_mm, r.fat_mm, r.muscle_mm, r.skin_mm)
        side = np.array([1.0, -1.0])
        eye = np.array(EYE_MNI) + rng.uniform(-3, 3, 3)
        eyes = np.stack([MNI_ORIGIN + np.array([s * eye[0], eye[1], eye[2]]) for s in side]).astype(np.float32)
        stem = brain[brain[:, 2] <= brain[:, 2].min() + 8]
        return SynthHead(
            m.astype(np.float32),
            centre,
            displacement.astype(np.float32),
            {k: float(rng.uniform(*ranges[k])) for k in range(len(LAYERS))},
            smooth_field(rng, 4, (8, 8, 8)),
            float(rng.uniform(0, r.shape_mm)),
            eyes,
            float(rng.uniform(*r.eye_mm)),
            float(rng.uniform(*r.neck_mm)),
            stem[:, :2].mean(0).astype(np.float32),
            float(brain[:, 2].max()),
        )

    def to_template(self, points: np.ndarray) -> np.ndarray:
        """Head-space voxel coordinates (..., 3) -> template voxel coordinates (..., 3)."""
        q = (points - self.centre) @ self.matrix.T + self.centre
        return q + self._field(self.displacement, q)

    def _field(self, field: np.ndarray, q: np.ndarray) -> np.ndarray:
        """A coarse field (C, g, g, g) over the padded template box, trilinear at ``q`` (..., 3)."""
        from scipy import ndimage

        shape = np.array(load_template().t1.shape, np.float32) + 2 * PAD_MM
        g = np.array(field.shape[1:], np.float32)
        idx = (q + PAD_MM) / shape * (g - 1)
        coords = np.moveaxis(idx, -1, 0).reshape(3, -1)
        out = [ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in field]
        return (
            np.stack(out, -1).reshape(q.shape[:-1] + (len(field),)) if len(field) > 1 else out[0].reshape(q.shape[:-1])
        )

    def tissue(self, q: np.ndarray, t1: np.ndarray) -> np.ndarray:
        """Tissue class (uint8) of template points ``q`` (..., 3) whose template T1 is ``t1``."""
        from scipy import ndimage

        distance, origin = _envelope()
        idx = np.moveaxis((q - origin) / GRID_MM, -1, 0).reshape(3, -1)
        d = ndimage.map_coordinates(distance, idx, order=1, mode="nearest").reshape(q.shape[:-1])
        d = d * (1 + 0.25 * self._field(self.shape_field[None], q)) + self.shape_mm * self._field(
            self.shape_field[None, ::-1], q
        )
        out = np.full(q.shape[:-1], AIR, np.uint8)
        edge = 0.0
        for k, layer in enumerate(LAYERS):
            lo, edge = edge, edge + self.thickness[k]
            out[(d > lo) & (d <= edge)] = layer
        out[d <= 0] = CSF  # inside the envelope but outside the stripped brain: sulcal CSF
        below = q[..., 2] < -2.0  # the template ends at the brain stem: a neck below it
        r = np.hypot(q[..., 0] - self.neck_centre[0], (q[..., 1] - self.neck_centre[1]) * 1.15)
        neck = below & (r <= self.neck_mm)
        out[neck] = NECK
        out[neck & (r > self.neck_mm - self.thickness[6] - self.thickness[4])] = FAT
        out[neck & (r > self.neck_mm - self.thickness[6])] = SKIN
        vertebra = below & (np.hypot(q[..., 0] - self.neck_centre[0], q[..., 1] - self.neck_centre[1] + 14) <= 11)
        out[vertebra] = MARROW
        for eye in self.eyes:
            inside = ((q - eye) ** 2).sum(-1) <= self.eye_mm**2
            out[inside & (t1 <= 0)] = EYE
        out[t1 > 0] = BRAIN
        return out


# ----------------------------------------------------------------------------- rendering


@functools.cache
def _template_levels() -> tuple[float, float, float, float]:
    """Median T1 of the stripped mask's CSF, of GM and of WM, and the T1's maximum."""
    t = load_template()
    labels = _labels(t.gm, t.wm, 0.5)
    csf = (t.t1 > 0) & (labels == 0)
    return (
        float(np.median(t.t1[csf])),
        float(np.median(t.t1[labels == 1])),
        float(np.median(t.t1[labels == 2])),
        float(t.t1.max()),
    )


def draw_contrast(rng: np.random.Generator, recipe: SynthRecipe | None = None) -> dict[int, tuple[float, float]]:
    """Tissue class -> (mean, sigma), in units of the brightest mean; BRAIN's pair is GM's, WM is class -1."""
    r = recipe or SynthRecipe()
    if rng.random() < r.t1_like_p:  # fat bright, bone dark, CSF dark, WM > GM
        means = {
            CSF: rng.uniform(0.05, 0.4),
            BRAIN: rng.uniform(0.5, 0.82),  # gray matter
            -1: 1.0,  # white matter
            BONE: rng.uniform(0.0, 0.12),
            MARROW: rng.uniform(0.25, 0.9),
            FAT: rng.uniform(0.75, 1.4),
            MUSCLE: rng.uniform(0.3, 0.65),
            SKIN: rng.uniform(0.35, 0.85),
            EYE: rng.uniform(0.03, 0.3),
            NECK: rng.uniform(0.3, 0.7),
        }
    else:
        means = {k: rng.uniform(0.02, 1.0) for k in (CSF, BRAIN, -1, BONE, MARROW, FAT, MUSCLE, SKIN, EYE, NECK)}
        while abs(means[BRAIN] - means[-1]) < r.min_gm_wm_gap:
            means[-1] = rng.uniform(0.02, 1.0)
    top = max(means.values())
    return {k: (v / top, rng.uniform(*r.spread)) for k, v in means.items()}


def render(
    rng: np.random.Generator,
    tissue: np.ndarray,
    t1: np.ndarray,
    contrast: dict[int, tuple[float, float]],
    texture: np.ndarray,
    recipe: SynthRecipe | None = None,
) -> np.ndarray:
    """A float32 image of a plane's tissue classes: brain by a map of its T1, the rest by class."""
    from scipy import ndimage

    r = recipe or SynthRecipe()
    csf, gm, wm, peak = _template_levels()
    knots_in = [0.0, csf, gm, wm, peak]
    knots_out = [contrast[CSF][0] * 0.5, contrast[CSF][0], contrast[BRAIN][0], contrast[-1][0], contrast[-1][0]]
    image = np.zeros(tissue.shape, np.float32)
    brain = tissue == BRAIN
    image[brain] = np.interp(t1[brain], knots_in, knots_out)
    strength = rng.uniform(*r.texture)
    for k, (mean, _) in contrast.items():
        if k in (BRAIN, -1):
            continue
        where = tissue == k
        image[where] = mean * (1 + strength * texture[where])
    sigma = np.zeros(tissue.shape, np.float32)
    for k in (CSF, BONE, MARROW, FAT, MUSCLE, SKIN, EYE, NECK):
        sigma[tissue == k] = contrast[k][1]
    sigma[brain] = 0.5 * (contrast[BRAIN][1] + contrast[-1][1])
    image += sigma * rng.standard_normal(tissue.shape, dtype=np.float32)
    image = np.where(tissue == AIR, 0.0, np.maximum(image, 0.0)).astype(np.float32)
    blur = rng.uniform(*r.blur_px)
    return ndimage.gaussian_filter(image, blur).astype(np.float32) if blur > 0.1 else image
