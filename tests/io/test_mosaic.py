"""The QC mosaic as a PACS shows the scan: radiological convention, acquisition plane, legible size.

Each case paints a bright block at a known side of the patient (left and anterior, or anterior
and superior) into a real MNI152 T1 scan, runs the installed CLI, and finds the block in the
mosaic's first tile against the brain's coloured labels: a mirrored or transposed tile puts it
on the wrong side.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

from edgeseg.data.demo import _demo_sources
from edgeseg.io.mosaic import MIN_TILE_PX

EDGESEG = Path(sys.executable).parent / "edgeseg"


def infer(*args: str | Path) -> subprocess.CompletedProcess:
    cmd = [str(EDGESEG), "infer", *map(str, args), "--backend", "ort", "--format", "nifti"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def first_tile(mosaic: Path, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.open(mosaic).convert("RGB"), np.int32)[:height, :width]


def centroids(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) centroids of the bright block and of the labels (coloured pixels). The block is
    the brightest thing in the scan, so it stays over 170 in every channel even where the model
    coloured it (white matter's blue tints 255 grey to 179, 221, 245); nothing else reaches that."""
    white = (tile > 170).all(-1)
    coloured = (tile.max(-1) - tile.min(-1)) > 40
    assert white.sum() > 200 and coloured.sum() > 2000, (white.sum(), coloured.sum())
    return np.argwhere(white).mean(0), np.argwhere(coloured).mean(0)


def test_axial_dicom_is_radiological(tmp_path: Path, mni_dicom_factory) -> None:
    """Stored columns run to the patient's left (IOP 1,0,0,...): a PACS shows the patient's
    left on the image's right, and so must the mosaic."""
    (path,) = mni_dicom_factory(tmp_path / "ax", range(88, 89), 1, "T1 ax")
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()  # (rows: anterior to posterior, cols: patient right to left)
    pixels[0:30, 160:197] = 32000  # patient's left, anterior: 2.4 % of the slice, the brightest
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path)
    proc = infer(tmp_path / "ax", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    width = round(197 * MIN_TILE_PX / 233)  # a 197x233 slice of 1 mm pixels, scaled up to 256 rows
    block, brain = centroids(first_tile(tmp_path / "out" / "ax_overlay.png", MIN_TILE_PX, width))
    assert block[1] > brain[1] + 40  # patient left: image right
    assert block[0] < brain[0] - 40  # anterior: top


def test_axial_nifti_in_ras_is_radiological_too(tmp_path: Path) -> None:
    """The MNI152 NIfTI runs left to right (RAS): its mosaic is mirrored into radiological."""
    img = nib.load(_demo_sources()["t1"])
    t1 = np.asarray(img.dataobj, np.float32)[:, :, 86:89].copy()
    t1[0:37, 203:233, :] = 400  # low x: the patient's left; high y: anterior
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(t1, img.affine @ _shift(86)), tmp_path / "in" / "ax.nii.gz")
    proc = infer(tmp_path / "in", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    width = round(197 * MIN_TILE_PX / 233)
    block, brain = centroids(first_tile(tmp_path / "out" / "ax_overlay.png", MIN_TILE_PX, width))
    assert block[1] > brain[1] + 40 and block[0] < brain[0] - 40


def test_sagittal_series_is_shown_sagittal(tmp_path: Path) -> None:
    """Sagittal slices (the array's third axis runs left-right) near-isotropic enough that the
    model slices them axially: the mosaic still shows the sagittal slices, anterior on the left."""
    img = nib.load(_demo_sources()["t1"])
    t1 = np.asarray(img.dataobj, np.float32)[70:110].transpose(1, 2, 0).copy()  # (y, z, x)
    t1[203:233, 159:189, :] = 1000  # anterior and superior
    affine = img.affine[:, [1, 2, 0, 3]] @ _shift(70, axis=2)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(t1, affine), tmp_path / "in" / "sag.nii.gz")
    proc = infer(tmp_path / "in", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    height = round(189 * MIN_TILE_PX / 233)  # 233 mm anterior-posterior across, 189 mm down
    tile = first_tile(tmp_path / "out" / "sag_overlay.png", height, MIN_TILE_PX)
    block, brain = centroids(tile)
    assert block[1] < brain[1] - 40 and block[0] < brain[0] - 30  # anterior: left; superior: top
    rows, cols = np.nonzero((tile.max(-1) - tile.min(-1)) > 40)
    assert np.ptp(cols) > 1.2 * np.ptp(rows)  # a sagittal brain is longer front to back than high


def test_a_64_pixel_scan_gives_a_legible_mosaic(tmp_path: Path) -> None:
    src = tmp_path / "small"
    src.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), src / "MR_small.dcm")  # 64x64, 0.3125 mm
    proc = infer(src, "--out", tmp_path / "out", "--force")  # (DERIVED: triage skips it otherwise)
    assert proc.returncode == 0, proc.stderr
    width, height = Image.open(tmp_path / "out" / "small_overlay.png").size
    assert width >= MIN_TILE_PX and height >= MIN_TILE_PX + 40  # one 256-pixel tile and its legend


def _shift(k: int, axis: int = 2) -> np.ndarray:
    """The affine step that puts voxel 0 of a cut volume where voxel ``k`` was along ``axis``."""
    step = np.eye(4)
    step[axis, 3] = k
    return step


def test_a_volume_that_does_not_place_the_patient_is_shown_as_stored(tmp_path: Path) -> None:
    """qform and sform codes 0: nothing says where the patient's left is, so nothing is flipped
    into a convention and no marker claims one; rows are the array's second axis."""
    img = nib.load(_demo_sources()["t1"])
    t1 = np.asarray(img.dataobj, np.float32)[:, :, 86:89].copy()
    t1[0:37, 203:233, :] = 400  # low i, high j
    unplaced = nib.Nifti1Image(t1, None)
    unplaced.header.set_zooms((1.0, 1.0, 1.0))
    assert unplaced.get_qform(coded=True)[1] == 0 and unplaced.get_sform(coded=True)[1] == 0
    (tmp_path / "in").mkdir()
    nib.save(unplaced, tmp_path / "in" / "raw.nii.gz")
    proc = infer(tmp_path / "in", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    width = round(197 * MIN_TILE_PX / 233)
    mosaic = tmp_path / "out" / "raw_overlay.png"
    block, brain = centroids(first_tile(mosaic, MIN_TILE_PX, width))
    assert block[1] < brain[1] - 40 and block[0] > brain[0] + 40  # i to the right, j down: as stored
    assert Image.open(mosaic).size[1] == 2 * MIN_TILE_PX + 2 * 18 + 8  # 3 tiles in 2 rows; no plane line
