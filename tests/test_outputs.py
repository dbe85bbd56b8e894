"""Tests for edgeseg.outputs: atomic writes, label geometry, output-path safety."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.outputs import atomic_write, label_nifti, read_labels, safe_output_path


def _affine(perm: tuple[int, int, int], flips: tuple[int, int, int]) -> np.ndarray:
    """Voxel axis i runs along world axis perm[i], direction flips[i]."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, (axis, flip) in enumerate(zip(perm, flips, strict=True)):
        affine[axis, i] = flip
    return affine


@pytest.mark.parametrize("rel", ["../escape_seg.npy", "/etc/x_seg.npy", "a/../../x_seg.npy", "link/x"])
def test_output_paths_cannot_escape(tmp_path: Path, rel: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)  # a symlink inside out pointing outside it
    with pytest.raises(EdgesegError, match="(escape|outside) --out"):
        safe_output_path(out, Path(rel))
    assert safe_output_path(out, Path("sub/x_seg.npy")) == out / "sub" / "x_seg.npy"


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x_seg.nii.gz"
    target.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (target.parent / f".x_seg.nii.gz.{dead}-0a1b2c3d.edgeseg-tmp.nii.gz").write_bytes(b"half")  # killed
    (target.parent / ".x_seg.nii.gz.edgeseg-tmp.nii.gz").write_bytes(b"half")  # by an older edgeseg
    alive = target.parent / f".x_seg.nii.gz.{os.getppid()}-0a1b2c3d.edgeseg-tmp.nii.gz"
    alive.write_bytes(b"being written")  # by a live process: not ours to remove

    def explode(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert list(target.parent.iterdir()) == [alive]
    alive.unlink()
    atomic_write(target, lambda tmp: tmp.write_bytes(b"ok"))
    assert [p.name for p in target.parent.iterdir()] == ["x_seg.nii.gz"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # readable like any new file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_label_nifti_keeps_template_geometry(tmp_path: Path) -> None:
    template = nib.Nifti2Image(np.zeros((4, 5, 6), np.float32), _affine((1, 0, 2), (1, -1, 1)))
    template.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=2)
    img = label_nifti(np.ones((4, 5, 6), np.uint8), template, 3)
    assert isinstance(img, nib.Nifti2Image)
    assert np.array_equal(img.get_sform(), template.get_sform())
    assert np.array_equal(img.get_qform(), template.get_qform())
    nib.save(img, tmp_path / "l.nii.gz")
    labels, voxel_ml = read_labels(tmp_path / "l.nii.gz")
    assert labels.sum() == 120 and voxel_ml == pytest.approx(0.008)  # pixdim follows the qform
