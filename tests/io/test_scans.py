"""Tests for edgeseg.io.scans, scan_files and scan_readers: readers, orientation, label writers, atomic writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from edgeseg.errors import EdgesegError
from edgeseg.io.outputs import write_labels
from edgeseg.io.scan_files import kind_of, output_name
from edgeseg.io.scan_readers import default_axis, resample
from edgeseg.io.scans import model_grid, read_scan

RNG = np.random.default_rng(0)
CLASSES = ("background", "gray_matter", "white_matter")


@pytest.mark.parametrize(
    ("name", "kind", "out"),
    [
        ("a.npy", "npy", "a_seg.npy"),
        ("b.PNG", "image", "b_seg.png"),
        ("c.tiff", "image", "c_seg.png"),
        ("d.nii.gz", "nifti", "d_seg.nii.gz"),
        ("e.v2.nii", "nifti", "e.v2_seg.nii.gz"),
        ("f.dcm", "dicom", "f_seg.nii.gz"),
        ("g.txt", None, None),
    ],
)
def test_kind_and_output_name(name: str, kind: str | None, out: str | None) -> None:
    assert kind_of(Path(name)) == kind
    if kind:
        assert output_name(Path(name), kind) == out


@pytest.mark.parametrize("shape", [(20, 24), (3, 20, 24)])
def test_npy_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    arr = RNG.integers(0, 3, shape).astype(np.int16)
    np.save(tmp_path / "s.npy", arr)
    dec = read_scan(tmp_path / "s.npy", "npy")
    assert dec.batch(0, 8, tmp_path).shape == (dec.stack.shape[0], 1, 20, 24)
    write_labels(tmp_path / "o.npy", "npy", dec.restore(dec.stack.astype(np.uint8)), dec, CLASSES)
    out = np.load(tmp_path / "o.npy")
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB"])
def test_image_round_trip_gives_palette_png(tmp_path: Path, mode: str) -> None:
    labels = RNG.integers(0, 3, (18, 22)).astype(np.uint8)
    if mode == "RGB":
        img = Image.fromarray(np.repeat(labels[..., None], 3, axis=2), "RGB")
    else:
        img = Image.fromarray(labels.astype(np.uint16 if mode == "I;16" else np.uint8))
    img.save(tmp_path / "in.png")
    dec = read_scan(tmp_path / "in.png", "image")
    assert np.array_equal(dec.stack[0], labels)
    assert bool(dec.notes) == (mode == "RGB")
    write_labels(tmp_path / "o.png", "image", dec.restore(labels[None]), dec, CLASSES)
    with Image.open(tmp_path / "o.png") as out:
        assert out.mode == "P" and out.getpalette()[3:6] == [230, 159, 0]
        assert np.array_equal(np.array(out), labels)


def _affine(perm: tuple[int, int, int], flips: tuple[int, int, int], zooms=(1.0, 1.0, 1.0)):
    """Voxel axis i runs along world axis perm[i], direction flips[i]."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, (axis, flip) in enumerate(zip(perm, flips, strict=True)):
        affine[axis, i] = flip * zooms[i]
    affine[:3, 3] = (-10, 20, 5)
    return affine


ORIENTATIONS = [((0, 1, 2), (1, 1, 1)), ((0, 1, 2), (-1, -1, 1)), ((2, 0, 1), (1, -1, 1)), ((1, 2, 0), (-1, 1, -1))]


@pytest.mark.parametrize(("perm", "flips"), ORIENTATIONS)
def test_nifti_model_view_is_orientation_independent(tmp_path: Path, perm, flips) -> None:
    """The same anatomy stored in any voxel order gives the same slices, and labels go back."""
    ras = RNG.integers(0, 3, (20, 22, 18)).astype(np.int16)  # RAS-ordered volume
    nib.save(nib.Nifti1Image(ras, _affine((0, 1, 2), (1, 1, 1))), tmp_path / "ras.nii.gz")
    reference = read_scan(tmp_path / "ras.nii.gz", "nifti").stack
    # store it in another voxel order: voxel axis i <- RAS axis perm[i], flipped if -1
    stored = np.transpose(ras, perm)
    for i, flip in enumerate(flips):
        stored = np.flip(stored, i) if flip < 0 else stored
    nib.save(nib.Nifti1Image(stored, _affine(perm, flips)), tmp_path / "other.nii.gz")
    dec = read_scan(tmp_path / "other.nii.gz", "nifti")
    assert np.array_equal(dec.stack, reference)
    assert np.array_equal(dec.restore(np.asarray(dec.stack, np.uint8)), stored)


def test_axial_slices_have_anterior_at_the_top(tmp_path: Path) -> None:
    y_index = np.broadcast_to(np.arange(22)[None, :, None], (20, 22, 18)).astype(np.int16)
    nib.save(nib.Nifti1Image(y_index, np.eye(4)), tmp_path / "v.nii")
    stack = read_scan(tmp_path / "v.nii", "nifti").stack
    assert stack.shape == (18, 22, 20)
    assert stack[0, 0, 0] == 21 and stack[0, -1, 0] == 0  # top row = most anterior


@pytest.mark.parametrize(
    ("shape", "zooms", "perm", "axis"),
    [
        ((40, 40, 40), (1, 1, 1), (0, 1, 2), 2),
        ((40, 40, 40), (1, 1, 1), (1, 2, 0), 1),
        ((40, 40, 40), (5, 1, 1), (0, 1, 2), 0),
        ((64, 64, 1), (0.3, 0.3, 0.8), (0, 1, 2), 2),
        ((30, 8, 30), (1, 1, 1), (0, 1, 2), 1),
    ],
)
def test_default_axis(shape, zooms, perm, axis) -> None:
    assert default_axis(shape, zooms, _affine(perm, (1, 1, 1), zooms), 16) == axis


def test_nifti_scaling_codes_and_4d(tmp_path: Path) -> None:
    raw = RNG.integers(0, 100, (20, 20, 17, 1)).astype(np.int16)
    img = nib.Nifti1Image(raw, _affine((0, 1, 2), (-1, 1, 1), (0.5, 0.5, 2.0)))
    img.header.set_slope_inter(2.0, -5.0)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine @ np.diag([1, 1, 1, 1.0]), code=4)
    nib.save(img, tmp_path / "v.nii.gz")
    dec = read_scan(tmp_path / "v.nii.gz", "nifti")
    loaded = nib.load(tmp_path / "v.nii.gz")
    assert np.allclose(dec.batch(0, 17, tmp_path)[:, 0], dec.stack * 2.0 - 5.0)
    assert dec.voxel_ml == pytest.approx(0.5 * 0.5 * 2.0 / 1000)
    labels = dec.restore(np.zeros(dec.stack.shape, np.uint8) + 2)
    write_labels(tmp_path / "o.nii.gz", "nifti", labels, dec, CLASSES)
    out = nib.load(tmp_path / "o.nii.gz")
    assert out.shape == (20, 20, 17) and np.array_equal(out.affine, loaded.affine)
    assert [int(out.header[k]) for k in ("qform_code", "sform_code")] == [1, 4]
    assert np.asarray(out.dataobj).dtype == np.uint8 and np.all(np.asarray(out.dataobj) == 2)


def _write(path: Path, content: bytes | None = None, array: np.ndarray | None = None) -> Path:
    if array is not None:
        np.save(path, array)
    else:
        path.write_bytes(content or b"")
    return path


def _truncated_nifti(path: Path) -> Path:
    nib.save(nib.Nifti1Image(RNG.random((20, 20, 20)).astype(np.float32), np.eye(4)), path)
    packed = gzip.compress(gzip.decompress(path.read_bytes()))
    path.write_bytes(packed[: len(packed) // 2])
    return path


BAD = [  # file name, how to make it, words in the error
    ("empty.npy", lambda p: _write(p), "not a readable .npy"),
    ("garbage.npy", lambda p: _write(p, b"\x93NUMPY garbage"), "not a readable .npy"),
    ("objects.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "not a readable"),
    ("complex.npy", lambda p: _write(p, array=np.zeros((20, 20), np.complex64)), "unsupported"),
    ("ndim1.npy", lambda p: _write(p, array=np.zeros(400, np.float32)), "expected (H, W)"),
    ("ndim4.npy", lambda p: _write(p, array=np.zeros((1, 1, 20, 20))), "expected (H, W)"),
    ("nan.npy", lambda p: _write(p, array=np.full((20, 20), np.inf, np.float32)), "NaN or Inf"),
    ("small.npy", lambda p: _write(p, array=np.zeros((15, 40), np.float32)), "too small"),
    ("zero.npy", lambda p: _write(p, array=np.zeros((0, 20, 20), np.float32)), "empty scan"),
    ("empty.png", lambda p: _write(p), "not a readable image"),
    ("cut.png", lambda p: _write(p, _png_bytes()[:60]), "not a readable image"),
    ("cut.nii.gz", _truncated_nifti, "is truncated or its header is damaged"),
    ("t4.nii", lambda p: nib.save(nib.Nifti1Image(np.zeros((20, 20, 20, 2)), np.eye(4)), p), "expected a 3-D volume"),
]


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (40, 40)).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("name", "make", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_files_are_one_clear_error(tmp_path: Path, name: str, make, words: str) -> None:
    path = tmp_path / name
    make(path)
    before = path.read_bytes()
    with pytest.raises(EdgesegError) as err:
        dec = read_scan(path, kind_of(path), min_size=16)
        dec.batch(0, len(dec.stack), path)
    assert str(path) in str(err.value) and words in str(err.value)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before  # inputs are never modified


@pytest.mark.parametrize(("axis", "plane"), [(2, "axial"), (1, "coronal"), (0, "sagittal")])
def test_slices_match_the_training_layout(tmp_path: Path, axis: int, plane: str) -> None:
    """A RAS volume sliced here gives exactly the demo set's slices of that plane."""
    from edgeseg.data.demo import _plane_stack  # how the training slices were cut

    vol = RNG.normal(size=(20, 24, 18)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "ras.nii")
    dec = read_scan(tmp_path / "ras.nii", "nifti", axis=axis)
    assert np.array_equal(dec.stack, _plane_stack(vol, plane))


# --- resampling to the model's pixel spacing ----------------------------------------------
@pytest.mark.parametrize(
    ("perm", "flips", "axis", "spacing"),
    [
        ((0, 1, 2), (1, 1, 1), 2, (0.5, 1.0)),
        ((0, 1, 2), (1, 1, 1), 1, (3.0, 1.0)),
        ((0, 1, 2), (1, 1, 1), 0, (3.0, 0.5)),
        ((2, 0, 1), (1, -1, 1), None, (0.5, 1.0)),
    ],
)
def test_spacing_follows_the_slice_plane(tmp_path: Path, perm, flips, axis, spacing) -> None:
    """Stack rows/columns get the mm of the world axes they run along, in any voxel order."""
    ras_mm = (1.0, 0.5, 3.0)  # x, y, z; z is thickest, so the default slices are axial
    zooms = tuple(ras_mm[world] for world in perm)
    shape = tuple((20, 22, 18)[world] for world in perm)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), _affine(perm, flips, zooms)), tmp_path / "v.nii.gz")
    dec = read_scan(tmp_path / "v.nii.gz", "nifti", axis=None if axis is None else perm.index(axis))
    assert dec.spacing == spacing


@pytest.mark.parametrize(
    ("spacing", "shape", "model_mm", "size"),
    [
        ((1.0, 1.0), (20, 24), 0.5, (40, 48)),
        ((0.5, 1.0), (20, 24), 0.5, (20, 48)),
        ((0.3125, 0.3125), (64, 64), 0.5, (40, 40)),
        ((0.504, 0.496), (20, 24), 0.5, None),
        ((0.506, 0.5), (100, 24), 0.5, (101, 24)),
        (None, (20, 24), 0.5, None),
        ((1.0, 1.0), (20, 24), None, None),
    ],
)
def test_model_grid(spacing, shape, model_mm, size) -> None:
    assert model_grid(spacing, shape, model_mm) == size


def test_resample_keeps_the_field_of_view() -> None:
    """Pixel centres map as (i + 0.5) * n / m - 0.5: a ramp up and back is the ramp again.

    Only the edge pixels differ: outside the ramp the edge value is repeated.
    """
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32), (2, 3, 6, 10))
    up = resample(ramp, (12, 20))
    assert up.shape == (2, 3, 12, 20) and up.dtype == np.float32
    assert np.allclose(up[0, 0, 5, 1:-1], (np.arange(1, 19) + 0.5) / 2 - 0.5)
    assert up[0, 0, 5, 0] == 0 and up[0, 0, 5, -1] == 9
    assert np.allclose(resample(up, (6, 10))[..., 1:-1], ramp[..., 1:-1])
    assert np.array_equal(resample(ramp, (6, 10)), ramp)


def test_model_size_is_checked_against_min_size(tmp_path: Path) -> None:
    small_fine = np.zeros((12, 12, 3), np.float32)  # 12 < 16 at 2 mm, 48 at the model's 0.5 mm
    nib.save(nib.Nifti1Image(small_fine, np.diag([2.0, 2.0, 4.0, 1.0])), tmp_path / "coarse.nii")
    dec = read_scan(tmp_path / "coarse.nii", "nifti", min_size=16, model_mm=0.5)
    assert dec.model_size == dec.model_shape == (48, 48)
    assert dec.batch(0, 3, tmp_path, dec.model_size).shape == (3, 1, 48, 48)
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 3), np.float32), np.diag([0.5, 0.5, 2.0, 1.0])), tmp_path / "fine.nii")
    with pytest.raises(EdgesegError) as err:
        read_scan(tmp_path / "fine.nii", "nifti", min_size=16, model_mm=1.0)
    assert str(tmp_path / "fine.nii") in str(err.value)
    assert "become 10x10 at the model's 1 mm" in str(err.value) and "--no-resample" in str(err.value)
    assert read_scan(tmp_path / "fine.nii", "nifti", min_size=16).model_size is None


@pytest.mark.parametrize("name", ["s.npy", "s.png"])
def test_no_pixel_size_no_resampling(tmp_path: Path, name: str) -> None:
    labels = RNG.integers(0, 3, (18, 22)).astype(np.uint8)
    if name.endswith(".npy"):
        np.save(tmp_path / name, labels)
    else:
        Image.fromarray(labels).save(tmp_path / name)
    dec = read_scan(tmp_path / name, kind_of(tmp_path / name), model_mm=0.5)
    assert dec.spacing is None and dec.model_size is None and dec.model_shape == (18, 22)
