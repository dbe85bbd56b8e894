"""Tests for edgeseg.infer.run and `edgeseg infer`: real files, real sessions, the real CLI."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from edgeseg.errors import EdgesegError
from edgeseg.infer.run import InferConfig, run_inference
from edgeseg.io.dicom import read_dicom_series
from edgeseg.io.scan_files import discover_scans
from edgeseg.runtime.ort_session import PROVIDERS, provider_works

RNG = np.random.default_rng(1)


def expected(x: np.ndarray) -> np.ndarray:
    """What the threshold model answers: classes split at intensities 0.5 and 1.5."""
    return np.where(x < 0.5, 0, np.where(x < 1.5, 1, 2)).astype(np.uint8)


def classes(shape: tuple[int, ...]) -> np.ndarray:
    """Random class indices as intensities, with sub-threshold noise."""
    return RNG.integers(0, 3, shape) + RNG.uniform(-0.3, 0.3, shape)


def cli(*args: str | Path, env: dict | None = None, cwd: Path | None = None):
    """Run the real `edgeseg infer` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "edgeseg.cli", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def make_scans(root: Path, dicom_series_factory) -> dict[str, np.ndarray]:
    """One good scan of every format under root; returns input -> expected labels."""
    (root / "sub").mkdir(parents=True)
    want = {}
    arr = classes((20, 24)).astype(np.float32)
    np.save(root / "slice.npy", arr)
    want["slice_seg.npy"] = expected(arr)
    arr = classes((3, 20, 24)).astype(np.float64)
    np.save(root / "sub" / "stack.npy", arr)
    want["sub/stack_seg.npy"] = expected(arr)
    lab = RNG.integers(0, 3, (18, 30)).astype(np.uint8)
    Image.fromarray(lab).save(root / "gray.png")
    want["gray_seg.png"] = lab
    Image.fromarray(np.repeat(lab[..., None], 3, 2)).save(root / "colour.tif")
    want["colour_seg.png"] = lab
    vol = classes((20, 17, 22)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 40], [1.5, 0, 0, -7], [0, 1.0, 0, 3], [0, 0, 0, 1]])
    img = nib.Nifti1Image(vol, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    nib.save(img, root / "sub" / "vol.nii.gz")
    want["sub/vol_seg.nii.gz"] = expected(vol)
    slopes = [(0.01, 0.0)] * 4  # slice k holds about k: classes 0, 1, 2, 2 by position
    dicom_series_factory(root / "patient" / "series1", slopes=slopes)
    want["patient/series1_seg.nii.gz"] = np.broadcast_to(np.array([0, 1, 2, 2], np.uint8), (64, 64, 4))
    return want


def test_every_format_round_trips(tmp_path: Path, threshold_onnx: Path, dicom_series_factory):
    want = make_scans(tmp_path / "in", dicom_series_factory)
    config = InferConfig(model=threshold_onnx, out=tmp_path / "out", overlay=True, quiet=True)
    report = run_inference([tmp_path / "in"], config)
    assert (report.done, report.failed, report.skipped) == (len(want), 0, 0)
    for rel, labels in want.items():
        path = tmp_path / "out" / rel
        if rel.endswith(".npy"):
            got = np.load(path)
        elif rel.endswith(".png"):
            got = np.array(Image.open(path))
        else:
            got = np.asarray(nib.load(path).dataobj)
        assert got.dtype == np.uint8 and np.array_equal(got, labels), rel
        overlay = Image.open(tmp_path / "out" / (rel.split("_seg")[0] + "_overlay.png"))
        assert overlay.mode == "RGB" and min(overlay.size) >= 16
    assert report.slices == 1 + 3 + 1 + 1 + 22 + 4


def test_nifti_and_dicom_geometry_is_kept(tmp_path: Path, threshold_onnx, dicom_series_factory):
    make_scans(tmp_path / "in", dicom_series_factory)
    run_inference([tmp_path / "in"], InferConfig(model=threshold_onnx, out=tmp_path / "o", quiet=True))
    src, seg = nib.load(tmp_path / "in/sub/vol.nii.gz"), nib.load(tmp_path / "o/sub/vol_seg.nii.gz")
    assert np.array_equal(seg.affine, src.affine)
    for form in ("qform", "sform"):
        got, want = getattr(seg, f"get_{form}")(coded=True), getattr(src, f"get_{form}")(coded=True)
        assert np.array_equal(got[0], want[0]) and got[1] == want[1]
    folder = tmp_path / "in/patient/series1"
    series = read_dicom_series(folder, tuple(folder.iterdir()))
    dcm_seg = nib.load(tmp_path / "o/patient/series1_seg.nii.gz")
    assert np.allclose(dcm_seg.affine, series.affine) and dcm_seg.header["sform_code"] == 1
    rows = {r["output"]: r for r in csv.DictReader(open(tmp_path / "o/summary.csv"))}
    vol = rows["sub/vol_seg.nii.gz"]
    assert float(vol["voxel_ml"]) == pytest.approx(2.0 * 1.5 * 1.0 / 1000)
    n = int(vol["white_matter_voxels"])
    assert float(vol["white_matter_ml"]) == pytest.approx(n * 0.003, abs=1e-3)
    assert rows["slice_seg.npy"]["voxel_ml"] == "" and rows["slice_seg.npy"]["provider"]


def make_bad_files(root: Path) -> list[str]:
    """Broken inputs of every kind; returns their names."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.npy").write_bytes(b"")
    np.save(root / "nan.npy", np.full((20, 20), np.nan, np.float32))
    np.save(root / "tiny.npy", np.zeros((20, 12), np.float32))
    np.save(root / "ndim4.npy", np.zeros((2, 2, 20, 20), np.float32))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "cut.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    broken = root / "broken_series"
    broken.mkdir()
    (broken / "x.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage")
    return ["empty.npy", "nan.npy", "tiny.npy", "ndim4.npy", "corrupt.png", "cut.nii.gz", "broken_series"]


def test_bad_files_fail_alone_via_cli(tmp_path: Path, threshold_onnx, dicom_series_factory):
    want = make_scans(tmp_path / "in", dicom_series_factory)
    bad = make_bad_files(tmp_path / "in" / "bad")
    (tmp_path / "in" / "README.txt").write_text("not a scan")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "in").rglob("*")}
    proc = cli(tmp_path / "in", "--model", threshold_onnx, "--out", tmp_path / "out")
    assert proc.returncode == 1
    failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == len(bad)
    for name in bad:
        assert sum(f"bad/{name}" in line for line in failed) == 1, name
    assert f"error: {len(bad)} of {len(bad) + len(want)} scans failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{len(want)} done, {len(bad)} failed, 0 skipped (already done), 1 ignored" in proc.stdout
    assert all((tmp_path / "out" / rel).is_file() for rel in want)
    outputs = {p.name for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert not any(name.split(".")[0] in o for name in bad for o in outputs)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "in").rglob("*")}


def test_rerun_resumes_and_overwrite_redoes(tmp_path: Path, threshold_onnx: Path) -> None:
    for i in range(4):
        np.save(tmp_path / f"s{i}.npy", classes((20, 20)).astype(np.float32))
    config = InferConfig(model=threshold_onnx, out=tmp_path / "out", quiet=True)
    first = run_inference([tmp_path], config)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*_seg.npy")}
    (tmp_path / "out" / "s2_seg.npy").unlink()
    second = run_inference([tmp_path], config)
    assert (first.done, second.done, second.skipped) == (4, 1, 3)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "s2_seg.npy")
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert len(rows) == 4 and all(r["status"] == "done" and r["provider"] for r in rows)
    config.overwrite = True
    assert run_inference([tmp_path], config).done == 4


def test_kill_midway_then_rerun_finishes(tmp_path: Path, threshold_onnx: Path) -> None:
    """A FIFO stalls the run at a known scan; SIGKILL it there, then rerun."""
    src = tmp_path / "in"
    src.mkdir()
    for name in [f"a{i}" for i in range(5)] + [f"z{i}" for i in range(3)]:
        np.save(src / f"{name}.npy", classes((20, 20)).astype(np.float32))
    os.mkfifo(src / "m_stall.npy")  # reading it blocks: the run hangs after a0..a4
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseg.cli", "infer", str(src), "--model", str(threshold_onnx), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while len(list(out.glob("a*_seg.npy"))) < 5 and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished = sorted(p.name for p in out.glob("*_seg.npy"))
    assert finished == [f"a{i}_seg.npy" for i in range(5)]
    assert all(np.load(out / name).shape == (20, 20) for name in finished)
    (src / "m_stall.npy").unlink()
    rerun = cli(src, "--model", threshold_onnx, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    assert "3 done, 0 failed, 5 skipped" in rerun.stdout
    assert len(list(csv.DictReader(open(out / "summary.csv")))) == 8
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_out_inside_input_is_never_ingested(tmp_path: Path, threshold_onnx: Path) -> None:
    np.save(tmp_path / "a.npy", classes((20, 20)).astype(np.float32))
    config = InferConfig(model=threshold_onnx, out=tmp_path / "seg", quiet=True)
    assert run_inference([tmp_path], config).done == 1
    again = run_inference([tmp_path], config)
    assert (again.done, again.skipped, again.failed) == (0, 1, 0)
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [
        "a_seg.npy",
        "a_stats.json",
        "records.jsonl",
        "summary.csv",
    ]


@pytest.mark.parametrize("bad_out", ["same", "parent"])
def test_out_that_would_mix_with_inputs_is_refused(tmp_path: Path, bad_out: str) -> None:
    inputs = tmp_path / "seg" / "in" if bad_out == "parent" else tmp_path
    inputs.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "seg" if bad_out == "parent" else tmp_path
    with pytest.raises(EdgesegError, match="--out"):
        discover_scans([inputs], out)


def test_colliding_outputs_and_unsupported_files(tmp_path: Path, threshold_onnx: Path) -> None:
    lab = RNG.integers(0, 3, (20, 20)).astype(np.uint8)
    Image.fromarray(lab).save(tmp_path / "a.png")
    Image.fromarray(lab).save(tmp_path / "a.tif")
    (tmp_path / "notes.txt").write_text("x")
    config = InferConfig(model=threshold_onnx, out=tmp_path / "o", quiet=True)
    report = run_inference([tmp_path, tmp_path / "notes.txt", tmp_path / "missing.npy"], config)
    messages = [r["message"] for r in report.rows if r["status"] == "failed"]
    assert report.done == 2 and report.failed == 2 and report.ignored == 1
    assert sorted(p.name for p in (tmp_path / "o").glob("*_seg.png")) == ["a.png_seg.png", "a.tif_seg.png"]
    assert any("unsupported file type" in m for m in messages)
    assert any("does not exist" in m for m in messages)


def test_model_problems_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "a.npy", np.zeros((20, 20), np.float32))
    monkeypatch.setattr("edgeseg.SHIPPED_MODEL", tmp_path / "export" / "model.onnx")
    with pytest.raises(EdgesegError, match="run `edgeseg export` or pass --model"):
        run_inference([tmp_path / "a.npy"], InferConfig(out=tmp_path / "o"))
    (tmp_path / "plain.onnx").write_bytes(b"\x08\x07")
    proc = cli(tmp_path / "a.npy", "--model", tmp_path / "plain.onnx", "--out", tmp_path / "o")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "plain.onnx" in proc.stderr


def test_provider_report_and_explicit_gpu(tmp_path: Path, threshold_onnx: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((20, 20), np.float32))
    proc = cli(tmp_path / "a.npy", "--model", threshold_onnx, "--out", tmp_path / "o")
    first = proc.stdout.splitlines()[0]
    expected_provider = next(
        p for p in (PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]) if provider_works(p)
    )
    assert proc.returncode == 0 and first.endswith(f"running on {expected_provider}")
    if provider_works(PROVIDERS["cuda"]):
        pytest.skip("CUDA works here; the no-GPU error path cannot be shown")
    proc = cli(tmp_path / "a.npy", "--model", threshold_onnx, "--out", tmp_path / "o2", "--provider", "cuda")
    assert proc.returncode == 1 and "CUDAExecutionProvider cannot run here" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o2").exists()


def test_real_model_runs_with_torch_unimportable(tmp_path: Path, tiny_onnx: Path, mni_dicom_factory) -> None:
    """The exported U-Net on a 394x394 slice, a NIfTI and a DICOM series (NIfTI + DICOM SEG, QC
    against the ranges its export stored), in a process where torch cannot load."""
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "slice.npy", RNG.normal(100, 20, (394, 394)).astype(np.float32))
    nib.save(nib.Nifti1Image(RNG.normal(100, 20, (40, 48, 3)).astype(np.float32), np.eye(4)), src / "vol.nii.gz")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert probe.returncode != 0  # the blocker really blocks
    mni_dicom_factory(src / "dicom", range(86, 89), 4, "T1")
    proc = cli(src, "--model", tiny_onnx, "--out", tmp_path / "out", "--overlay", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "3 done, 0 failed" in proc.stdout
    assert (tmp_path / "out" / "dicom_seg.dcm").is_file() and (tmp_path / "out" / "dicom_seg.nii.gz").is_file()
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        qc = {Path(r["input"]).name: r["qc"] for r in csv.DictReader(f)}
    assert "no ranges" not in qc["dicom"] and qc["dicom"]  # the export stored ranges, infer judged
    labels = np.load(tmp_path / "out" / "slice_seg.npy")
    assert labels.shape == (394, 394) and labels.dtype == np.uint8 and labels.max() <= 2
    assert nib.load(tmp_path / "out" / "vol_seg.nii.gz").shape == (40, 48, 3)


# --- resampling to the model's pixel spacing ----------------------------------------------
def pixel_board(shape: tuple[int, int], along: str = "both") -> np.ndarray:
    """0.2/1.8 (classes 0/2) alternating every pixel along rows, columns or both.

    Resampled 2x up and back (linear), alternation every pixel is damped to 1 +- 0.8/4
    (both) or 1 +- 0.8/2 (one axis), i.e. class 1; untouched it stays 0/2. Edge pixels,
    where the outside repeats the edge, are damped less: 1 +- 0.6 along one axis.
    """
    i, j = np.indices(shape)
    phase = {"both": i + j, "rows": i, "columns": j}[along]
    return np.where(phase % 2, 1.8, 0.2).astype(np.float32)


def save_nifti(path: Path, vol: np.ndarray, zooms: tuple[float, float, float]) -> nib.Nifti1Image:
    """An LPS-stored volume (x and y flipped) with an offset, qform and sform codes set."""
    affine = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    affine[:3, 3] = (30.0, -12.0, 4.5)
    img = nib.Nifti1Image(vol, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return img


def summary_rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["output"]: r for r in csv.DictReader(open(out / "summary.csv"))}


def test_coarse_scans_are_resampled_to_the_model_spacing(
    tmp_path: Path, threshold_onnx_factory, dicom_series_factory
) -> None:
    """1 mm NIfTI and 0.3125 mm DICOM into a 0.5 mm model: the model sees 0.5 mm slices,
    labels come back on the scan's grid with its shape and affine, without a shift."""
    model = threshold_onnx_factory(tmp_path / "m.onnx", metadata={"edgeseg.pixel_spacing_mm": "0.5"})
    board = np.repeat(pixel_board((24, 20))[..., None], 3, axis=2)
    save_nifti(tmp_path / "in" / "board.nii.gz", board, (1.0, 1.0, 1.0))
    blocks = np.kron(RNG.integers(0, 3, (6, 5, 3)), np.ones((4, 4, 1))).astype(np.float32)
    save_nifti(tmp_path / "in" / "blocks.nii.gz", blocks, (1.0, 1.0, 1.0))
    dicom_series_factory(tmp_path / "in" / "series", slopes=[(0.01, 0.0)] * 4)
    report = run_inference([tmp_path / "in"], InferConfig(model=model, out=tmp_path / "out", quiet=True))
    assert (report.done, report.failed, report.resampled) == (3, 0, 3)
    rows = summary_rows(tmp_path / "out")
    for name in ("board", "blocks"):
        src, seg = nib.load(tmp_path / "in" / f"{name}.nii.gz"), nib.load(tmp_path / "out" / f"{name}_seg.nii.gz")
        assert seg.shape == src.shape and np.array_equal(seg.affine, src.affine)
        assert seg.header["qform_code"] == 1 and seg.header["sform_code"] == 2
        row = rows[f"{name}_seg.nii.gz"]
        assert (row["spacing_mm"], row["model_spacing_mm"], row["resampled"]) == ("1x1", "0.5", "yes")
    assert rows["board_seg.nii.gz"]["model_shape"] == "40x48"  # axial 20x24 at 1 mm, doubled
    assert np.all(np.asarray(nib.load(tmp_path / "out" / "board_seg.nii.gz").dataobj) == 1)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "out" / "blocks_seg.nii.gz").dataobj), expected(blocks))
    assert rows["series_seg.nii.gz"]["model_shape"] == "40x40"  # 64 x 0.3125 mm = 40 x 0.5 mm
    dicom = np.asarray(nib.load(tmp_path / "out" / "series_seg.nii.gz").dataobj)
    assert np.array_equal(dicom, np.broadcast_to(np.array([0, 1, 2, 2], np.uint8), (64, 64, 4)))


def test_anisotropic_pixels_are_resampled_per_axis(tmp_path: Path, threshold_onnx_factory) -> None:
    """0.5 mm rows, 1 mm columns: only the columns are resampled (and damped)."""
    model = threshold_onnx_factory(tmp_path / "m.onnx", metadata={"edgeseg.pixel_spacing_mm": "0.5"})
    for along in ("rows", "columns"):  # stack rows run along -y, columns along -x (LPS file)
        board = pixel_board((20, 24), along).T[::-1, ::-1]  # (x, y) voxel order
        save_nifti(tmp_path / "in" / f"{along}.nii.gz", np.repeat(board[..., None], 2, 2), (1.0, 0.5, 3.0))
    run_inference([tmp_path / "in"], InferConfig(model=model, out=tmp_path / "out", quiet=True))
    rows = summary_rows(tmp_path / "out")
    for along in ("rows", "columns"):
        row = rows[f"{along}_seg.nii.gz"]
        assert (row["spacing_mm"], row["model_shape"], row["resampled"]) == ("0.5x1", "20x48", "yes")
    stays = np.asarray(nib.load(tmp_path / "out" / "rows_seg.nii.gz").dataobj)
    assert np.array_equal(stays, expected(nib.load(tmp_path / "in" / "rows.nii.gz").get_fdata()))
    damped = np.asarray(nib.load(tmp_path / "out" / "columns_seg.nii.gz").dataobj)  # (x, y, z)
    assert np.all(damped[1:-1] == 1) and set(damped[[0, -1]].ravel()) == {0, 2}


def test_no_resampling_without_pixel_size_or_with_the_flag(tmp_path: Path, threshold_onnx_factory) -> None:
    """.npy and PNG have no pixel size, 0.504 mm is within 1 %, and --no-resample is obeyed."""
    model = threshold_onnx_factory(tmp_path / "m.onnx", metadata={"edgeseg.pixel_spacing_mm": "0.5"})
    src = tmp_path / "in"
    board = pixel_board((20, 24))
    src.mkdir()
    np.save(src / "board.npy", board)
    Image.fromarray(expected(board)).save(src / "board.png")
    save_nifti(src / "near.nii.gz", np.repeat(board.T[..., None], 2, 2), (0.504, 0.504, 2.0))
    save_nifti(src / "coarse.nii.gz", np.repeat(board.T[..., None], 2, 2), (1.0, 1.0, 2.0))
    proc = cli(src, "--model", model, "--out", tmp_path / "out", "--no-resample")
    assert proc.returncode == 0, proc.stderr
    assert "--no-resample, slices go in at their own pixel size" in proc.stdout
    assert ", 0 resampled;" in proc.stdout
    rows = summary_rows(tmp_path / "out")
    assert all(r["resampled"] == "no" and r["model_spacing_mm"] == "0.5" for r in rows.values())
    assert rows["board.npy_seg.npy"]["model_shape"] == "20x24" and rows["board.npy_seg.npy"]["spacing_mm"] == ""
    assert rows["coarse_seg.nii.gz"]["model_shape"] == "20x24"  # axial: rows along y
    assert np.array_equal(np.load(tmp_path / "out" / "board.npy_seg.npy"), expected(board))
    coarse = np.asarray(nib.load(tmp_path / "out" / "coarse_seg.nii.gz").dataobj)
    assert np.array_equal(coarse[..., 0], expected(board.T))
    proc = cli(src, "--model", model, "--out", tmp_path / "out2")  # default: resample
    assert proc.returncode == 0, proc.stderr
    assert ", 1 resampled;" in proc.stdout and "resampled to the model's 0.5 mm" in proc.stdout
    rows = summary_rows(tmp_path / "out2")
    assert {k: r["resampled"] for k, r in rows.items()} == {
        "board.npy_seg.npy": "no",
        "board.png_seg.png": "no",
        "near_seg.nii.gz": "no",
        "coarse_seg.nii.gz": "yes",
    }
    assert np.array_equal(np.array(Image.open(tmp_path / "out2" / "board.png_seg.png")), expected(board))


def test_resampling_below_min_size_fails_that_scan_only(tmp_path: Path, threshold_onnx_factory) -> None:
    model = threshold_onnx_factory(tmp_path / "m.onnx", metadata={"edgeseg.pixel_spacing_mm": "1"})
    save_nifti(tmp_path / "in" / "fine.nii.gz", np.zeros((20, 20, 3), np.float32), (0.5, 0.5, 2.0))
    save_nifti(tmp_path / "in" / "coarse.nii.gz", np.ones((12, 12, 2), np.float32), (2.0, 2.0, 4.0))
    report = run_inference([tmp_path / "in"], InferConfig(model=model, out=tmp_path / "out", quiet=True))
    assert (report.done, report.failed) == (1, 1)
    failed = next(r for r in report.rows if r["status"] == "failed")
    assert failed["input"].endswith("fine.nii.gz") and "become 10x10" in failed["message"]
    assert "must be >= 16" in failed["message"]
    coarse = nib.load(tmp_path / "out" / "coarse_seg.nii.gz")  # 12 < 16 natively, 24 at 1 mm
    assert coarse.shape == (12, 12, 2) and np.all(np.asarray(coarse.dataobj) == 1)


def test_dicom_without_pixel_spacing_is_not_resampled_and_has_no_volumes(
    tmp_path: Path, threshold_onnx_factory, dicom_series_factory
) -> None:
    """A guessed 1 mm would resample the slices wrongly and invent mL; both stay unknown,
    also when a later run resumes from the written labels."""
    import pydicom

    model = threshold_onnx_factory(tmp_path / "m.onnx", metadata={"edgeseg.pixel_spacing_mm": "0.5"})
    for path in dicom_series_factory(tmp_path / "in" / "series"):
        ds = pydicom.dcmread(path)
        del ds.PixelSpacing
        ds.save_as(path)
    for run in ("first", "resumed"):
        proc = cli(tmp_path / "in", "--model", model, "--out", tmp_path / "out")
        assert proc.returncode == 0, proc.stderr
        row = summary_rows(tmp_path / "out")["series_seg.nii.gz"]
        assert row["voxel_ml"] == "" and row["gray_matter_ml"] == "", run
        assert int(row["gray_matter_voxels"]) > 0, run
        if run == "first":
            assert "no PixelSpacing" in proc.stderr and ", 0 resampled;" in proc.stdout
            assert (row["resampled"], row["model_shape"]) == ("no", "64x64")
    labels = np.asarray(nib.load(tmp_path / "out" / "series_seg.nii.gz").dataobj)
    assert labels.shape == (64, 64, 4)
