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
from edgeseg.files import atomic_write
from edgeseg.outputs import label_nifti, read_labels, safe_output_path


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
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
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


# --- what a reader looks at: per-class statistics and the QC mosaic -------------------------
EXAMPLE = Path(__file__).parents[1] / "export" / "example" / "mni152_t1_axial_slab.nii.gz"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model on the example MNI152 slab (197x233x5, 1 mm), with --overlay."""
    out = tmp_path_factory.mktemp("example") / "out"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "edgeseg"), "infer", str(EXAMPLE), "--overlay", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_stats_json_has_class_volumes_and_mean_intensities(example_run: Path) -> None:
    import csv
    import json

    stats = json.loads((example_run / "mni152_t1_axial_slab_stats.json").read_text())
    labels = np.asarray(nib.load(example_run / "mni152_t1_axial_slab_seg.nii.gz").dataobj)
    image = nib.load(EXAMPLE).get_fdata()
    with open(example_run / "summary.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    for c, name in enumerate(["background", "gray_matter", "white_matter"]):
        entry = stats["classes"][name]
        assert entry["voxels"] == int((labels == c).sum()) == int(row[f"{name}_voxels"])
        assert entry["ml"] == pytest.approx((labels == c).sum() * 1e-3)  # 1 mm voxels
        assert entry["mean_intensity"] == pytest.approx(image[labels == c].mean(), rel=1e-4)
        assert float(row[f"{name}_mean_intensity"]) == pytest.approx(entry["mean_intensity"], rel=1e-4)
    assert stats["classes"]["white_matter"]["mean_intensity"] > stats["classes"]["gray_matter"]["mean_intensity"]
    assert stats["qc"]["conf_mean"] == float(row["conf_mean"]) and stats["qc"]["verdict"] == row["qc"]
    records = (example_run / "records.jsonl").read_text()
    assert '"output":"mni152_t1_axial_slab_stats.json"' in records


def test_overlay_is_a_mosaic_of_every_slice_with_a_legend(example_run: Path) -> None:
    from PIL import Image

    from edgeseg.outputs import PALETTE

    mosaic = np.array(Image.open(example_run / "mni152_t1_axial_slab_overlay.png"))
    # 5 axial slices of 233 rows (anterior at the top) x 197 columns: 3 x 2 tiles, legend below
    assert mosaic.shape == (2 * 233 + 2 * 18 + 8, 3 * 197, 3)
    tiles = [mosaic[r * 233 : (r + 1) * 233, c * 197 : (c + 1) * 197] for r in range(2) for c in range(3)]
    assert all(t.any() for t in tiles[:5]) and not tiles[5].any()  # five slices, the sixth tile empty
    legend = mosaic[2 * 233 :]
    for colour in PALETTE[1:3]:
        assert (legend.reshape(-1, 3) == colour).all(1).sum() >= 100  # each class's swatch
