"""Tests for edgeseg.io.outputs: atomic writes, label geometry, output-path safety."""

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
from edgeseg.io.outputs import label_nifti, read_labels, safe_output_path


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
EXAMPLE = Path(__file__).parents[2] / "export" / "example" / "mni152_t1_axial_slab.nii.gz"
EDGESEG = Path(sys.executable).parent / "edgeseg"


def infer(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EDGESEG), "infer", *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory, env_without) -> Path:  # noqa: ANN001
    """The shipped model on the example MNI152 slab (197x233x5, 1 mm), default options, torch blocked."""
    root = tmp_path_factory.mktemp("example")
    proc = infer(EXAMPLE, "--out", root / "out", env=env_without(root / "shim", "torch"))
    assert proc.returncode == 0, proc.stderr
    return root / "out"


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory: pytest.TempPathFactory, env_without, mni_dicom_factory) -> Path:  # noqa: ANN001
    """The shipped model on a 7-slice MNI152 MR series (DICOM), default options, torch blocked."""
    root = tmp_path_factory.mktemp("dicom")
    mni_dicom_factory(root / "t1", range(84, 91), 3, "T1 MNI")
    proc = infer(root / "t1", "--out", root / "out", "--format", "nifti", env=env_without(root / "shim", "torch"))
    assert proc.returncode == 0, proc.stderr
    return root / "out"


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


def class_pixels(mosaic: np.ndarray) -> list[int]:
    """Pixels of ``mosaic`` tinted in each class's colour, classes 1 and 2.

    A labelled pixel is 0.55 grey + 0.45 colour, so its channel differences are 0.45 times the
    colour's, whatever the grey (truncated to uint8: one level either way); grey has none.
    """
    from edgeseg.io.outputs import PALETTE

    rgb = mosaic.astype(np.int64)
    diffs = np.stack([rgb[..., 0] - rgb[..., 2], rgb[..., 1] - rgb[..., 2]], -1)
    counts = []
    for colour in PALETTE[1:3]:
        want = 0.45 * np.array([colour[0] - colour[2], colour[1] - colour[2]])
        counts.append(int((np.abs(diffs - want) <= 1.5).all(-1).sum()))
    return counts


# (run, labels file, slices, (rows, columns) of a tile: 233x197 1 mm pixels scaled up to 256 rows
# (edgeseg.io.mosaic.MIN_TILE_PX), tiles per row)
MOSAICS = [
    ("example_run", "mni152_t1_axial_slab", 5, (256, 216), 3),  # anterior at the top
    ("dicom_run", "t1", 7, (256, 216), 3),  # the acquisition plane: rows posterior, as stored
]


@pytest.mark.parametrize(("run", "name", "slices", "tile", "per_row"), MOSAICS, ids=["nifti", "dicom"])
def test_volumes_get_a_mosaic_of_every_slice_with_the_labels_and_a_legend(
    request: pytest.FixtureRequest, run: str, name: str, slices: int, tile: tuple[int, int], per_row: int
) -> None:
    """Written by default for a volume, atomically and recorded: a valid PNG whose tiles show
    every slice, every labelled voxel tinted in its class's colour, and a swatch per class."""
    import hashlib
    import json

    from PIL import Image

    from edgeseg.io.outputs import PALETTE

    out = request.getfixturevalue(run)
    path = out / f"{name}_overlay.png"
    with Image.open(path) as img:
        img.verify()  # a whole PNG: checksums and chunks intact
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        mosaic = np.array(img)
    (h, w), rows = tile, -(-slices // per_row)
    assert mosaic.shape == (rows * h + 3 * 18 + 8, per_row * w, 3)  # 2 classes and the plane's line
    tiles = [mosaic[r * h : (r + 1) * h, c * w : (c + 1) * w] for r in range(rows) for c in range(per_row)]
    assert all(t.any() for t in tiles[:slices]) and not any(t.any() for t in tiles[slices:])
    labels = np.asarray(nib.load(out / f"{name}_seg.nii.gz").dataobj)
    assert labels.shape[2] == slices
    scale = h * w / (233 * 197)  # each voxel drawn as about this many pixels (nearest neighbour)
    drawn = class_pixels(mosaic[: rows * h])
    for c in (1, 2):
        assert drawn[c - 1] == pytest.approx(int((labels == c).sum()) * scale, rel=0.02)
    legend = mosaic[rows * h :]
    for colour in PALETTE[1:3]:
        assert (legend.reshape(-1, 3) == colour).all(1).sum() >= 100  # each class's swatch
    assert class_pixels(legend) == [0, 0] and legend.any()  # swatches are pure colour, names white
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if r["output"] == f"{name}_seg.nii.gz"]
    assert record["overlay_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not [p for p in out.rglob(".*") if p.name != ".edgeseg.lock"]  # no temp left


def test_no_overlay_for_volumes_and_only_asked_for_slices(tmp_path: Path, threshold_onnx: Path) -> None:
    """--no-overlay: no mosaic for a volume; a 2-D .npy gets one only with --overlay."""
    vol = np.random.default_rng(0).integers(0, 3, (20, 18, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol.nii.gz")
    np.save(tmp_path / "slice.npy", vol[..., 0])
    model = ("--model", threshold_onnx)
    assert infer(tmp_path / "vol.nii.gz", tmp_path / "slice.npy", *model, "--out", tmp_path / "a").returncode == 0
    assert sorted(p.name for p in (tmp_path / "a").glob("*_overlay.png")) == ["vol_overlay.png"]
    proc = infer(tmp_path / "vol.nii.gz", *model, "--no-overlay", "--out", tmp_path / "b")
    assert proc.returncode == 0 and (tmp_path / "b" / "vol_seg.nii.gz").is_file(), proc.stderr
    assert list((tmp_path / "b").glob("*_overlay.png")) == []
    assert infer(tmp_path / "slice.npy", *model, "--overlay", "--out", tmp_path / "c").returncode == 0
    assert (tmp_path / "c" / "slice_overlay.png").is_file()


def test_a_damaged_mosaic_is_redone_on_resume(tmp_path: Path, threshold_onnx: Path) -> None:
    vol = np.random.default_rng(1).integers(0, 3, (20, 18, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol.nii.gz")
    args = (tmp_path / "vol.nii.gz", "--model", threshold_onnx, "--out", tmp_path / "out")
    assert infer(*args).returncode == 0
    mosaic = tmp_path / "out" / "vol_overlay.png"
    first = mosaic.read_bytes()
    assert "1 skipped (already done)" in infer(*args).stdout
    mosaic.write_bytes(first[:-20])  # truncated, as by a full disk or a copy cut short
    proc = infer(*args)
    assert proc.returncode == 0 and "overlay damaged" in proc.stderr and "1 done (1 redone)" in proc.stdout
    assert mosaic.read_bytes() == first
    mosaic.unlink()
    assert "1 done" in infer(*args).stdout and mosaic.read_bytes() == first  # a missing one is made again
