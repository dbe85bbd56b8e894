"""Fault matrix: what the installed `edgeseg` does under the faults a user meets (issue 9).

Every case runs the console script in a subprocess, as a user would, and checksums every
input before and after: no fault may modify an input. Sections: inputs that lie about
their size, paths, the output folder, records of finished outputs, concurrent runs,
interrupts and kills (of infer, train and export), and the wording of messages. The model is the threshold model of
conftest (labels = clip(round(x), 0, 2)), so every expected output is known.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from edgeseg.io.dicom_seg import read_dicom_seg

EDGESEG = Path(sys.executable).parent / "edgeseg"  # the console script of this environment
BIG = 60000  # a claimed side: 60000^2 int16 is 7.2 GB


def edgeseg(*args: str | Path, wrap_rss: bool = False, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the installed `edgeseg` with ``args``; ``wrap_rss``: print its peak RSS (kB) last."""
    assert EDGESEG.is_file(), f"{EDGESEG}: console script missing; pip install -e . first"
    cmd = [str(EDGESEG), *map(str, args)]
    if wrap_rss:  # a fresh parent whose only child is edgeseg, so RUSAGE_CHILDREN is its own
        cmd = [
            sys.executable,
            "-c",
            "import resource, subprocess, sys; rc = subprocess.call("
            "sys.argv[1:]); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
            " file=sys.stderr); sys.exit(rc)",
            *cmd,
        ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def slices(root: Path, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` small .npy slices of class-index intensities; returns name -> expected labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    want = {}
    for i in range(n):
        arr = (rng.integers(0, 3, (20, 24)) + rng.uniform(-0.3, 0.3, (20, 24))).astype(np.float32)
        np.save(root / f"s{i:02d}.npy", arr)
        want[f"s{i:02d}_seg.npy"] = np.clip(np.round(arr), 0, 2).astype(np.uint8)
    return want


@pytest.fixture(autouse=True)
def inputs_untouched(tmp_path: Path, checksums):  # noqa: ANN001, ANN201
    """Call it to checksum every file under tmp_path/in; they must be byte-identical at the end."""
    sums: dict[str, str] = {}

    def snapshot() -> None:
        sums.clear()
        sums.update(checksums(tmp_path / "in"))

    yield snapshot
    if sums:
        assert checksums(tmp_path / "in") == sums, "an input was modified"


@pytest.fixture
def src(tmp_path: Path, inputs_untouched) -> Path:  # noqa: ANN001
    """An input folder of 4 slices, checksummed (see inputs_untouched)."""
    root = tmp_path / "in"
    slices(root)
    inputs_untouched()
    return root


def infer(src: Path, out: Path, model: Path, *extra: str | Path, **kw) -> subprocess.CompletedProcess:
    return edgeseg("infer", src, "--model", model, "--out", out, *extra, **kw)


# --- inputs that lie about their size (issue 9, item 4) ------------------------------------
def lying_nifti(path: Path, shape: tuple[int, ...], size: int = 1544, noise: bool = False) -> None:
    """A NIfTI-2 (its dims are int64) of ``size`` bytes whose header claims ``shape`` int16;
    ``noise``: random data (incompressible: only decompressing tells a .nii.gz's real size)."""
    header = nib.Nifti2Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 544
    raw = header.binaryblock + b"\0" * 4
    fill = np.random.default_rng(0).bytes if noise else (lambda n: b"\0" * n)
    data = raw + fill(size - len(raw))
    if path.name.endswith(".gz"):
        path.write_bytes(zlib.compress(data, wbits=31))
    else:
        path.write_bytes(data)


def lying_png(path: Path, side: int) -> None:
    """A valid PNG signature and IHDR claiming ``side`` x ``side`` grey pixels, with 1 row of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1)))
        + chunk(b"IEND", b"")
    )


def lying_dicom(path: Path) -> None:
    """pydicom's real MR_small.dcm (64x64 int16) with Rows and Columns claiming 60000.

    MR_small is DERIVED\\SECONDARY, which series triage skips from its header alone (nothing is
    allocated, so that is safe too); it is made ORIGINAL\\PRIMARY here so that the size check is
    what stops it."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.Rows = ds.Columns = BIG
    ds.save_as(path)


def lying_npy(path: Path, shape: tuple[int, ...]) -> None:
    """A real .npy header claiming ``shape`` float32, followed by 64 bytes of data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(b"\0" * 64)


LIARS = [
    ("big.nii", lambda p: lying_nifti(p, (BIG, BIG, 1)), f"claims {BIG}x{BIG}x1 int16"),
    ("big.nii.gz", lambda p: lying_nifti(p, (BIG, BIG, 1)), f"claims {BIG}x{BIG}x1 int16"),
    (
        "small_lie.nii.gz",
        lambda p: lying_nifti(p, (400, 400, 40), 400 * 400 * 2 + 544, noise=True),
        "decompresses to only",
    ),
    ("big.npy", lambda p: lying_npy(p, (100000, 100000)), "claims 100000x100000 float32"),
    ("bomb.png", lambda p: lying_png(p, BIG), "decompression-bomb limit"),
    ("nearbomb.png", lambda p: lying_png(p, 12000), "decompression-bomb limit"),
    ("big.dcm", lying_dicom, f"claims 1x{BIG}x{BIG} uint16"),
]


@pytest.mark.parametrize(("name", "make", "words"), LIARS, ids=[x[0] for x in LIARS])
def test_lying_header_fails_fast_with_one_line(
    tmp_path: Path, threshold_onnx: Path, inputs_untouched, name: str, make, words: str
) -> None:
    """The claimed size is checked against the file before anything is allocated."""
    good = slices(tmp_path / "in", 1)
    make(tmp_path / "in" / name)
    inputs_untouched()
    proc = infer(tmp_path / "in", tmp_path / "out", threshold_onnx, wrap_rss=True)
    *lines, peak_kb = stderr_lines(proc)
    assert proc.returncode == 1, proc.stderr
    failed = [line for line in lines if line.startswith("FAILED")]
    assert len(failed) == 1 and name in failed[0] and words in failed[0], lines
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert int(peak_kb) < 600_000, f"peak RSS {int(peak_kb) // 1024} MB"  # 7.2 GB before the fix
    assert all((tmp_path / "out" / rel).is_file() for rel in good)  # the others went on


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_lying_npy_in_training_data_is_one_line(
    tmp_path: Path, tiny_dataset, tiny_checkpoint, inputs_untouched, command: str
) -> None:
    """`train --data` / `evaluate --data`: the tutorial layout with one lying image."""
    root = tmp_path / "in"
    shutil.copytree(tiny_dataset[0], root)
    liar = next(iter(sorted((root / "MRIs").glob("*.npy"))))
    lying_npy(liar, (100000, 100000))
    inputs_untouched()
    args = (
        ["train", "--data", root, "--epochs", "1", "--runs-dir", tmp_path / "runs"]
        if command == "train"
        else ["evaluate", tiny_checkpoint, "--data", root]
    )
    proc = edgeseg(*args, wrap_rss=True)
    *lines, peak_kb = stderr_lines(proc)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and liar.name in lines[0] and "claims 100000x100000 float32" in lines[0]
    assert int(peak_kb) < 2_000_000, f"peak RSS {int(peak_kb) // 1024} MB"


# --- paths (item 5) -------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["argument", "inside a folder"])
def test_symlink_loop_is_one_clear_line(tmp_path: Path, threshold_onnx: Path, inputs_untouched, where: str) -> None:
    want = slices(tmp_path / "in", 2)
    loop = (tmp_path / "in" if where == "inside a folder" else tmp_path) / "loop.npy"
    loop.symlink_to(loop.name)  # loop.npy -> loop.npy
    inputs_untouched()
    args = [tmp_path / "in", loop] if where == "argument" else [tmp_path / "in"]
    proc = edgeseg("infer", *args, "--model", threshold_onnx, "--out", tmp_path / "out")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    failed = [line for line in stderr_lines(proc) if line.startswith("FAILED")]
    assert len(failed) == 1 and "loop.npy" in failed[0] and "loops back on itself" in failed[0]
    assert all((tmp_path / "out" / rel).is_file() for rel in want)


# --- the output folder (item 6) -------------------------------------------------------------
UNWRITABLE = ["a file", "under a file"] + ([] if os.geteuid() == 0 else ["read-only folder"])


def unwritable(tmp_path: Path, how: str) -> tuple[Path, str]:
    """An --out that cannot be written, and the words its error must hold."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be\n")
    if how == "a file":
        return blocker, "is a file, not a folder"
    if how == "under a file":
        return blocker / "seg", "a part of this path is a file"
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    return ro, "cannot write there"


@pytest.mark.parametrize("how", UNWRITABLE)
def test_unwritable_out_is_refused_before_any_scan(
    tmp_path: Path, threshold_onnx: Path, src: Path, inputs_untouched, how: str
) -> None:
    inputs_untouched()
    out, words = unwritable(tmp_path, how)
    proc = infer(src, out, threshold_onnx)
    lines = stderr_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert str(out) in lines[0] and words in lines[0]
    assert "done" not in proc.stdout  # refused before the scan loop, not after it
    assert (tmp_path / "blocker").read_text() == "a file where the folder should be\n"


@pytest.mark.parametrize("how", UNWRITABLE)
def test_unwritable_export_out_is_refused_first(tmp_path: Path, tiny_checkpoint: Path, how: str, checksums) -> None:
    out, words = unwritable(tmp_path, how)
    before = checksums(tiny_checkpoint.parent)
    proc = edgeseg("export", tiny_checkpoint, "--out", out, "--no-validate")
    lines = stderr_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert str(out) in lines[0] and words in lines[0]
    assert checksums(tiny_checkpoint.parent) == before  # nothing written beside the checkpoint


# --- records: damaged and stale outputs (item 7) --------------------------------------------
def test_damaged_output_is_redone(tmp_path: Path, threshold_onnx: Path, inputs_untouched) -> None:
    want = slices(tmp_path / "in")
    inputs_untouched()
    out = tmp_path / "out"
    assert infer(tmp_path / "in", out, threshold_onnx).returncode == 0
    good = (out / "s01_seg.npy").read_bytes()
    (out / "s01_seg.npy").write_bytes(b"junk" * 40)
    proc = infer(tmp_path / "in", out, threshold_onnx)
    assert proc.returncode == 0, proc.stderr
    assert "s01.npy: output damaged" in proc.stderr and "1 done (1 redone)" in proc.stdout
    assert "3 skipped (already done)" in proc.stdout
    assert (out / "s01_seg.npy").read_bytes() == good
    assert np.array_equal(np.load(out / "s01_seg.npy"), want["s01_seg.npy"])


def test_changed_input_is_redone(tmp_path: Path, threshold_onnx: Path) -> None:
    slices(tmp_path / "in")
    out = tmp_path / "out"
    assert infer(tmp_path / "in", out, threshold_onnx).returncode == 0
    new = np.full((20, 24), 2.0, np.float32)  # same size on disk: only the hash tells
    np.save(tmp_path / "in" / "s02.npy", new)
    proc = infer(tmp_path / "in", out, threshold_onnx)
    assert proc.returncode == 0, proc.stderr
    assert "s02.npy: input changed" in proc.stderr and "1 done (1 redone)" in proc.stdout
    assert np.array_equal(np.load(out / "s02_seg.npy"), np.full((20, 24), 2, np.uint8))
    again = infer(tmp_path / "in", out, threshold_onnx)
    assert "0 done, 0 failed, 4 skipped (already done)" in again.stdout


def test_overwrite_without_overlay_removes_a_stale_overlay(
    tmp_path: Path, threshold_onnx: Path, src: Path, inputs_untouched
) -> None:
    inputs_untouched()
    out = tmp_path / "out"
    assert infer(src, out, threshold_onnx, "--overlay").returncode == 0
    assert len(list(out.glob("*_overlay.png"))) == 4
    proc = infer(src, out, threshold_onnx, "--overwrite")
    assert proc.returncode == 0 and "4 done" in proc.stdout, proc.stderr
    assert list(out.glob("*_overlay.png")) == []


# --- concurrent runs on one --out (item 8) --------------------------------------------------
def stalled_run(src: Path, out: Path, model: Path, finished: int) -> subprocess.Popen:
    """Start `edgeseg infer` on ``src``, whose FIFO ``m_stall.npy`` blocks it, and wait
    until ``finished`` outputs are there (the run holds --out while it hangs)."""
    os.mkfifo(src / "m_stall.npy")
    proc = subprocess.Popen(
        [str(EDGESEG), "infer", str(src), "--model", str(model), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120  # a bound against hanging, not a timing assertion
    while len(list(out.glob("*_seg.npy"))) < finished and proc.poll() is None:
        assert time.monotonic() < deadline, "the stalled run never got going"
        time.sleep(0.05)
    return proc


def unstall(src: Path, proc: subprocess.Popen) -> tuple[str, str]:
    """Feed the FIFO EOF until the run ends (each open of it waits for a writer); its output."""
    while proc.poll() is None:
        try:
            os.close(os.open(src / "m_stall.npy", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader at this moment
            time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    (src / "m_stall.npy").unlink()
    return out, err


def test_second_run_on_the_same_out_is_refused(tmp_path: Path, threshold_onnx: Path) -> None:
    src = tmp_path / "in"
    slices(src, 3)  # s00..s02 come after the FIFO m_stall.npy, a0 and a1 before it
    for name in ("a0", "a1"):
        np.save(src / f"{name}.npy", np.ones((20, 20), np.float32))
    out = tmp_path / "out"
    first = stalled_run(src, out, threshold_onnx, finished=2)
    second = infer(src, out, threshold_onnx)
    lines = stderr_lines(second)
    assert second.returncode == 1 and len(lines) == 1, second.stderr
    assert f"--out {out}" in lines[0] and f"pid {first.pid}" in lines[0]
    assert "another edgeseg infer" in lines[0]
    stdout, _ = unstall(src, first)
    assert "5 done, 1 failed" in stdout  # the FIFO read as an empty file fails alone
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 6 and not (out / ".edgeseg.lock").exists()


def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path: Path, threshold_onnx: Path, src: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".edgeseg.lock").write_text(f"{dead}\n")
    (out / f".s00_seg.npy.{dead}-0a1b2c3d.edgeseg-tmp.npy").write_bytes(b"half")  # its temp
    proc = infer(src, out, threshold_onnx)
    assert proc.returncode == 0 and "4 done" in proc.stdout, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["records.jsonl", *[f"s{i:02d}_{kind}" for i in range(4) for kind in ("seg.npy", "stats.json")], "summary.csv"]
    )


def test_concurrent_writes_of_one_target_never_collide(tmp_path: Path) -> None:
    """Two writers of the same file: the first still writing when the second has finished.
    With one fixed temp name the second renamed the first's temp away (FileNotFoundError)."""
    from edgeseg.files import atomic_write

    target, second_done, errors = tmp_path / "x_seg.npy", threading.Event(), []

    def slow(tmp: Path) -> None:
        tmp.write_bytes(b"first")
        second_done.wait(30)

    def first() -> None:
        try:
            atomic_write(target, slow)
        except Exception as exc:  # noqa: BLE001  (collected and asserted below)
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    while not list(tmp_path.glob(".x_seg.npy*")):
        time.sleep(0.01)
    atomic_write(target, lambda tmp: tmp.write_bytes(b"second"))
    second_done.set()
    thread.join(30)
    assert errors == [] and target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["x_seg.npy"]


# --- interrupts and kills -------------------------------------------------------------------
def test_ctrl_c_finishes_writes_and_says_how_to_resume(tmp_path: Path, threshold_onnx: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a0", "a1", "a2", "z0"):  # the FIFO m_stall.npy stalls the run after a2
        np.save(src / f"{name}.npy", np.ones((20, 20), np.float32))
    proc = stalled_run(src, out, threshold_onnx, finished=3)
    proc.send_signal(signal.SIGINT)
    _, stderr = unstall(src, proc)
    assert proc.returncode == 130
    assert "interrupted: 3 scan(s) finished in this run" in stderr, stderr
    assert "rerun the same command" in stderr and "Traceback" not in stderr
    assert not [p for p in out.rglob(".*")], "a temp or lock file was left"
    assert {r["output"] for r in csv.DictReader(open(out / "summary.csv"))} == {
        "a0_seg.npy",
        "a1_seg.npy",
        "a2_seg.npy",
    }
    rerun = infer(src, out, threshold_onnx)
    assert rerun.returncode == 0 and "1 done, 0 failed, 3 skipped" in rerun.stdout, rerun.stderr


def formats(root: Path, dicom_series_factory) -> None:
    """One small scan of every format, plus npy slices before and after the FIFO's name."""
    slices(root, 3)
    for i in range(3):
        np.save(root / f"a{i}.npy", np.full((20, 20), i, np.float32))
    Image.fromarray(np.arange(20 * 24, dtype=np.uint8).reshape(20, 24) % 3).save(root / "img.png")
    vol = np.random.default_rng(3).integers(0, 3, (20, 18, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), root / "vol.nii.gz")
    dicom_series_factory(root / "series", slopes=[(0.01, 0.0)] * 4)


def test_kill_9_then_rerun_equals_an_uninterrupted_run(
    tmp_path: Path, threshold_onnx: Path, dicom_series_factory, inputs_untouched, checksums
) -> None:
    """SIGKILL while stalled mid-run, remove the staller, rerun: every output byte-identical."""
    import pydicom

    src = tmp_path / "in"
    formats(src, dicom_series_factory)
    inputs_untouched()
    clean = infer(src, tmp_path / "clean", threshold_onnx, "--overlay")
    assert clean.returncode == 0, clean.stderr
    killed = stalled_run(src, tmp_path / "out", threshold_onnx, finished=3)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    (src / "m_stall.npy").unlink()
    rerun = infer(src, tmp_path / "out", threshold_onnx, "--overlay")
    assert rerun.returncode == 0 and "skipped" in rerun.stdout, rerun.stderr
    outputs = {k: v for k, v in checksums(tmp_path / "out", relative=True).items() if k != "summary.csv"}
    expected = {k: v for k, v in checksums(tmp_path / "clean", relative=True).items() if k != "summary.csv"}
    outputs.pop("records.jsonl", None), expected.pop("records.jsonl", None)
    # A DICOM SEG and SR get a content time on every write: equal in labels and UIDs, not bytes.
    segs = [k for k in expected if k.endswith("_seg.dcm")]
    assert segs and segs == [k for k in outputs if k.endswith("_seg.dcm")]
    for key in segs:
        outputs.pop(key), expected.pop(key)
        assert np.array_equal(read_dicom_seg(tmp_path / "out" / key)[0], read_dicom_seg(tmp_path / "clean" / key)[0])
        report = key.replace("_seg.dcm", "_sr.dcm")
        outputs.pop(report), expected.pop(report)
        uids = [pydicom.dcmread(d / report).SOPInstanceUID for d in (tmp_path / "out", tmp_path / "clean")]
        assert uids[0] == uids[1]
    assert outputs == expected
    assert not [p for p in (tmp_path / "out").rglob(".*")]


# --- messages (item 10) ---------------------------------------------------------------------
def test_failed_rows_name_no_output_and_ignored_files_are_named(
    tmp_path: Path, threshold_onnx: Path, src: Path, inputs_untouched
) -> None:
    (src / "bad.npy").write_bytes(b"not an array")
    for name in ("README.txt", "notes.doc"):
        (src / name).write_text("x")
    inputs_untouched()
    proc = infer(src, tmp_path / "out", threshold_onnx)
    assert proc.returncode == 1
    rows = {Path(r["input"]).name: r for r in csv.DictReader(open(tmp_path / "out" / "summary.csv"))}
    assert rows["bad.npy"]["status"] == "failed" and rows["bad.npy"]["output"] == ""
    assert not (tmp_path / "out" / "bad_seg.npy").exists()
    ignored = next(line for line in proc.stdout.splitlines() if line.startswith("ignored"))
    assert "README.txt" in ignored and "notes.doc" in ignored and "ignored 2 file(s)" in ignored


def cifti(path: Path) -> None:
    from nibabel import cifti2

    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, 1:3, 1:3] = True
    axes = (cifti2.ScalarAxis(["a"]), cifti2.BrainModelAxis.from_mask(mask, affine=np.eye(4)))
    cifti2.Cifti2Image(np.zeros((1, 8), np.float32), header=axes).to_filename(str(path))


def no_preamble(path: Path) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    path.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes()[132:])  # no 'DICM'
    assert pydicom.dcmread(path, force=True).Rows == 64


def jpeg_ls(path: Path) -> None:
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("JPEGLSNearLossless_16.dcm"), path)


MESSAGES = [
    ("surface.dscalar.nii", cifti, "not a NIfTI-1/2 image volume", "AttributeError"),
    ("raw.dcm", no_preamble, "not a DICOM file", "force=True"),
    ("jls.dcm", jpeg_ls, "install one of:", "dependencies:"),
]


@pytest.mark.parametrize(("name", "make", "words", "leak"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_library_text_does_not_leak(
    tmp_path: Path, threshold_onnx: Path, inputs_untouched, name: str, make, words: str, leak: str
) -> None:
    if name == "jls.dcm" and any(shutil.which(x) or _importable(x) for x in ("pylibjpeg", "jpeg_ls", "gdcm")):
        pytest.skip("a JPEG-LS decoder is installed here; the missing-decoder message cannot show")
    (tmp_path / "in").mkdir()
    make(tmp_path / "in" / name)
    inputs_untouched()
    force = ("--force",) if name.endswith(".dcm") else ()  # past triage (MR_small is DERIVED), to the reader
    proc = infer(tmp_path / "in" / name, tmp_path / "out", threshold_onnx, *force)
    # FAILED in the run, or (a DICOM file refused before any scan ran) the one error line
    failed = [line for line in stderr_lines(proc) if line.startswith("FAILED")] or [
        line for line in stderr_lines(proc) if line.startswith("error:")
    ]
    assert proc.returncode == 1 and len(failed) == 1, proc.stderr
    assert words in failed[0] and leak not in proc.stderr
    if name == "jls.dcm":
        assert "pip install 'edgeseg[dicom]'" in failed[0] and "JPEG-LS" in failed[0]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_pydicom_warnings_become_notes_not_stderr(
    tmp_path: Path, threshold_onnx: Path, dicom_series_factory, inputs_untouched
) -> None:
    import pydicom

    paths = dicom_series_factory(tmp_path / "in" / "series", n=2)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.abc"  # not a valid UI value: pydicom warns when it is read
        ds.save_as(path)
    inputs_untouched()
    proc = infer(tmp_path / "in", tmp_path / "out", threshold_onnx)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "warn_and_log" not in proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "series: the reader warned: Invalid value for VR UI" in notes[0]


# --- kill -9 mid-train and mid-export: rerun, then equal to an uninterrupted run ------------
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def kill_when(proc: subprocess.Popen, ready, timeout: float) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; fail if it finished or stalled first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the command finished before it could be killed"
        assert time.time() < deadline, "the command never reached the point to kill it"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "tmp" in p.name or p.name.startswith(".")]


def test_kill_9_mid_train_then_resume_equals_an_uninterrupted_run(tiny_dataset, tmp_path: Path, checksums) -> None:
    import torch

    data, _ = tiny_dataset
    before = checksums(data)
    args = ["train", "--data", str(data), "--epochs", "4", "--patch", "32", "--batch-size", "4", "--seed", "3"]
    run = dict(cwd=tmp_path, capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    clean = subprocess.run([str(EDGESEG), *args, "--name", "clean"], **run)
    assert clean.returncode == 0, clean.stderr

    proc = subprocess.Popen(
        [str(EDGESEG), *args, "--name", "killed"],
        cwd=tmp_path,
        env=ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_when(proc, (tmp_path / "runs" / "killed" / "history.json").exists, timeout=300)
    resumed = subprocess.run([str(EDGESEG), "train", "--resume", str(tmp_path / "runs" / "killed")], **run)
    assert resumed.returncode == 0, resumed.stderr

    for name in ("best.pt", "last.pt"):
        a = torch.load(tmp_path / "runs" / "clean" / name, weights_only=True)
        b = torch.load(tmp_path / "runs" / "killed" / name, weights_only=True)
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key, tensor in a["state_dict"].items():
            assert torch.equal(tensor, b["state_dict"][key]), (name, key)  # bit for bit
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]] == [
            {k: v for k, v in r.items() if k != "seconds"} for r in b["history"]
        ]
    assert not leftovers(tmp_path / "runs")
    assert checksums(data) == before


def test_kill_9_mid_export_then_rerun_equals_an_uninterrupted_export(
    tiny_checkpoint: Path, tmp_path: Path, checksums
) -> None:
    ckpt = tmp_path / "ckpt" / "tiny.pt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_checkpoint, ckpt)
    before = checksums(ckpt, tiny_checkpoint)
    args = [
        "export",
        str(ckpt),
        "--fp16",
        "--int8",
        "--calib",
        "4",
        "--calib-method",
        "minmax",
        "--slices",
        "2",
        "--size-slices",
        "1",
    ]
    run = dict(cwd=tmp_path, capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    clean = subprocess.run([str(EDGESEG), *args, "--out", str(tmp_path / "clean")], **run)
    assert clean.returncode == 0, clean.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [str(EDGESEG), *args, "--out", str(killed)],
        cwd=tmp_path,
        env=ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_when(proc, (killed / "tiny.onnx").exists, timeout=300)  # fp32 written, fp16/int8 still to come
    assert not (killed / "parity.json").exists()
    rerun = subprocess.run([str(EDGESEG), *args, "--out", str(killed)], **run)
    assert rerun.returncode == 0, rerun.stderr

    for name in ("tiny.onnx", "tiny_fp16.onnx", "tiny_int8.onnx"):
        assert (killed / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert (killed / "parity.json").is_file()
    assert not leftovers(killed)
    assert checksums(ckpt, tiny_checkpoint) == before


def test_nothing_to_segment_is_one_line_and_leaves_no_out_folder(tmp_path: Path, threshold_onnx: Path) -> None:
    """The old quickstart command, `edgeseg infer path/to/scans/`, on a fresh machine (item 3)."""
    r = subprocess.run(
        [str(EDGESEG), "infer", "path/to/scans/", "--model", str(threshold_onnx)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert stderr_lines(r) == ["error: path/to/scans: does not exist; nothing to segment"]
    assert list(tmp_path.iterdir()) == []  # no ./segmentations/summary.csv left behind
