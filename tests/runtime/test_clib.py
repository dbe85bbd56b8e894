"""libedgeseg and edgeseg-run (csrc/), built once per session by `edgeseg build-c` with -Werror.

On real MRI slices at 394x394, 393x395, 300x394 and 64x64, batch 1 and 3, the program and the
ctypes backend give labels equal byte for byte to OpenVINO's Python API (same file, f32, same
threads) and within the fp32 gate of ONNX Runtime. A second build with AddressSanitizer and
UBSan runs the same sizes and every bad input. Bad inputs go through the real program in a
subprocess: non-zero exit, one line on stderr, no output file left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from edgeseg import SHIPPED_MODEL, SHIPPED_MODEL_DIR
from edgeseg.data.split import fit_to_size
from edgeseg.export.parity import GATES
from edgeseg.runtime.cbuild import CBuild, build_c, why_cannot_build

pytestmark = pytest.mark.skipif(
    why_cannot_build() is not None, reason=f"libedgeseg cannot be built here: {why_cannot_build()}"
)

SIZES = [(394, 394), (393, 395), (300, 394), (64, 64)]
BATCHES = [1, 3]
THREADS = 2
EDGESEG = shutil.which("edgeseg", path=str(Path(sys.executable).parent))
SANITIZER_ENV = {  # a report exits 99, never the program's own 1 or 2
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:exitcode=99",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=99",
    # Leaks inside OpenVINO's own TBB (not ours) are suppressed by library name, nothing wider.
    # print_suppressions=0: the summary of what was suppressed is not a report.
    "LSAN_OPTIONS": f"suppressions={(Path(__file__).parents[1] / 'lsan.supp')}:print_suppressions=0",
}
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def clib(tmp_path_factory: pytest.TempPathFactory) -> CBuild:
    """The plain build, through the real `edgeseg build-c` command."""
    build_dir = tmp_path_factory.mktemp("clib")
    assert EDGESEG, "the edgeseg console script is not installed beside this python"
    proc = subprocess.run(
        [EDGESEG, "build-c", "--build-dir", str(build_dir)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    library, program = (Path(line) for line in proc.stdout.split())
    assert library.is_file() and os.access(program, os.X_OK)
    return CBuild(build_dir, library, program, sanitize=False)


@pytest.fixture(scope="session")
def clib_asan(tmp_path_factory: pytest.TempPathFactory) -> CBuild:
    folder = tmp_path_factory.mktemp("clib_asan")
    probe = folder / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    cc = os.environ.get("CC", "cc")
    linked = subprocess.run(
        [cc, "-fsanitize=address,undefined", str(probe), "-o", str(folder / "probe")], capture_output=True, text=True
    )
    if linked.returncode != 0:
        pytest.skip(f"{cc} cannot link ASan/UBSan here ({linked.stderr.strip()[:120]}); install libasan and libubsan")
    built = build_c(folder / "build", sanitize=True)
    linked = subprocess.run(["ldd", str(built.program)], capture_output=True, text=True).stdout
    assert "libasan" in linked and "libubsan" in linked, linked  # really instrumented
    return built


@pytest.fixture(scope="session")
def slices(tiny_dataset: tuple[Path, list[str]]) -> list[np.ndarray]:
    """Three real 394x394 MRI slices, one per plane of the demo set."""
    images = sorted((tiny_dataset[0] / "MRIs").glob("*.npy"))
    return [np.load(images[i]).astype(np.float32) for i in (2, 10, 18)]


def make_stack(slices: list[np.ndarray], h: int, w: int, n: int) -> np.ndarray:
    """``n`` real slices centre-cropped or edge-padded to ``h`` x ``w``: (n, h, w) float32."""
    return np.stack([fit_to_size(s, np.zeros(s.shape, np.uint8), h, w)[0] for s in slices[:n]])


@pytest.fixture(scope="session", params=["shipped", "tiny"])
def model(request: pytest.FixtureRequest) -> Path:
    """The shipped export/model.onnx and a freshly exported tiny U-Net."""
    return SHIPPED_MODEL if request.param == "shipped" else request.getfixturevalue("tiny_onnx")


def python_openvino(path: Path, threads: int = THREADS):  # noqa: ANN201
    """OpenVINO's Python API with the settings libedgeseg uses: labels of (N, H, W) float32."""
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(
        str(path),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads},
    )
    request, labels = compiled.create_infer_request(), compiled.output("labels")
    return lambda x: np.array(request.infer({"image": x[:, None]})[labels])


@pytest.fixture(scope="session")
def reference(model: Path):  # noqa: ANN201
    return python_openvino(model)


@pytest.fixture(scope="session")
def cmodel(clib: CBuild, model: Path):  # noqa: ANN201
    from edgeseg.runtime.cbackend import CModel

    with CModel(model, THREADS, library=clib.library) as opened:
        yield opened


def run_program(
    program: Path,
    *args: str | Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """``program args`` in a subprocess; ``prefix`` runs it under a tool (valgrind)."""
    return subprocess.run(
        [*prefix, str(program), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def segment_file(
    program: Path, model: Path, x: np.ndarray, tmp: Path, *options: str, env: dict[str, str] | None = None
) -> np.ndarray:
    """Labels from `edgeseg-run` on ``x`` saved as .npy."""
    np.save(tmp / "in.npy", x)
    proc = run_program(program, "--threads", THREADS, *options, model, tmp / "in.npy", tmp / "out.npy", env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return np.load(tmp / "out.npy")


def ort_labels(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["labels"], {"image": x[:, None]})[0]


# ----------------------------------------------------------------------------- equality


def test_every_compile_had_warnings_as_errors(clib: CBuild) -> None:
    commands = json.loads((clib.build_dir / "compile_commands.json").read_text())
    sources = {Path(c["file"]).name for c in commands}
    assert {"edgeseg.c", "onnx_meta.c", "edgeseg_run.c", "npy.c"} <= sources
    for c in commands:
        assert {"-Wall", "-Wextra", "-Werror", "-std=c11"} <= set(c["command"].split()), c["command"]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("h,w", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_equal_to_python_openvino_and_ort(
    clib: CBuild,
    cmodel,
    reference,
    model: Path,  # noqa: ANN001
    slices: list[np.ndarray],
    tmp_path: Path,
    h: int,
    w: int,
    batch: int,
) -> None:
    x = make_stack(slices, h, w, batch)
    expected = reference(x)
    assert expected.shape == (batch, h, w) and len(np.unique(expected)) > 1  # a real segmentation
    program = segment_file(clib.program, model, x, tmp_path, "--batch", str(batch))
    np.testing.assert_array_equal(program, expected)
    assert program.dtype == np.uint8 and program.shape == (batch, h, w)
    np.testing.assert_array_equal(cmodel.segment(x), expected)
    agreement = float(np.mean(expected == ort_labels(model, x)))
    assert agreement >= GATES["fp32"].min_agreement, f"{agreement:.6f} of labels agree with ORT"


def test_program_streams_batches_and_keeps_a_2d_slice_2d(
    clib: CBuild,
    cmodel,
    slices: list[np.ndarray],  # noqa: ANN001
    model: Path,
    tmp_path: Path,
) -> None:
    x = make_stack(slices, 97, 131, 3)
    streamed = segment_file(clib.program, model, x, tmp_path, "--batch", "2")  # 2 slices, then 1
    np.testing.assert_array_equal(streamed, np.concatenate([cmodel.segment(x[:2]), cmodel.segment(x[2:])]))
    one = segment_file(clib.program, model, x[1], tmp_path)
    assert one.shape == (97, 131)
    np.testing.assert_array_equal(one, cmodel.segment(x[1]))


@pytest.mark.parametrize("dtype", ["float64", "int16", "uint8", "uint16"])
def test_program_converts_other_dtypes_like_numpy(
    clib: CBuild,
    reference,
    model: Path,  # noqa: ANN001
    slices: list[np.ndarray],
    tmp_path: Path,
    dtype: str,
) -> None:
    x = make_stack(slices, 394, 394, 2)
    typed = (x * 1.37 + 0.3).astype(dtype) if dtype == "float64" else np.clip(x, 0, 255).astype(dtype)
    labels = segment_file(clib.program, model, typed, tmp_path, "--batch", "2")
    np.testing.assert_array_equal(labels, reference(typed.astype(np.float32)))


def test_shapes_compiled_per_shape_keep_their_answers(cmodel, reference, slices: list[np.ndarray]) -> None:  # noqa: ANN001
    """One handle meets 4 shapes, back and forth: each new shape is compiled (2 kept), each answer
    equals OpenVINO's Python API on the file's dynamic shapes."""
    assert cmodel.backend.endswith(", static shapes")
    stacks = [make_stack(slices, h, w, n) for h, w, n in ((97, 131, 1), (64, 80, 2), (97, 131, 1), (393, 395, 3))]
    for x in [*stacks, stacks[1], stacks[0]]:  # the last two were evicted: compiled again
        np.testing.assert_array_equal(cmodel.segment(x), reference(x))


def test_dynamic_shapes_compile_once_and_give_the_same_labels(
    clib: CBuild, slices: list[np.ndarray], tmp_path: Path
) -> None:
    from edgeseg.runtime.cbackend import CModel

    x = make_stack(slices, 97, 131, 3)
    with CModel(SHIPPED_MODEL, THREADS, library=clib.library, shapes="dynamic") as dynamic:
        assert dynamic.backend.endswith(", dynamic shapes")
        labels = dynamic.segment(x)
        np.testing.assert_array_equal(dynamic.segment(x[:1]), labels[:1])  # a second shape: no new compile needed
    with CModel(SHIPPED_MODEL, THREADS, library=clib.library) as static:
        np.testing.assert_array_equal(static.segment(x), labels)
    program = segment_file(clib.program, SHIPPED_MODEL, x, tmp_path, "--batch", "2", "--shapes", "dynamic")
    np.testing.assert_array_equal(program, labels)


def test_known_answers_through_the_threshold_model(clib: CBuild, threshold_onnx: Path, tmp_path: Path) -> None:
    """labels = clip(round(x), 0, 2): class indices fed as intensities come back, in place."""
    from edgeseg.runtime.cbackend import CModel

    x = np.random.default_rng(0).integers(0, 3, (2, 17, 23)).astype(np.float32)
    np.testing.assert_array_equal(segment_file(clib.program, threshold_onnx, x, tmp_path), x)
    with CModel(threshold_onnx, 1, library=clib.library) as m:
        np.testing.assert_array_equal(m.segment(x), x)


def test_int8_file_equals_python_openvino(clib: CBuild, slices: list[np.ndarray]) -> None:
    from edgeseg.runtime.cbackend import CModel

    int8 = SHIPPED_MODEL_DIR / "model_int8.onnx"
    x = make_stack(slices, 393, 395, 3)
    with CModel(int8, THREADS, "int8", library=clib.library) as m:
        assert ", f32, " in m.backend  # its float layers: f32, never OpenVINO's bf16 default
        np.testing.assert_array_equal(m.segment(x), python_openvino(int8)(x))


def test_one_handle_per_thread_in_parallel(
    clib: CBuild,
    reference,
    model: Path,  # noqa: ANN001
    slices: list[np.ndarray],
) -> None:
    from edgeseg.runtime.cbackend import CModel

    inputs = [make_stack(slices, h, w, 1) for h, w in SIZES]
    expected = [reference(x) for x in inputs]
    results: dict[int, list[np.ndarray]] = {}

    def work(k: int) -> None:
        with CModel(model, 1, library=clib.library) as m:
            results[k] = [m.segment(x) for x in (inputs if k == 0 else inputs[::-1])]

    workers = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert sorted(results) == [0, 1]
    for got, want in zip(results[0] + results[1][::-1], expected + expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_readme_c_example_compiles_and_segments(clib: CBuild, tmp_path: Path) -> None:
    """The ten lines of docs/clib.md, inside a main(), built with -Werror against the library and run."""
    import re

    repo = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    page = (repo / "docs" / "clib.md").read_text()
    body = re.search(r"```c\n(.*?)```", page, re.S).group(1)
    assert len(body.strip().splitlines()) == 10  # the page says ten lines
    source = tmp_path / "example.c"
    source.write_text(
        f'#include <stdio.h>\n#include <stdlib.h>\n#include "edgeseg.h"\nint main(void) {{\n{body}    return 0;\n}}\n'
    )
    include = Path(__file__).resolve().parents[2] / "csrc" / "include"
    cc = os.environ.get("CC", "cc")
    built = subprocess.run(
        [
            cc,
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            str(source),
            f"-I{include}",
            f"-L{clib.build_dir}",
            "-ledgeseg",
            f"-Wl,-rpath,{clib.build_dir}",
            "-o",
            str(tmp_path / "example"),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    ran = subprocess.run(
        [str(tmp_path / "example")], capture_output=True, text=True, cwd=SHIPPED_MODEL_DIR.parent, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert re.fullmatch(r"centre pixel: (background|gray_matter|white_matter)\n", ran.stdout), ran.stdout


# ----------------------------------------------------------------------------- metadata and refusals


def test_metadata_is_the_files_own(clib: CBuild, model: Path) -> None:
    """Every edgeseg.* entry as onnx reads it and as OpenVINO's rt_info holds it; nothing invented."""
    import openvino as ov

    from edgeseg.artifacts import read_model_info
    from edgeseg.runtime.cbackend import CModel

    info = read_model_info(model)
    framework = ov.Core().read_model(str(model)).get_rt_info()["framework"]
    with CModel(model, THREADS, library=clib.library) as m:
        for key, value in info.metadata.items():
            assert m.metadata(key) == value == framework[key].astype(str), key
        assert m.class_names == info.class_names and m.min_size == info.min_size
        assert m.pixel_spacing_mm == info.pixel_spacing_mm and m.format == "edgeseg-onnx-v1"
        assert m.metadata("edgeseg.no_such_key") is None
        assert m.backend.startswith("OpenVINO ") and m.backend.endswith(", f32, 2 threads, static shapes")


def test_absent_metadata_is_reported_absent(clib: CBuild, threshold_onnx: Path) -> None:
    from edgeseg.runtime.cbackend import CModel

    with CModel(threshold_onnx, 1, library=clib.library) as m:  # the file has no pixel spacing
        assert m.metadata("edgeseg.pixel_spacing_mm") is None and m.pixel_spacing_mm is None
        assert m.metadata("edgeseg.normalization").startswith("none (test model")


def _bf16_on_this_cpu() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_bf16_runs_where_the_cpu_has_it_else_is_refused(clib: CBuild) -> None:
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.cbackend import CModel

    if _bf16_on_this_cpu():
        with CModel(SHIPPED_MODEL, THREADS, "bf16", library=clib.library) as m:
            assert ", bf16, " in m.backend
    else:
        with pytest.raises(EdgesegError, match="no bf16 support.*use f32"):
            CModel(SHIPPED_MODEL, THREADS, "bf16", library=clib.library)


@pytest.mark.parametrize(
    "name,precision,message",
    [
        ("missing.onnx", "f32", "model not found"),
        ("model.onnx", "int8", "int8 needs the int8 QDQ file"),
        ("model_int8.onnx", "f32", "open it with precision int8"),
        ("garbage.onnx", "f32", "not an ONNX protobuf"),
        ("foreign.onnx", "f32", "metadata lacks edgeseg.format"),
    ],
)
def test_open_refuses_with_the_reason(
    clib: CBuild,
    tmp_path: Path,
    threshold_onnx_factory,  # noqa: ANN001
    name: str,
    precision: str,
    message: str,
) -> None:
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.cbackend import CModel

    path = SHIPPED_MODEL_DIR / name if name.startswith("model") else tmp_path / name
    if name == "garbage.onnx":
        path.write_bytes(b"\xff" * 64)
    if name == "foreign.onnx":
        threshold_onnx_factory(path, metadata={"edgeseg.format": None})
    with pytest.raises(EdgesegError, match=message) as caught:
        CModel(path, 1, precision, library=clib.library)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_segment_refuses_slices_below_the_minimum(cmodel) -> None:  # noqa: ANN001
    from edgeseg.errors import EdgesegError

    with pytest.raises(EdgesegError, match="at least 16x16"):
        cmodel.segment(np.zeros((1, 15, 40), np.float32))


EDGESEG_E_NONFINITE = 7  # csrc/include/edgeseg.h


def test_c_api_refuses_nan_and_inf_before_inference(clib: CBuild, threshold_onnx: Path) -> None:
    """edgeseg_segment returns EDGESEG_E_NONFINITE naming the slice, and leaves labels untouched:
    the network would have answered NaN with confident labels (all gray matter, issue 25)."""
    import ctypes

    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.cbackend import CModel, load_library

    lib = load_library(clib.library)
    find = lib.edgeseg_find_nonfinite
    find.restype, find.argtypes = ctypes.c_size_t, [ctypes.c_void_p] + [ctypes.c_size_t] * 3
    f32 = np.finfo(np.float32)
    x = np.tile(np.array([[0, 1], [f32.max, -f32.smallest_subnormal]], np.float32), (4, 1, 1))  # all finite
    assert find(x.ctypes.data, 4, 2, 2) == 4 and find(None, 4, 2, 2) == 0
    negative_nan = np.array([0xFFC00001], np.uint32).view(np.float32)[0]
    for value, at in ((np.nan, 3), (np.inf, 1), (-np.inf, 0), (negative_nan, 2)):
        y = x.copy()
        y[at, 1, 0] = value
        assert find(y.ctypes.data, 4, 2, 2) == at, value
    with CModel(threshold_onnx, 1, library=clib.library) as m:
        y = np.random.default_rng(0).integers(0, 3, (2, 17, 23)).astype(np.float32)
        y[1, 5, 7] = np.nan
        labels = np.full(y.shape, 255, np.uint8)
        assert lib.edgeseg_segment(m._live(), y.ctypes.data, 2, 17, 23, labels.ctypes.data) == EDGESEG_E_NONFINITE
        assert lib.edgeseg_last_error(m._live()) == b"edgeseg_segment: slice 1 holds NaN or Inf; fix or mask the scan"
        assert (labels == 255).all()  # refused before any inference
        with pytest.raises(EdgesegError, match=r"^edgeseg_segment: slice 1 holds NaN or Inf; fix or mask the scan$"):
            m.segment(y)
        y[1, 5, 7] = 2  # the same handle serves the mended stack
        np.testing.assert_array_equal(m.segment(y), y)
        for scalar in (np.float32(3), 3.0):  # once an AttributeError for a plain float
            with pytest.raises(EdgesegError, match=r"array of shape \(\); expected \(H, W\)"):
                m.segment(scalar)


def test_nan_is_named_by_its_slice_in_the_file_across_batches(
    clib: CBuild, threshold_onnx: Path, tmp_path: Path
) -> None:
    """--batch 2 over 5 slices, NaN in slice 3 (the second of its batch): infer's line, exit 1."""
    x = np.random.default_rng(0).integers(0, 3, (5, 17, 23)).astype(np.float32)
    x[3, 16, 22] = np.nan
    np.save(tmp_path / "in.npy", x)
    proc = run_program(clib.program, "--batch", "2", threshold_onnx, tmp_path / "in.npy", tmp_path / "out.npy")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"edgeseg-run: {tmp_path / 'in.npy'}: slice 3 holds NaN or Inf; fix or mask the scan\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]
    x[3, 16, 22] = 1
    np.testing.assert_array_equal(segment_file(clib.program, threshold_onnx, x, tmp_path, "--batch", "2"), x)


def test_an_unwritable_output_fails_before_the_model_is_opened(clib: CBuild, tmp_path: Path) -> None:
    """OUTPUT in a missing folder, and a missing model: the output is what is named, so it was checked first."""
    np.save(tmp_path / "x.npy", SLICE)
    out = tmp_path / "no-such-folder" / "out.npy"
    proc = run_program(clib.program, tmp_path / "missing.onnx", tmp_path / "x.npy", out)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"edgeseg-run: {out}: cannot write it (No such file or directory); check that its folder exists and is"
        " writable\n"
    )


# ----------------------------------------------------------------------------- bad input, sanitizers


def _npy(path: Path, header: str, data: bytes, version: int = 1) -> Path:
    """An NPY file with a hand-written header dict (padded like numpy's) and raw data."""
    size = 10 if version == 1 else 12
    text = header + " " * ((64 - (size + len(header) + 1) % 64) % 64) + "\n"
    length = len(text).to_bytes(2 if version == 1 else 4, "little")
    path.write_bytes(b"\x93NUMPY" + bytes([version, 0]) + length + text.encode() + data)
    return path


def _header(descr: str, shape: tuple[int, ...], fortran: bool = False) -> str:
    return f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"


SLICE = np.zeros((1, 32, 32), np.float32)
BAD_INPUTS = {  # case -> (make the input in a folder, text the one-line error must contain)
    "wrong-dtype": (lambda d: np.save(d / "x.npy", SLICE.astype(np.int32)), "dtype '<i4' is not supported"),
    "complex-dtype": (lambda d: np.save(d / "x.npy", SLICE.astype(np.complex64)), "is not supported"),
    "big-endian": (lambda d: np.save(d / "x.npy", SLICE.astype(">f4")), "big-endian"),
    "fortran-order": (
        lambda d: np.save(d / "x.npy", np.asfortranarray(np.zeros((32, 40), np.float32))),
        "Fortran-order",
    ),
    "lying-header-huge": (
        lambda d: _npy(d / "x.npy", _header("<f4", (100000, 100000, 100000)), b"\0" * 4096),
        "the header promises 4000000000000000 bytes of data, the file holds 4096",
    ),
    "lying-header-overflow": (lambda d: _npy(d / "x.npy", _header("<f4", (2**40, 2**40, 2**40)), b""), "overflows"),
    "lying-header-small": (
        lambda d: _npy(d / "x.npy", _header("<f4", (1, 16, 16)), b"\0" * 4 * 32 * 32, 2),
        "bytes beyond the data the header describes",
    ),
    "truncated-data": (lambda d: (d / "x.npy").write_bytes(_save_bytes(d, SLICE)[:-100]), "truncated"),
    "truncated-header": (
        lambda d: (d / "x.npy").write_bytes(_save_bytes(d, SLICE)[:40]),
        "truncated or corrupt NPY header",
    ),
    "not-npy": (lambda d: (d / "x.npy").write_bytes(b"PK\x03\x04" + b"\0" * 200), "not an NPY file"),
    "bad-version": (
        lambda d: _npy(d / "x.npy", _header("<f4", (1, 32, 32)), SLICE.tobytes(), 9),
        "version 9.0 is not supported",
    ),
    # Shapes, NaN and Inf: refused in `edgeseg infer`'s words (edgeseg/io/scan_readers.py), whole messages.
    "rank-0": (lambda d: np.save(d / "x.npy", np.float32(3)), "array of shape (); expected (H, W) or (D, H, W)"),
    "rank-1": (
        lambda d: np.save(d / "x.npy", np.zeros(64, np.float32)),
        "array of shape (64,); expected (H, W) or (D, H, W)",
    ),
    "rank-4": (
        lambda d: np.save(d / "x.npy", np.zeros((1, 1, 32, 32), np.float32)),
        "array of shape (1, 1, 32, 32); expected (H, W) or (D, H, W)",
    ),
    "empty-stack": (
        lambda d: np.save(d / "x.npy", np.zeros((0, 32, 32), np.float32)),
        "empty scan (shape (0, 32, 32)); nothing to segment",
    ),
    "empty-rows": (lambda d: np.save(d / "x.npy", np.zeros((32, 0), np.float32)), "empty scan (shape (32, 0));"),
    "too-small": (
        lambda d: np.save(d / "x.npy", np.zeros((2, 8, 40), np.float32)),
        "slices of 8x40 are too small for this model (H and W must be >= 16); pad or resample the scan",
    ),
    "all-nan-slice": (lambda d: np.save(d / "x.npy", _with(np.nan, slice_=1)), "slice 1 holds NaN or Inf; fix or mask"),
    "100-nan-pixels": (lambda d: np.save(d / "x.npy", _with(np.nan, pixels=100)), "slice 2 holds NaN or Inf"),
    "minus-inf-2d": (lambda d: np.save(d / "x.npy", _with(-np.inf, pixels=1)[2]), "slice 0 holds NaN or Inf"),
    "float64-beyond-float32": (  # numpy's astype(float32) makes 1e300 Inf, and infer refuses it
        lambda d: np.save(d / "x.npy", _with(1e300, pixels=1, dtype=np.float64)),
        "slice 2 holds NaN or Inf",
    ),
    "output-is-a-directory": (lambda d: _output_dir(d), "out.npy: is a directory; pass a file name"),
    "missing-input": (lambda d: None, "No such file or directory"),
    "missing-model": (lambda d: np.save(d / "x.npy", SLICE), "model not found"),
    "model-openvino-cannot-read": (lambda d: _unknown_op_model(d), "OpenVINO cannot read this model"),
}


def _with(value: float, slice_: int | None = None, pixels: int = 0, dtype: type = np.float32) -> np.ndarray:
    """Three 64x64 slices of noise around 100 with ``value`` in all of slice ``slice_`` and in
    ``pixels`` scattered pixels of the last slice."""
    x = np.random.default_rng(0).normal(100, 20, (3, 64, 64)).astype(dtype)
    if slice_ is not None:
        x[slice_] = value
    x[2].flat[np.random.default_rng(1).choice(64 * 64, pixels, replace=False)] = value
    return x


def _output_dir(folder: Path) -> None:
    """A valid input, OUTPUT an existing folder, and no model: refused before the model is opened."""
    np.save(folder / "x.npy", SLICE)
    (folder / "out.npy").mkdir()


def _unknown_op_model(folder: Path) -> None:
    """The shipped model with its ConvTranspose ops renamed: edgeseg metadata intact, graph unreadable."""
    np.save(folder / "x.npy", SLICE)
    (folder / "model.onnx").write_bytes(SHIPPED_MODEL.read_bytes().replace(b"ConvTranspose", b"ConvTransXose"))


def _save_bytes(folder: Path, array: np.ndarray) -> bytes:
    np.save(folder / "whole.npy", array)
    return (folder / "whole.npy").read_bytes()


def _run_bad_input(
    program: Path, case: str, folder: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> None:
    make, message = BAD_INPUTS[case]
    make(folder)
    model = folder / "model.onnx" if (folder / "model.onnx").is_file() else SHIPPED_MODEL
    model = folder / "missing.onnx" if case in ("missing-model", "output-is-a-directory") else model
    before = sorted(p.name for p in folder.iterdir() if p.name.startswith("out"))
    proc = run_program(program, model, folder / "x.npy", folder / "out.npy", env=env, prefix=prefix)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and message in lines[0], proc.stderr
    named = model if "model" in case else folder / ("out.npy" if "output" in case else "x.npy")
    assert str(named) in lines[0]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("out")) == before  # nothing partial


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_1(clib: CBuild, tmp_path: Path, case: str) -> None:
    _run_bad_input(clib.program, case, tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_leaves_no_temporary_output(clib: CBuild, tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C or a kill while edgeseg-run writes: it ends by that signal, and leaves neither
    OUTPUT.npy nor its temporary OUTPUT.npy.tmp-PID."""
    np.save(tmp_path / "in.npy", np.random.default_rng(0).normal(0, 1, (3000, 64, 64)).astype(np.float32))
    out = tmp_path / "out.npy"
    args = [str(clib.program), "--threads", "1", str(SHIPPED_MODEL), str(tmp_path / "in.npy"), str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tmp = tmp_path / f"out.npy.tmp-{proc.pid}"
    deadline = time.monotonic() + 120  # a bound against hanging, not a timing assertion
    while not (tmp.is_file() and tmp.stat().st_size > 0):  # labels flushed: inside the slice loop
        assert proc.poll() is None, f"finished before the signal (rc {proc.returncode}); make the stack longer"
        assert time.monotonic() < deadline, "the temporary output never appeared"
        time.sleep(0.005)
    proc.send_signal(sig)
    assert proc.wait(60) == -sig, proc.stderr.read()
    proc.stderr.close()
    assert not tmp.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "give MODEL INPUT.npy OUTPUT.npy"),
        (["--threads", "-1", "m", "i", "o"], "--threads needs a whole number >= 0"),
        (["--precision", "fp64", "m", "i", "o"], "--precision needs f32, bf16 or int8"),
        (["--shapes", "fixed", "m", "i", "o"], "--shapes needs static or dynamic"),
        (["--bogus", "m", "i", "o"], "unknown option '--bogus'"),
    ],
)
def test_usage_errors_exit_2(clib: CBuild, args: list[str], message: str) -> None:
    proc = run_program(clib.program, *args)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [proc.stderr.strip()]
    assert message in proc.stderr


def test_sanitizers_report_nothing(clib_asan: CBuild, clib: CBuild, slices: list[np.ndarray], tmp_path: Path) -> None:
    """ASan + UBSan (leaks included) over every size and batch and every bad input."""
    for h, w in SIZES:
        for batch in BATCHES:
            x = make_stack(slices, h, w, batch)
            folder = tmp_path / f"{h}x{w}x{batch}"
            folder.mkdir()
            sanitized = segment_file(
                clib_asan.program, SHIPPED_MODEL, x, folder, "--batch", str(batch), env=SANITIZER_ENV
            )
            np.testing.assert_array_equal(
                sanitized, segment_file(clib.program, SHIPPED_MODEL, x, folder, "--batch", str(batch))
            )
    folder = tmp_path / "evicted"  # 3 slices in batches of 2 and 1, after the probe: a shape evicted
    folder.mkdir()
    x = make_stack(slices, 97, 131, 3)
    sanitized = segment_file(clib_asan.program, SHIPPED_MODEL, x, folder, "--batch", "2", env=SANITIZER_ENV)
    np.testing.assert_array_equal(sanitized, segment_file(clib.program, SHIPPED_MODEL, x, folder, "--batch", "2"))
    for case in BAD_INPUTS:
        folder = tmp_path / case
        folder.mkdir()
        _run_bad_input(clib_asan.program, case, folder, env=SANITIZER_ENV)  # exit 1, one line: no report
    info = run_program(clib_asan.program, "--info", SHIPPED_MODEL, env=SANITIZER_ENV)
    assert info.returncode == 0 and not any(mark in info.stderr for mark in SANITIZER_MARKS), info.stderr


def test_mutated_headers_fail_cleanly_under_sanitizers(clib_asan: CBuild, tmp_path: Path) -> None:
    """150 seeded mutations of a real NPY header (flipped, cut, inserted bytes): one printable line, exit 1."""
    np.save(tmp_path / "good.npy", np.zeros((2, 20, 20), np.float32))
    base = (tmp_path / "good.npy").read_bytes()
    header_end = base.index(b"\n") + 1
    rng = np.random.default_rng(0)
    for i in range(150):
        data = bytearray(base)
        kind = i % 3
        if kind == 0:
            data[rng.integers(0, header_end)] = rng.integers(0, 256)
        elif kind == 1:
            data = data[: rng.integers(0, len(data))]
        else:
            at = int(rng.integers(10, header_end - 1))
            data[at:at] = bytes(rng.choice(list(b"(),:'\" 0123456789{}TrueFals\n"), rng.integers(1, 6)))
        (tmp_path / "x.npy").write_bytes(bytes(data))
        proc = subprocess.run(
            [
                str(clib_asan.program),
                str(tmp_path / "missing.onnx"),
                str(tmp_path / "x.npy"),
                str(tmp_path / "out.npy"),
            ],
            capture_output=True,
            env={**os.environ, **SANITIZER_ENV},
        )
        err = proc.stderr.decode()  # ASCII only: strict decoding fails on anything else
        assert proc.returncode == 1 and len(err.splitlines()) == 1 and err[:-1].isprintable(), (i, err)
    assert not (tmp_path / "out.npy").exists()


VALGRIND = shutil.which("valgrind")


@pytest.mark.slow  # about a minute on 2 shared cores: OpenVINO's load and compile under memcheck
@pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed (apt install valgrind)")
def test_valgrind_reports_nothing_on_the_new_refusals(clib: CBuild, threshold_onnx: Path, tmp_path: Path) -> None:
    """Memcheck over the plain build: uninitialised values (a 0-d array once printed one), bad reads
    and writes, definite leaks. NaN runs the threshold model, whose compile is short under valgrind."""
    memcheck = (
        str(VALGRIND),
        "-q",
        "--error-exitcode=99",
        f"--suppressions={(Path(__file__).parents[1] / 'valgrind.supp')}",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--show-leak-kinds=definite",
    )
    for case in ("rank-0", "output-is-a-directory", "all-nan-slice"):
        folder = tmp_path / case
        folder.mkdir()
        if "nan" in case:
            shutil.copy(threshold_onnx, folder / "model.onnx")
        _run_bad_input(clib.program, case, folder, prefix=memcheck)  # exit 1 and one line: no report


def test_the_sdist_carries_csrc_and_build_c_works_from_it(tmp_path: Path) -> None:
    """The sdist of this checkout (tracked and new files, as CI's clone has them) holds every file of
    csrc/, and `edgeseg build-c` run from the unpacked sdist builds from its csrc/ and runs."""
    import tarfile

    repo = Path(__file__).resolve().parents[2]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo, capture_output=True
    )
    if listed.returncode != 0:
        pytest.skip(f"{repo} is not a git checkout: the sdist is built from one")
    source = tmp_path / "checkout"
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (repo / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, source / name)
    sdist = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))",
            str(tmp_path / "dist"),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sdist.returncode == 0, sdist.stderr[-2000:]
    with tarfile.open(tmp_path / "dist" / sdist.stdout.split()[-1]) as archive:
        archive.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (root,) = (tmp_path / "unpacked").iterdir()

    def files(folder: Path) -> set[str]:
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}

    assert files(source / "csrc") and files(root / "csrc") == files(source / "csrc")
    build = tmp_path / "build"
    proc = subprocess.run(  # `python -m edgeseg` in the unpacked tree imports its edgeseg, not this one
        [sys.executable, "-m", "edgeseg", "build-c", "--build-dir", str(build)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(build / "libedgeseg.so"), str(build / "edgeseg-run")]
    compiled = {Path(c["file"]).resolve() for c in json.loads((build / "compile_commands.json").read_text())}
    assert (root / "csrc" / "src" / "edgeseg.c").resolve() in compiled, compiled
    info = run_program(build / "edgeseg-run", "--info", SHIPPED_MODEL)
    assert info.returncode == 0 and "edgeseg.format: edgeseg-onnx-v1" in info.stdout, info.stderr


# ----------------------------------------------------------------------------- the bench backend


def test_bench_row_runs_libedgeseg_torch_free(
    clib: CBuild, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, slices: list[np.ndarray]
) -> None:
    from edgeseg.bench.targets import load_targets, why_not_here
    from edgeseg.runtime.measure import run_child
    from edgeseg.runtime.runners import RunnerSpec, open_runner

    target = load_targets()["c-openvino"]
    assert target.provider == "c-openvino" and target.precision == "fp32"
    monkeypatch.setenv("EDGESEG_CLIB", str(tmp_path / "libedgeseg.so"))
    assert "not built" in why_not_here(target, SHIPPED_MODEL) and "edgeseg build-c" in why_not_here(
        target, SHIPPED_MODEL
    )
    monkeypatch.setenv("EDGESEG_CLIB", str(clib.library))
    assert why_not_here(target, SHIPPED_MODEL) is None
    runner = open_runner(SHIPPED_MODEL, RunnerSpec("c-openvino", threads=THREADS))
    x = make_stack(slices, 394, 394, 1)
    assert runner.label.startswith("libedgeseg (OpenVINO")
    np.testing.assert_array_equal(runner.labels(x[:, None]), python_openvino(SHIPPED_MODEL)(x))
    child = run_child(
        {
            "mode": "rss",
            "path": str(SHIPPED_MODEL),
            "runner": asdict(RunnerSpec("c-openvino", threads=THREADS)),
            "batch": 1,
            "size": 64,
            "runs": 1,
        },
        THREADS,
    )
    assert child["rss_mb"] > 0 and child["torch_loaded"] is False
