"""Tests for edgeseg.dicom: series order, rescale, and the LPS->RAS affine, on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edgeseg.dicom import read_dicom_series
from edgeseg.errors import EdgesegError

MR_SMALL = Path(get_testdata_file("MR_small.dcm"))  # 64x64 int16 MR, 0.3125 mm, IOP axial
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run anterior->posterior, columns head->feet
OBLIQUE = (0.0, np.cos(0.3), np.sin(0.3), 0.0, -np.sin(0.3), np.cos(0.3))


def lps_of_voxel(ds: pydicom.Dataset, col: int, row: int) -> np.ndarray:
    """DICOM PS3.3 C.7.6.2.1.1 for one pixel of one file, written out independently."""
    ipp = np.array(ds.ImagePositionPatient, float)
    iop = np.array(ds.ImageOrientationPatient, float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    return ipp + iop[:3] * col_spacing * col + iop[3:] * row_spacing * row


@pytest.mark.parametrize("iop", [AXIAL, SAGITTAL, OBLIQUE], ids=["axial", "sagittal", "oblique"])
def test_series_affine_places_every_slice_like_the_standard(
    tmp_path: Path, dicom_series_factory, iop
) -> None:
    paths = dicom_series_factory(tmp_path / "s", iop=iop)
    series = read_dicom_series(tmp_path / "s", tuple(paths))
    assert series.raw.shape == (64, 64, 4)  # (column, row, slice)
    for path in paths:
        ds = pydicom.dcmread(path)
        k = int(ds.pixel_array[0, 0]) // 100  # which slice this file is
        assert np.array_equal(series.raw[:, :, k], ds.pixel_array.T)
        for col, row in [(0, 0), (63, 0), (5, 40)]:
            ras = series.affine @ np.array([col, row, k, 1.0])
            expected = lps_of_voxel(ds, col, row) * np.array([-1, -1, 1])
            assert np.allclose(ras[:3], expected, atol=1e-4)
    assert series.voxel_ml == pytest.approx(0.3125 * 0.3125 * 2.0 / 1000)


def test_single_file_matches_nibabel_in_plane() -> None:
    import warnings

    ds = pydicom.dcmread(MR_SMALL)
    series = read_dicom_series(MR_SMALL, (MR_SMALL,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM readers experimental
        from nibabel.nicom.dicomwrappers import wrapper_from_data

        lps_nib = wrapper_from_data(ds).affine  # nibabel indexes (row, column)
    ras_nib = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_nib
    assert np.allclose(series.affine[:3, 0], ras_nib[:3, 1])  # our i is the column index
    assert np.allclose(series.affine[:3, 1], ras_nib[:3, 0])
    assert np.allclose(series.affine[:3, 3], ras_nib[:3, 3])
    assert abs(series.affine[2, 2]) == pytest.approx(float(ds.SliceThickness))


def test_rescale_is_applied(tmp_path: Path, dicom_series_factory) -> None:
    paths = dicom_series_factory(tmp_path / "s", slopes=[(2.0, -1.0)] * 4)
    series = read_dicom_series(tmp_path / "s", tuple(paths))
    assert (series.slope, series.inter) == (2.0, -1.0)
    mixed = dicom_series_factory(tmp_path / "m", slopes=[(1.0, 0.0), (2.0, 0.0), (1.0, 5.0), (1.0, 0.0)])
    series = read_dicom_series(tmp_path / "m", tuple(mixed))
    assert (series.slope, series.inter) == (1.0, 0.0) and series.raw.dtype == np.float32
    assert series.raw[0, 0, 1] == 2 * pydicom.dcmread(MR_SMALL).pixel_array[0, 0] // 100 + 200


def test_no_geometry_falls_back_to_instance_number(
    tmp_path: Path, dicom_series_factory
) -> None:
    paths = dicom_series_factory(tmp_path / "s", instances=[4, 3, 2, 1])
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    series = read_dicom_series(tmp_path / "s", tuple(paths))
    assert [int(series.raw[0, 0, k]) // 100 for k in range(4)] == [3, 2, 1, 0]
    assert series.notes and "InstanceNumber" in series.notes[0]


BAD_SERIES = [  # make_series arguments, words in the error
    ({"positions": [np.zeros(3)] * 4}, "share one position"),
    ({"positions": [np.array([0, 0, z]) for z in (0.0, 2.0, 4.0, 9.0)]}, "uneven slice spacing"),
    ({"uid": "1.2.3.4"}, "2 DICOM series"),
]


@pytest.mark.parametrize(("kwargs", "words"), BAD_SERIES)
def test_bad_series(tmp_path: Path, dicom_series_factory, kwargs: dict, words: str) -> None:
    paths = dicom_series_factory(tmp_path / "s", **kwargs)
    with pytest.raises(EdgesegError, match=words):
        read_dicom_series(tmp_path / "s", tuple(paths))


@pytest.mark.parametrize("name", ["MR_truncated.dcm"])
def test_broken_pydicom_files(name: str) -> None:
    path = Path(get_testdata_file(name))
    with pytest.raises(EdgesegError, match="pixel data of 8,130 bytes cannot hold that"):
        read_dicom_series(path, (path,))


def test_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"hello")
    with pytest.raises(EdgesegError, match="not a DICOM file"):
        read_dicom_series(tmp_path / "x.dcm", (tmp_path / "x.dcm",))
