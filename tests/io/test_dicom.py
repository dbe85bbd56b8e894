"""Tests for edgeseg.io.dicom: series order, rescale, and the LPS->RAS affine, on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edgeseg.errors import EdgesegError
from edgeseg.io.dicom import read_dicom_series

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
def test_series_affine_places_every_slice_like_the_standard(tmp_path: Path, dicom_series_factory, iop) -> None:
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


def test_no_geometry_falls_back_to_instance_number(tmp_path: Path, dicom_series_factory) -> None:
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


# --- real exports: several series, compressed files, DICOMDIR and non-image objects -------
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import nibabel as nib  # noqa: E402

from edgeseg.io.dicom import group_series  # noqa: E402

EDGESEG = Path(sys.executable).parent / "edgeseg"
TWINS = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]


def edgeseg(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGESEG), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("name", TWINS)
def test_compressed_twins_decode_to_the_same_array(name: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    assert ds.file_meta.TransferSyntaxUID.is_compressed  # really a compressed file
    plain = read_dicom_series(MR_SMALL, (MR_SMALL,))
    twin = read_dicom_series(Path(get_testdata_file(name)), (Path(get_testdata_file(name)),))
    assert np.array_equal(twin.raw, plain.raw) and np.allclose(twin.affine, plain.affine)


def test_compressed_twins_give_the_same_labels(tmp_path: Path, checksums) -> None:
    src = tmp_path / "in"
    for name in ["MR_small.dcm", *TWINS]:  # they share one SeriesInstanceUID: one folder each
        (src / name[:-4]).mkdir(parents=True)
        shutil.copy(get_testdata_file(name), src / name[:-4] / name)
    before = checksums(src)
    proc = edgeseg("infer", src, "--out", tmp_path / "out", "--force")  # MR_small is DERIVED\SECONDARY
    assert proc.returncode == 0, proc.stderr
    assert "4 done, 0 failed" in proc.stdout
    labels = [
        np.asarray(nib.load(tmp_path / "out" / f"{name[:-4]}_seg.nii.gz").dataobj) for name in ["MR_small.dcm", *TWINS]
    ]
    assert labels[0].shape == (64, 64, 1) and len(np.unique(labels[0])) > 1  # a real segmentation
    assert all(np.array_equal(labels[0], other) for other in labels[1:])
    assert checksums(src) == before


def test_a_syntax_no_installed_decoder_handles_says_why() -> None:
    """12-bit JPEG Extended: GDCM declines it (only the GPL libjpeg plugin would decode it)."""
    path = Path(get_testdata_file("JPGExtended.dcm"))
    with pytest.raises(EdgesegError, match=r"cannot decode pixel data \(12-bit JPEG Extended .*dcmdjpeg"):
        read_dicom_series(path, (path,))


def test_missing_decoder_names_the_extra(tmp_path: Path, env_without) -> None:
    """JPEG-LS without its decoders (pyjpegls, gdcm): one line that names the extra."""
    shim = tmp_path / "shim"
    env_without(shim, "gdcm")
    env = env_without(shim, "jpeg_ls")
    twin = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    proc = edgeseg("infer", twin, "--out", tmp_path / "out", "--force", env=env)  # a DERIVED image: triage skips it
    assert proc.returncode == 1
    failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "JPEG-LS" in failed[0] and "pip install 'edgeseg[dicom]'" in failed[0]


def sitk_series(folder: Path, uid: str) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's own reading of one series: (column, row, slice) values and its RAS affine."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    img = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), np.diag([-1.0, -1, 1, 1]) @ lps


def test_interleaved_series_are_split_and_agree_with_simpleitk(tmp_path: Path, mni_dicom_factory) -> None:
    folder = tmp_path / "exam"
    first = mni_dicom_factory(folder, range(86, 92), 1, "T1 mid", names="IM{:04d}.dcm")
    mni_dicom_factory(folder, range(100, 104), 2, "T1 upper", names="IM{:04d}b.dcm")
    grouping = group_series(tuple(folder.iterdir()))
    assert [(g.number, g.description, len(g.files)) for g in grouping.groups] == [
        ("1", "T1 mid", 6),
        ("2", "T1 upper", 4),
    ]
    assert not grouping.skipped and not grouping.failed
    for group in grouping.groups:
        series = read_dicom_series(folder, group.files)
        values, affine = sitk_series(folder, group.uid)
        assert np.allclose(series.raw * series.slope + series.inter, values, atol=1e-3)
        assert np.allclose(series.affine, affine, atol=1e-4)
    # the first series' slice k is file k: order along the normal, not by name or instance
    assert list(read_dicom_series(folder, grouping.groups[0].files).sources) == [(f, 0) for f in first]


def test_echoes_of_one_series_are_separate_volumes(tmp_path: Path, mni_dicom_factory) -> None:
    folder = tmp_path / "me"
    for echo in (1, 2):
        for path in mni_dicom_factory(folder, range(86, 89), 5, "ME", uid="1.2.3.4.5", names=f"E{echo}_{{:02d}}.dcm"):
            ds = pydicom.dcmread(path)
            ds.EchoNumbers = echo
            ds.save_as(path)
    groups = group_series(tuple(folder.iterdir())).groups
    assert [g.split for g in groups] == [(("E", "1"),), (("E", "2"),)]
    assert [g.describe() for g in groups] == ["series 5 'ME' echo 1", "series 5 'ME' echo 2"]


def test_export_folder_skips_non_images_and_runs_each_series(tmp_path: Path, mni_dicom_factory, checksums) -> None:
    """A DICOMDIR, an SR, an RT plan, a SEG and a header-less file beside three series (one
    JPEG 2000-compressed): one output per series, each skipped file named, exit 0."""
    src = tmp_path / "export"
    mni_dicom_factory(src, range(86, 92), 3, "T1 mid", names="IM{:04d}.dcm")
    mni_dicom_factory(src, range(100, 103), 4, "T1 upper", names="IM{:04d}b.dcm")
    shutil.copy(get_testdata_file("MR_small_jp2klossless.dcm"), src / "MR_small_jp2klossless.dcm")  # series 1
    shutil.copy(get_testdata_file("DICOMDIR"), src / "DICOMDIR")
    for name in ("test-SR.dcm", "rtplan.dcm", "liver_1frame.dcm", "no_meta.dcm"):
        shutil.copy(get_testdata_file(name), src / name)
    before = checksums(src)
    proc = edgeseg("infer", src, "--out", tmp_path / "out", "--force")  # MR_small is DERIVED: triage skips it
    assert proc.returncode == 0, proc.stderr
    assert "3 done, 0 failed" in proc.stdout and "5 DICOM set aside" in proc.stdout
    skipped = {
        line.split(": ", 1)[0].removeprefix("skipped "): line.split(": ", 1)[1]
        for line in proc.stdout.splitlines()
        if line.startswith("skipped ")
    }
    assert set(skipped) == {
        str(src / n) for n in ("DICOMDIR", "test-SR.dcm", "rtplan.dcm", "liver_1frame.dcm", "no_meta.dcm")
    }
    assert "DICOMDIR" in skipped[str(src / "DICOMDIR")]
    assert "structured report" in skipped[str(src / "test-SR.dcm")]
    assert "segmentation" in skipped[str(src / "liver_1frame.dcm")]
    assert "not a DICOM file" in skipped[str(src / "no_meta.dcm")]
    assert {p.name for p in (tmp_path / "out").glob("*.nii.gz")} == {
        "export_S1_seg.nii.gz",
        "export_S3_seg.nii.gz",
        "export_S4_seg.nii.gz",
    }
    assert nib.load(tmp_path / "out" / "export_S1_seg.nii.gz").shape == (64, 64, 1)
    assert nib.load(tmp_path / "out" / "export_S4_seg.nii.gz").shape == (197, 233, 3)
    assert checksums(src) == before


@pytest.mark.parametrize("select", ["*upper*", "T1 UPPER", "uid"])
def test_series_option_selects(tmp_path: Path, mni_dicom_factory, select: str) -> None:
    src = tmp_path / "exam"
    mni_dicom_factory(src, range(86, 89), 1, "T1 mid", names="IM{:04d}.dcm")
    upper = mni_dicom_factory(src, range(100, 103), 2, "T1 upper", names="IM{:04d}b.dcm")
    if select == "uid":
        select = str(pydicom.dcmread(upper[0]).SeriesInstanceUID)
    proc = edgeseg("infer", src, "--out", tmp_path / "out", "--series", select)
    assert proc.returncode == 0, proc.stderr
    assert "1 done, 0 failed" in proc.stdout and "not selected by --series" in proc.stdout
    assert [p.name for p in (tmp_path / "out").glob("*.nii.gz")] == ["exam_seg.nii.gz"]
    assert nib.load(tmp_path / "out" / "exam_seg.nii.gz").shape[2] == 3


# --- JPEG baseline and lossless through GDCM (the dicom extra), against other decoders -----
import io  # noqa: E402

from pydicom.encaps import encapsulate, generate_frames  # noqa: E402
from pydicom.pixels.decoders import JPEGBaseline8BitDecoder, JPEGLosslessSV1Decoder  # noqa: E402
from pydicom.uid import JPEGBaseline8Bit, JPEGLosslessSV1  # noqa: E402

# Real third-party files from pydicom-data (the dev extra): 16-bit NM and 8-bit US, both
# JPEG Lossless Process 14 SV1, grayscale. pydicom itself ships no grayscale JPEG baseline.
JPEG_LOSSLESS = ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"]


def pydicom_data_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path, f"{name}: not found; pip install pydicom-data (in edgeseg's dev extra)"
    return Path(path)


def first_frame(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    return next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))


@pytest.mark.parametrize("name", JPEG_LOSSLESS)
def test_jpeg_lossless_decodes_through_gdcm_like_two_other_decoders(name: str) -> None:
    import imagecodecs

    path = pydicom_data_file(name)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert JPEGLosslessSV1Decoder.available_plugins == ("gdcm",)  # the dicom extra's, and no GPL plugin
    ours = read_dicom_series(path, (path,)).raw[:, :, 0].T  # (column, row) -> (row, column)
    stream = first_frame(path)
    for decode in (imagecodecs.jpegsof3_decode, imagecodecs.ljpeg_decode):  # neither is GDCM
        reference = decode(stream)
        assert reference.shape == ours.shape and np.array_equal(ours.astype(np.int64), reference.astype(np.int64))
    assert ours.std() > 10  # an image, not a blank frame


def make_jpeg_baseline_series(folder: Path, uncompressed: Path, mni_dicom_factory) -> list[np.ndarray]:
    """Six MNI152 slices as an 8-bit MR series, JPEG baseline (Pillow, quality 90), with its
    uncompressed twin in ``uncompressed``; returns the 8-bit slices in file order."""
    from PIL import Image

    files = mni_dicom_factory(uncompressed, range(86, 92), 5, "T1 JPEG", names="IM{:03d}.dcm")
    stored = [pydicom.dcmread(f).pixel_array.astype(np.float64) for f in files]
    top = max(s.max() for s in stored)
    folder.mkdir(parents=True)
    slices = []
    for path, values in zip(files, stored, strict=True):
        ds = pydicom.dcmread(path)
        pixels = np.round(values / top * 255).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleSlope = 0.01 * top / 255  # intensities stay those of the int16 series
        ds.PixelData = pixels.tobytes()
        ds.save_as(path)  # the uncompressed 8-bit twin
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=90)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.save_as(folder / path.name, enforce_file_format=True)
        slices.append(pixels)
    return slices


def test_jpeg_baseline_decodes_through_gdcm_like_libjpeg_turbo(tmp_path: Path, mni_dicom_factory) -> None:
    import imagecodecs

    originals = make_jpeg_baseline_series(tmp_path / "jpeg", tmp_path / "plain", mni_dicom_factory)
    files = tuple(sorted((tmp_path / "jpeg").iterdir()))
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert JPEGBaseline8BitDecoder.available_plugins[0] == "gdcm"  # tried first: pillow only without it
    ours = read_dicom_series(tmp_path / "jpeg", files)
    twin = read_dicom_series(tmp_path / "plain", tuple(sorted((tmp_path / "plain").iterdir())))
    assert np.allclose(ours.affine, twin.affine) and ours.slope == twin.slope
    for k, path in enumerate(files):
        decoded = ours.raw[:, :, k].T.astype(np.int64)
        reference = imagecodecs.jpeg8_decode(first_frame(path)).astype(np.int64)  # libjpeg-turbo
        assert np.abs(decoded - reference).max() <= 1  # IDCTs may round one grey level apart
        error = np.abs(decoded - originals[k].astype(np.int64))
        assert error.mean() < 1.5 and error.max() < 40  # lossy, but the same image


def test_jpeg_baseline_series_runs_and_labels_match_its_twin(tmp_path: Path, mni_dicom_factory) -> None:
    make_jpeg_baseline_series(tmp_path / "in" / "jpeg", tmp_path / "in" / "plain", mni_dicom_factory)
    proc = edgeseg("infer", tmp_path / "in", "--out", tmp_path / "out", "--format", "nifti")
    assert proc.returncode == 0, proc.stderr
    assert "2 done, 0 failed" in proc.stdout
    jpeg, plain = (np.asarray(nib.load(tmp_path / "out" / f"{n}_seg.nii.gz").dataobj) for n in ("jpeg", "plain"))
    assert plain.shape == (197, 233, 6) and set(np.unique(plain)) == {0, 1, 2}
    assert (jpeg == plain).mean() > 0.98  # JPEG at quality 90 moves a few boundary voxels


def one_failed_line(proc: subprocess.CompletedProcess) -> str:
    """The run's single FAILED line; exit 1 and no traceback."""
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, proc.stderr
    return failed[0]


def test_jpeg_without_gdcm(tmp_path: Path, env_without, mni_dicom_factory) -> None:
    """Without python-gdcm, JPEG lossless fails in one line naming the extra; JPEG baseline
    still decodes, through Pillow (a core dependency)."""
    env = env_without(tmp_path / "shim", "gdcm")
    lossless = pydicom_data_file("JPGLosslessP14SV1_1s_1f_8b.dcm")
    proc = edgeseg("infer", lossless, "--force", "--out", tmp_path / "out", env=env)
    line = one_failed_line(proc)
    assert str(lossless) in line and "JPEG Lossless" in line and "pip install 'edgeseg[dicom]'" in line
    make_jpeg_baseline_series(tmp_path / "jpeg", tmp_path / "plain", mni_dicom_factory)
    proc = edgeseg("infer", tmp_path / "jpeg", "--out", tmp_path / "out2", "--format", "nifti", env=env)
    assert proc.returncode == 0 and "1 done, 0 failed" in proc.stdout, proc.stderr


def test_12_bit_jpeg_extended_is_refused_in_one_line(tmp_path: Path) -> None:
    path = pydicom_data_file("JPGExtended.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51" and ds.BitsStored == 12
    line = one_failed_line(edgeseg("infer", path, "--force", "--out", tmp_path / "out"))
    assert line.startswith(f"FAILED {path}: cannot decode pixel data (12-bit JPEG Extended (Process 4)")
    assert "GPL-3 pylibjpeg-libjpeg" in line and "dcmdjpeg" in line
