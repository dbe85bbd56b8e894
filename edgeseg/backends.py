"""Backends for benchmarking one model file: ONNX Runtime CPU (tuned), CUDA/TensorRT, OpenVINO (Python and C), eager.

Every backend becomes a :class:`Runner` whose ``predict`` maps float32 raw intensities
``(N, 1, H, W)`` to uint8 labels ``(N, H, W)`` and which reports what really runs it.
:class:`CpuLevers` holds the ONNX Runtime CPU session settings measured in
``bench/bench_levers.py``; its defaults are the fastest measured on the 2-core AVX2 box
(see the README's Performance section), written so that ``edgeseg.runtime`` can adopt them.

Imports numpy only; onnxruntime, openvino and torch are imported by the backend that
needs them, so an ONNX Runtime process built from here never loads torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class Runner:
    """A loaded model: ``predict`` maps ``(N, 1, H, W)`` float32 to ``(N, H, W)`` uint8 labels."""

    predict: Predict
    backend: str  # what actually runs, e.g. "CPUExecutionProvider"
    create_s: float  # seconds to load, optimise and compile


@dataclass(frozen=True)
class CpuLevers:
    """ONNX Runtime CPU session settings; defaults = what measured best (README, Performance).

    Ratios are fp32 batch-1 speed against edgeseg.runtime's session, interleaved in one run
    (``pytest bench/bench_levers.py --benchmark-only``) on the shared 2-core AVX2 box.
    """

    level: str = "ORT_ENABLE_ALL"  # BASIC/EXTENDED/DISABLE_ALL: 0.83-0.89x
    nchwc: bool = True  # NCHWc blocked layout (only at ENABLE_ALL); without it 0.84x
    spinning: bool = False  # off: 1.07x fp32, 1.02x int8 with the cores shared; less CPU burnt
    arena: bool = True  # off: 0.88x
    mem_pattern: bool = False  # off: 1.04x, and peak RSS -14 MB fp32 / -28 MB int8
    labels_only: bool = True  # fetch `labels` only; fetching logits too: no measurable cost
    io_binding: bool = False  # preallocated, bound output: 0.99x, no gain


def cpu_session(path: Path, threads: int, levers: CpuLevers = CpuLevers()) -> Any:
    """An ORT CPU session built with ``levers`` (see the README's Performance section for what each gave)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levers.level)
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(levers.spinning)))
    options.enable_cpu_mem_arena = levers.arena
    options.enable_mem_pattern = levers.mem_pattern
    disabled = [] if levers.nchwc else ["NchwcTransformer"]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def ort_predict(session: Any, levers: CpuLevers = CpuLevers()) -> Callable[[np.ndarray], Any]:
    """``session.run`` as a labels function, optionally through a per-shape I/O binding."""
    fetch = ["labels"] if levers.labels_only else None
    index = 0 if fetch else [o.name for o in session.get_outputs()].index("labels")
    if not levers.io_binding:
        return lambda x: session.run(fetch, {"image": x})[index]
    import onnxruntime as ort

    bound: dict[tuple[int, ...], tuple[Any, np.ndarray]] = {}

    def predict(x: np.ndarray) -> np.ndarray:
        if x.shape not in bound:
            binding, labels = session.io_binding(), np.empty((x.shape[0], *x.shape[2:]), np.uint8)
            binding.bind_ortvalue_output("labels", ort.OrtValue.ortvalue_from_numpy(labels))
            bound[x.shape] = binding, labels
        binding, labels = bound[x.shape]
        binding.bind_cpu_input("image", x)
        session.run_with_iobinding(binding)
        return labels

    return predict


def open_runner(
    path: Path,
    provider: str,
    threads: int = 0,
    precision: str = "fp32",
    batch: int = 1,
    levers: CpuLevers = CpuLevers(),
) -> Runner:
    """Load ``path`` on a backend and time the loading.

    Args:
        path: an edgeseg ONNX file; for ``torch`` a ``.pt`` checkpoint, for ``tensorrt``
            also a native ``.engine`` (edgeseg.tensorrt).
        provider: ``cpu`` | ``cuda`` | ``tensorrt`` | ``openvino`` | ``c-openvino`` | ``torch``.
        threads: intra-op threads; 0 = the backend's default (all physical cores).
        precision: the precision asked for (TensorRT: fp16 turns on fp16 kernels).
        batch: largest batch that will be run (sizes the TensorRT profile).
        levers: ONNX Runtime CPU session settings.

    Returns:
        The :class:`Runner`; ``backend`` names what really runs (never a silent fallback).
    """
    start = time.perf_counter()
    if provider == "cpu":
        from edgeseg.runtime import read_model_info

        read_model_info(path)
        session = cpu_session(path, threads, levers)
        predict, backend = ort_predict(session, levers), session.get_providers()[0]
    elif provider == "tensorrt" and Path(path).suffix == ".engine":
        from edgeseg.tensorrt import EngineSession

        engine = EngineSession(Path(path))
        predict, backend = (lambda x: engine.run(["labels"], {"image": x})[0]), "TensorRT engine"
    elif provider in ("cuda", "tensorrt"):
        predict, backend = _gpu_runner(path, provider, threads, precision, batch)
    elif provider == "openvino":
        predict, backend = _openvino_runner(path, threads)
    elif provider == "c-openvino":
        from edgeseg.cbackend import FILE_PRECISION, CModel

        model = CModel(path, threads, FILE_PRECISION[precision])
        predict, backend = model.segment, f"libedgeseg ({model.backend})"
    else:
        predict, backend = _torch_runner(path, threads)
    return Runner(predict, backend, time.perf_counter() - start)


def _gpu_runner(path: Path, provider: str, threads: int, precision: str, batch: int) -> tuple[Predict, str]:
    """ORT CUDA/TensorRT through edgeseg.runtime, the TensorRT profile sized to ``batch``."""
    from edgeseg.runtime import create_session, default_trt_options, read_model_info

    trt = default_trt_options(read_model_info(path), batch_size=max(batch, 1))
    trt["trt_fp16_enable"] = precision == "fp16"
    session, actual = create_session(path, provider, threads or None, trt)
    return (lambda x: session.run(["labels"], {"image": x})[0]), actual


def _openvino_runner(path: Path, threads: int) -> tuple[Predict, str]:
    """OpenVINO's CPU plugin on the same ONNX file: latency hint, f32, synchronous requests.

    The precision is explicit because OpenVINO's CPU default is bf16 wherever the CPU has it;
    libedgeseg (``c-openvino``) compiles with the same three settings.
    """
    import openvino as ov

    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request, labels = compiled.create_infer_request(), compiled.output("labels")
    return (lambda x: request.infer({"image": x})[labels]), f"OpenVINO {ov.__version__.split('-')[0]} CPU"


def _torch_runner(path: Path, threads: int) -> tuple[Predict, str]:
    """PyTorch eager, the tutorial's way: NCHW float32 under no_grad."""
    import torch

    from edgeseg.model import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    model, _ = load_checkpoint(path)

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).argmax(1).to(torch.uint8).numpy()

    return predict, f"PyTorch {torch.__version__} eager"
