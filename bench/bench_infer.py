"""Inference benchmarks: every backend on the same model, grouped by workload.

    pytest bench/bench_infer.py --benchmark-only [--benchmark-json out.json]

Groups (each one's baseline is PyTorch eager, the tutorial's way, measured in the same run):

* ``latency-b1-394``: one 394x394 slice per call (the interventional case). Not paired with
  eager (bench/conftest.py ``paired``): eager's OpenMP threads, still spinning after each
  call, slowed OpenVINO's next round by 2x in a trial, which would flatter ONNX Runtime;
* ``throughput-b8-394`` and ``throughput-b32-394``: batched slices (clinical volumes);
* ``volume-200-nifti``: a 200-slice NIfTI end to end through the real ``edgeseg infer`` CLI
  (interpreter start, reading, inference, writing) against the tutorial-style eager loop.

Backends: PyTorch eager; ONNX Runtime CPU fp32/fp16/int8 through :func:`edgeseg.runtime.runners.open_runner`
(the session ``edgeseg infer`` runs); OpenVINO's CPU plugin on the same ONNX files (the
peer an x86 edge user would pick; optional, skipped if not installed); ONNX Runtime CUDA
fp32/fp16 and TensorRT fp16/int8 (``gpu`` marker; skipped with the reason when no GPU works).

The model is the shipped ``export/model.onnx`` with its ``_fp16``/``_int8``/``.pt`` siblings,
or ``$EDGESEG_BENCH_MODEL``. All backends use ``$EDGESEG_BENCH_THREADS`` threads (default:
every core). Plain ``pytest`` runs each case once on a 64x64 input as a smoke test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg import SHIPPED_MODEL
from edgeseg.bench.report import Target
from edgeseg.bench.targets import model_file, runner_spec, why_not_here
from edgeseg.runtime.measure import synthetic_batch
from edgeseg.runtime.runners import Runner, RunnerSpec, open_runner

MODEL = Path(os.environ.get("EDGESEG_BENCH_MODEL", SHIPPED_MODEL))
THREADS = int(os.environ.get("EDGESEG_BENCH_THREADS", os.cpu_count() or 1))
FULL, SMOKE = 394, 64  # slice side when timed / in the smoke run
VOLUME_SLICES = 200

BACKENDS = [
    # id, provider, precision, marks
    ("pytorch-eager", "torch", "fp32", ()),
    ("ort-cpu-fp32", "cpu", "fp32", ()),
    ("ort-cpu-fp16", "cpu", "fp16", ()),
    ("ort-cpu-int8", "cpu", "int8", ()),
    ("openvino-cpu-fp32", "openvino", "fp32", ()),
    ("openvino-cpu-int8", "openvino", "int8", ()),
    ("ort-cuda-fp32", "cuda", "fp32", (pytest.mark.gpu,)),
    ("ort-cuda-fp16", "cuda", "fp16", (pytest.mark.gpu,)),
    ("tensorrt-fp16", "tensorrt", "fp16", (pytest.mark.gpu,)),
    ("tensorrt-int8", "tensorrt", "int8", (pytest.mark.gpu,)),
]
WORKLOADS = [
    # group, batch, timed rounds
    ("latency-b1-394", 1, 20),
    ("throughput-b8-394", 8, 5),
    ("throughput-b32-394", 32, 3),
]
MAX_BATCH = max(b for _, b, _ in WORKLOADS)  # sizes the TensorRT profile once per backend
_runners: dict[str, Runner] = {}


def runner_for(name: str, provider: str, precision: str) -> Runner:
    """The backend's runner, loaded once per session; skips with the reason it cannot run."""
    target = Target(name, provider, precision, batch=MAX_BATCH, threads=THREADS)
    path = model_file(MODEL, target)
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} not found: export the shipped model, or set EDGESEG_BENCH_MODEL")
    reason = why_not_here(target, path)
    if reason:
        pytest.skip(f"{name}: {reason}")
    if name not in _runners:
        _runners[name] = open_runner(path, runner_spec(target, path))
    return _runners[name]


# Labels that must agree with ONNX Runtime fp32 on a real slice: a backend that is fast
# because it computes something else fails here, not only in parity.
AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "int8": 0.97}


def real_slice(size: int) -> np.ndarray:
    """The middle slice of the bundled example scan, centre-cropped or zero-padded to size²."""
    import nibabel as nib

    from edgeseg import SHIPPED_MODEL_DIR

    data = np.asarray(nib.load(SHIPPED_MODEL_DIR / "example" / "mni152_t1_axial_slab.nii.gz").dataobj, np.float32)
    image = data[..., data.shape[-1] // 2]
    out = np.zeros((size, size), np.float32)
    h, w = min(size, image.shape[0]), min(size, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    y, x = (size - h) // 2, (size - w) // 2
    out[y : y + h, x : x + w] = image[top : top + h, left : left + w]
    return out


def check_labels(name: str, runner: Runner, precision: str, size: int) -> None:
    """The runner's labels: right shape and dtype, and agreeing with ORT fp32 on a real slice."""
    x = real_slice(size)[None, None]
    labels = runner.labels(x)
    assert labels.shape == (1, size, size) and labels.dtype == np.uint8, (name, labels.shape, labels.dtype)
    if "ort-cpu-fp32" not in _runners:
        _runners["ort-cpu-fp32"] = open_runner(MODEL, RunnerSpec("ort", "cpu", threads=THREADS))
    reference = _runners["ort-cpu-fp32"].labels(x)
    agreement = float(np.mean(labels == reference))
    assert agreement >= AGREEMENT[precision], f"{name}: {agreement:.4f} of labels agree with ORT fp32"


@pytest.mark.parametrize("group,batch,rounds", WORKLOADS, ids=[w[0] for w in WORKLOADS])
@pytest.mark.parametrize("name,provider,precision", [pytest.param(n, p, q, marks=m, id=n) for n, p, q, m in BACKENDS])
def test_inference(benchmark, name: str, provider: str, precision: str, group: str, batch: int, rounds: int) -> None:
    runner = runner_for(name, provider, precision)
    size = SMOKE if benchmark.disabled else FULL
    x = synthetic_batch(batch if not benchmark.disabled else 1, size)
    runner.labels(x)  # warm-up at this shape: ORT/OpenVINO plan memory per shape
    benchmark.group = group
    benchmark.extra_info.update(
        items=x.shape[0], unit="slices", baseline=provider == "torch", backend=runner.label, threads=THREADS
    )
    benchmark.pedantic(
        runner.labels,
        args=(x,),
        rounds=1 if benchmark.disabled else rounds,
        warmup_rounds=0 if benchmark.disabled else 2,
        iterations=1,
    )
    check_labels(name, runner, precision, size)


# ----------------------------------------------------------------------------- a whole volume


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A 200-slice int16 NIfTI of real demo slices (394x394, 0.5 mm pixels; smoke: 3 of 64²)."""
    import nibabel as nib

    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo

    if not MODEL.is_file():
        pytest.skip(f"{MODEL} not found: export the shipped model, or set EDGESEG_BENCH_MODEL")
    smoke = request.config.getoption("benchmark_disable", False)
    n, size = (3, SMOKE) if smoke else (VOLUME_SLICES, FULL)
    images = load_slices(build_demo()).images
    stack = np.stack([images[i % len(images)][:size, :size] for i in range(n)], axis=-1)
    path = tmp_path_factory.mktemp("volume") / "volume.nii.gz"
    nib.save(nib.Nifti1Image(stack.astype(np.int16), np.diag([0.5, 0.5, 1.0, 1.0])), path)
    return path


def _eager_loop(model_pt: Path, volume: Path, out: Path) -> None:
    """The tutorial's way: load, one slice at a time through eager PyTorch, save labels."""
    import nibabel as nib
    import torch

    from edgeseg.model import load_checkpoint

    torch.set_num_threads(THREADS)
    model, _ = load_checkpoint(model_pt)
    img = nib.load(volume)
    data = np.asarray(img.dataobj, dtype=np.float32)
    labels = np.zeros(data.shape, np.uint8)
    with torch.no_grad():
        for k in range(data.shape[-1]):
            x = torch.from_numpy(np.ascontiguousarray(data[None, None, :, :, k]))
            labels[..., k] = model(x).argmax(1)[0].numpy()
    nib.save(nib.Nifti1Image(labels, img.affine), out)


def _edgeseg_infer(model: Path, volume: Path, out: Path) -> None:
    """The real CLI in a fresh process (torch-free), as a user runs it."""
    cmd = [
        sys.executable,
        "-c",
        "from edgeseg.cli import main; main()",
        "infer",
        str(volume),
        "--model",
        str(model),
        "--out",
        str(out),
        "--overwrite",
        "--axis",
        "2",
        "--provider",
        "cpu",
        "--threads",
        str(THREADS),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


VOLUME_CASES = [
    # id, how, precision, baseline
    ("tutorial-eager-loop", "eager", "fp32", True),
    ("edgeseg-infer-fp32", "cli", "fp32", False),
    ("edgeseg-infer-int8", "cli", "int8", False),
]


@pytest.mark.parametrize("name,how,precision,baseline", VOLUME_CASES, ids=[c[0] for c in VOLUME_CASES])
def test_volume(benchmark, volume: Path, tmp_path: Path, name: str, how: str, precision: str, baseline: bool) -> None:
    provider = "torch" if how == "eager" else "cpu"
    path = model_file(MODEL, Target(name, provider, precision))
    if not MODEL.is_file() or not path.is_file():
        pytest.skip(f"{path} not found: export the shipped model, or set EDGESEG_BENCH_MODEL")
    run = _eager_loop if how == "eager" else _edgeseg_infer
    benchmark.group = "volume-200-nifti"
    slices = 3 if benchmark.disabled else VOLUME_SLICES
    benchmark.extra_info.update(items=slices, unit="slices", baseline=baseline, threads=THREADS)
    benchmark.pedantic(
        run,
        args=(path, volume, tmp_path / "out.nii.gz" if how == "eager" else tmp_path / "out"),
        rounds=1 if benchmark.disabled else 2,
        iterations=1,
    )
    produced = list(tmp_path.rglob("*.nii.gz"))
    assert produced, f"{name} wrote no segmentation"


# ----------------------------------------------------------------------------- QC figures


def test_qc_figures(benchmark, paired) -> None:  # noqa: ANN001
    """``qc-b5-394``: the QC figures (:class:`edgeseg.io.qc.QCCounter`) of the example slab's five
    slices at the model's 0.5 mm (394x466), on the logits and labels the shipped model gave,
    paired with that batch's ``session.run`` (logits and labels, as `edgeseg infer` fetches
    them): "paired" is model time / QC time."""
    from edgeseg import SHIPPED_MODEL_DIR
    from edgeseg.artifacts import read_model_info
    from edgeseg.io.qc import QCCounter
    from edgeseg.io.scans import read_scan
    from edgeseg.runtime.ort_session import create_session

    example = SHIPPED_MODEL_DIR / "example" / "mni152_t1_axial_slab.nii.gz"
    info = read_model_info(MODEL)
    dec = read_scan(example, "nifti", (example,), None, info.min_size, info.pixel_spacing_mm)
    x = dec.batch(0, 1 if benchmark.disabled else len(dec.stack), example, dec.model_size)
    session, _ = create_session(MODEL, "cpu", THREADS)
    logits, labels = session.run(["logits", "labels"], {"image": x})
    benchmark.group = "qc-b5-394"
    benchmark.extra_info.update(items=x.shape[0], unit="slices", threads=THREADS)
    paired(
        benchmark,
        lambda: QCCounter.for_classes(info.class_names).add(logits, labels),
        lambda: session.run(["logits", "labels"], {"image": x}),
        (),
        rounds=10,
    )
