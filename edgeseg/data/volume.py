"""The 3-D template behind the demo set: planes at any orientation, and held-out 3-D regions.

The demo slices (:mod:`edgeseg.data.demo`) are axial, coronal and sagittal planes of one 1 mm
volume (nilearn's MNI152 2009a T1 and its gray/white-matter probability maps). This module
knows where every pixel of every demo slice lies in that volume, samples new planes at any
orientation (the oblique-plane augmentation and the robustness report), and defines the
default leakage-free split: balls of the volume whose voxels supervise training in no plane
and no orientation (their pixels are masked out of the loss) and are the only pixels scored.

numpy only (and nibabel to read the template), so the ONNX robustness report stays torch-free.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.data.demo import DEMO_PLANES, DEMO_ZOOM, DemoConfig, _demo_sources, _labels, _plane_stack, _upsample2
from edgeseg.errors import EdgesegError
from edgeseg.metrics import IGNORE

PIXEL_VOXELS = 1.0 / DEMO_ZOOM  # voxels per pixel: planes are sampled at the demo's 0.5 mm


@dataclass(frozen=True)
class Template:
    """The 1 mm template volumes, RAS voxel order (x, y, z)."""

    t1: np.ndarray  # float32 raw intensities, background = 0
    gm: np.ndarray  # float32 gray-matter probability 0..1
    wm: np.ndarray  # float32 white-matter probability 0..1


@functools.cache
def load_template() -> Template:
    """Read the template that ships inside nilearn (the demo set's source), once per process."""
    import nibabel as nib

    vols = {k: np.asarray(nib.load(p).dataobj, dtype=np.float32) for k, p in _demo_sources().items()}
    return Template(vols["t1"] - float(vols["t1"].min()), vols["gm"] / 255.0, vols["wm"] / 255.0)


@dataclass(frozen=True)
class Plane:
    """A grid of pixels in the volume: voxel coordinates ``origin + r * drow + c * dcol``."""

    origin: np.ndarray  # (3,) voxel coordinates of pixel (0, 0)
    drow: np.ndarray  # (3,) voxels per pixel step down a column
    dcol: np.ndarray  # (3,) voxels per pixel step along a row
    shape: tuple[int, int]

    def points(self) -> np.ndarray:
        """Voxel coordinates of every pixel: (H, W, 3) float32."""
        r = np.arange(self.shape[0], dtype=np.float32)[:, None, None]
        c = np.arange(self.shape[1], dtype=np.float32)[None, :, None]
        return (self.origin + r * self.drow + c * self.dcol).astype(np.float32)


def sample(volume: np.ndarray, points: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Trilinear values of ``volume`` at voxel ``points`` (..., 3); outside the volume ``fill``.

    Within half a voxel of the edge the edge value is held (as the demo's upsampling does).
    """
    shape = np.array(volume.shape, dtype=np.float32)
    inside = np.all((points >= -0.5) & (points <= shape - 0.5), axis=-1)
    p = np.clip(points, 0, shape - 1)
    lo = np.minimum(np.floor(p).astype(np.int64), np.array(volume.shape) - 2)
    t = p - lo
    out = np.zeros(points.shape[:-1], dtype=np.float32)
    for corner in range(8):
        bits = [(corner >> k) & 1 for k in range(3)]
        weight = np.ones(points.shape[:-1], dtype=np.float32)
        for k, b in enumerate(bits):
            weight *= t[..., k] if b else 1 - t[..., k]
        out += weight * volume[lo[..., 0] + bits[0], lo[..., 1] + bits[1], lo[..., 2] + bits[2]]
    return np.where(inside, out, np.float32(fill))


def sample_plane(template: Template, plane: Plane, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32) and labels (uint8, the demo's rule) of a plane of the template."""
    pts = plane.points()
    gm, wm = sample(template.gm, pts), sample(template.wm, pts)
    return sample(template.t1, pts), _labels(gm, wm, threshold)


def demo_planes(root: Path, template: Template | None = None) -> list[Plane]:
    """Where each slice of a demo set lies in the template, in the set's sorted order.

    Recomputes the demo builder's crop (centred on each slice's labelled brain) from the
    template and the source indices in ``provenance.json``.
    """
    from edgeseg.data.demo import read_demo_provenance

    record = read_demo_provenance(root)
    config = DemoConfig(**record["parameters"])
    template = template or load_template()
    vols = {"gm": template.gm, "wm": template.wm}
    planes = []
    for plane in DEMO_PLANES:
        stacks = {k: _plane_stack(v, plane) for k, v in vols.items()}
        n_rows = stacks["gm"].shape[1]
        for s in record["source_voxel_index"][plane]:
            gm, wm = (_upsample2(_upsample2(stacks[k][s], 0), 1) for k in ("gm", "wm"))
            rows, cols = np.nonzero(_labels(gm, wm, config.prob_threshold))
            top = (rows.min() + rows.max() + 1) // 2 - config.size // 2
            left = (cols.min() + cols.max() + 1) // 2 - config.size // 2
            planes.append(_stack_plane(plane, s, top, left, n_rows, config.size))
    return planes


def _stack_plane(plane: str, s: int, top: int, left: int, n_rows: int, size: int) -> Plane:
    """The Plane of a demo slice: 0.5 mm pixel (r, c) is stack row (r + top)/2 - 1/4 (flipped)."""
    row0, col0 = top * PIXEL_VOXELS - 0.25, left * PIXEL_VOXELS - 0.25
    unflipped = n_rows - 1 - row0  # _plane_stack puts superior/anterior at the top row
    axes = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}[plane]  # col, row, slice
    origin, drow, dcol = np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)
    origin[axes[0]], origin[axes[1]], origin[axes[2]] = col0, unflipped, s
    drow[axes[1]], dcol[axes[0]] = -PIXEL_VOXELS, PIXEL_VOXELS
    return Plane(origin, drow, dcol, (size, size))


def oblique_plane(
    template: Template, rng: np.random.Generator, max_tilt_deg: float, size: int = 394, brain: np.ndarray | None = None
) -> Plane:
    """A random plane: an axial, coronal or sagittal one tilted by up to ``max_tilt_deg`` about
    both in-plane axes, through a random point of the brain, ``size`` pixels centred on it."""
    brain = brain_voxels(template) if brain is None else brain
    centre = brain[rng.integers(len(brain))].astype(np.float32)
    base = DEMO_PLANES[rng.integers(3)]
    col, row, normal = (
        np.eye(3, dtype=np.float32)[list(a)]
        for a in {"axial": ((0,), (1,), (2,)), "coronal": ((0,), (2,), (1,)), "sagittal": ((1,), (2,), (0,))}[base]
    )
    col, row = col[0], -row[0]
    for axis in (col, row):
        angle = np.deg2rad(rng.uniform(-max_tilt_deg, max_tilt_deg))
        col, row = (rotate(v, axis, angle) for v in (col, row))
    return plane_through(centre, row, col, size)


def plane_through(centre: np.ndarray, row: np.ndarray, col: np.ndarray, size: int = 394) -> Plane:
    """A ``size`` x ``size`` plane at 0.5 mm centred on ``centre``, rows along ``row``."""
    drow, dcol = row * PIXEL_VOXELS, col * PIXEL_VOXELS
    origin = centre - (size - 1) / 2 * (drow + dcol)
    return Plane(origin.astype(np.float32), drow.astype(np.float32), dcol.astype(np.float32), (size, size))


def rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``v`` about the unit ``axis``."""
    axis = axis / np.linalg.norm(axis)
    return (
        v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * np.dot(axis, v) * (1 - np.cos(angle))
    ).astype(np.float32)


def brain_voxels(template: Template) -> np.ndarray:
    """(V, 3) indices of labelled (gray or white matter) voxels."""
    return np.argwhere(_labels(template.gm, template.wm, 0.5) > 0)


# ----------------------------------------------------------------------------- 3-D split


@dataclass(frozen=True)
class Regions:
    """Held-out balls of the template, each wrapped in a gap that neither trains nor scores."""

    centres: np.ndarray  # (K, 3) voxel coordinates (1 mm voxels)
    radius_mm: float  # ball radius
    gap_mm: float  # shell around each ball left out of training: neighbouring voxels are near-duplicates

    def classify(self, plane: Plane) -> np.ndarray:
        """0 = trainable, 1 = held out, 2 = gap, for each pixel of ``plane``: (H, W) uint8."""
        r = np.arange(plane.shape[0], dtype=np.float64)[:, None]
        c = np.arange(plane.shape[1], dtype=np.float64)[None, :]
        d2 = np.full(plane.shape, np.inf)
        for centre in self.centres:  # |o + r drow + c dcol - centre|^2, expanded: (H, W) work per ball
            o = plane.origin.astype(np.float64) - centre
            dr, dc = plane.drow.astype(np.float64), plane.dcol.astype(np.float64)
            d2 = np.minimum(
                d2,
                o @ o
                + r * r * (dr @ dr)
                + c * c * (dc @ dc)
                + 2 * r * (o @ dr)
                + 2 * c * (o @ dc)
                + 2 * r * c * (dr @ dc),
            )
        out = np.zeros(plane.shape, dtype=np.uint8)
        out[d2 <= (self.radius_mm + self.gap_mm) ** 2] = 2
        out[d2 <= self.radius_mm**2] = 1
        return out


@dataclass(frozen=True)
class Slabs:
    """Held-out slabs of the template: voxel index ranges along one axis, one per run of slices."""

    ranges: tuple[tuple[int, float, float], ...]  # (axis, first index - 0.5, last index + 0.5)

    def classify(self, plane: Plane) -> np.ndarray:
        """True for each pixel of ``plane`` whose voxel lies in a held-out slab: (H, W) bool."""
        pts = plane.points()
        out = np.zeros(plane.shape, dtype=bool)
        for axis, lo, hi in self.ranges:
            out |= (pts[..., axis] >= lo) & (pts[..., axis] <= hi)
        return out


def held_out_slabs(planes: list[Plane]) -> Slabs:
    """The voxels of demo slices that do not train (test slabs and their gaps), as slabs.

    A demo slice is one voxel thick along its plane's normal; each slice covers the brain in
    its plane (394 px of 0.5 mm), so a slab is the index range along the normal axis.
    """
    ranges: list[tuple[int, float, float]] = []
    for plane in planes:
        axis = int(np.flatnonzero((plane.drow == 0) & (plane.dcol == 0))[0])
        s = float(plane.origin[axis])
        if ranges and ranges[-1][0] == axis and abs(ranges[-1][2] - (s - 0.5)) <= 1.0:
            ranges[-1] = (axis, ranges[-1][1], s + 0.5)  # extends the previous slab
        else:
            ranges.append((axis, s - 0.5, s + 0.5))
    return Slabs(tuple(ranges))


REGION_COUNT = 4  # held-out balls
REGION_RADIUS_MM = 24.0  # 4 balls of 57.9 mL, each at least MIN_BRAIN_IN_BALL brain
MIN_BRAIN_IN_BALL = 0.6  # share of a ball's voxels that must be gray or white matter
REGION_GAP_MM = 4.0  # a 4 mm shell around each ball trains nothing


def held_out_regions(
    seed: int = 0, count: int = REGION_COUNT, radius_mm: float = REGION_RADIUS_MM, gap_mm: float = REGION_GAP_MM
) -> Regions:
    """``count`` balls centred on seeded random brain voxels, mostly brain, no two touching."""
    brain = brain_voxels(load_template()).astype(np.float32)
    ball = 4 / 3 * np.pi * radius_mm**3
    rng = np.random.default_rng([seed, 3])
    centres: list[np.ndarray] = []
    for _ in range(10_000):
        c = brain[rng.integers(len(brain))]
        if (
            all(np.linalg.norm(c - o) > 2 * (radius_mm + gap_mm) for o in centres)
            and (((brain - c) ** 2).sum(1) <= radius_mm**2).sum() >= MIN_BRAIN_IN_BALL * ball
        ):
            centres.append(c)
            if len(centres) == count:
                return Regions(np.stack(centres), radius_mm, gap_mm)
    raise EdgesegError(f"cannot place {count} held-out balls of {radius_mm} mm in the brain; use fewer")


REGION_TEST_SLICES = 64  # demo slices scored on the held-out regions (evenly over the candidates)
MIN_HELD_PIXELS = 2000  # a scored slice shows at least this many held-out brain pixels (500 mm^2)


def region_split(
    root: Path, masks: list[np.ndarray], seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """The default 3-D split of a demo set: (training masks, test masks, test slice indices)."""
    planes = demo_planes(root)
    if len(planes) != len(masks):
        raise EdgesegError(
            f"{root}: {len(masks)} slices but provenance.json lists {len(planes)};"
            " rebuild it with `edgeseg data demo --force`"
        )
    train, test = region_masks(masks, planes, held_out_regions(seed))
    held = [int(((m > 0) & (m != IGNORE)).sum()) for m in test]
    candidates = [i for i, n in enumerate(held) if n >= MIN_HELD_PIXELS]
    if len(candidates) > REGION_TEST_SLICES:
        step = (len(candidates) - 1) / (REGION_TEST_SLICES - 1)
        candidates = [candidates[round(k * step)] for k in range(REGION_TEST_SLICES)]
    return train, test, candidates


def region_masks(
    masks: list[np.ndarray], planes: list[Plane], regions: Regions
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per plane: (training mask, test mask), each the labels with IGNORE where not used.

    Training masks ignore held-out and gap pixels; test masks keep only held-out pixels.
    """
    train, test = [], []
    for mask, plane in zip(masks, planes, strict=True):
        where = regions.classify(plane)
        train.append(np.where(where == 0, mask, IGNORE).astype(np.uint8))
        test.append(np.where(where == 1, mask, IGNORE).astype(np.uint8))
    return train, test
