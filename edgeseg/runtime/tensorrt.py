"""TensorRT engines for edgeseg models: build with explicit shape profiles, pin to versions.

    edgeseg export CKPT --trt [--fp16 | --int8] [--trt-min 1x16x16 --trt-opt 4x394x394 --trt-max 8x1024x1024]

:func:`build_engine` parses an exported ONNX file with the TensorRT Python API (imported
lazily) and writes ``X.engine`` plus ``X.engine.json``, a sidecar with the TensorRT, CUDA,
GPU, compute capability and driver versions, the profile and the model's metadata.
Precision follows the ONNX file it is built from:

* fp32: ``X.onnx``; TF32 is switched off, otherwise Ampere+ GPUs run convolutions with a
  10-bit mantissa and the fp32 parity gate means nothing;
* fp16: ``X_fp16.onnx`` as a *strongly typed* network, so TensorRT keeps exactly the ONNX
  types and the float32 normalisation stays float32 (its sums overflow float16);
* int8: a symmetric S8S8 QDQ model (TensorRT needs zero-point 0), strongly typed.

Engines are only valid for the TensorRT version and GPU they were built with; TensorRT
itself may fail obscurely or crash on a foreign engine (ultralytics#20053), so
:func:`load_engine` compares the sidecar with this machine first and refuses a mismatch.

Nothing here has run on a GPU in this project's CI: the build and run paths follow
TensorRT 10's Python API documentation.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.artifacts import SIDECAR_FORMAT, read_sidecar
from edgeseg.errors import EdgesegError

MUST_MATCH = ("tensorrt", "cuda", "gpu", "compute_capability")  # an engine is tied to these
WORKSPACE_BYTES = 2 << 30  # builder scratch memory limit (2 GiB)


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile for the ``image`` input: (N, H, W) min/opt/max."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def shapes(self, channels: int = 1) -> tuple[tuple[int, ...], ...]:
        return tuple((n, channels, h, w) for n, h, w in (self.min, self.opt, self.max))


def parse_nhw(text: str, option: str = "--trt-opt") -> tuple[int, int, int]:
    """``"4x394x394"`` -> ``(4, 394, 394)``; EdgesegError names the option otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise EdgesegError(f"{option} {text!r}: expected NxHxW, e.g. 4x394x394")
    return tuple(int(v) for v in match.groups())  # type: ignore[return-value]


def make_profile(min_: str, opt: str, max_: str, min_size: int) -> Profile:
    """Parse and check a profile: min <= opt <= max elementwise, H and W >= min_size."""
    profile = Profile(parse_nhw(min_, "--trt-min"), parse_nhw(opt, "--trt-opt"), parse_nhw(max_, "--trt-max"))
    ordered = all(a <= b <= c for a, b, c in zip(profile.min, profile.opt, profile.max, strict=True))
    if not ordered or profile.min[0] < 1 or min(profile.min[1:]) < min_size:
        raise EdgesegError(
            f"TensorRT profile {min_} / {opt} / {max_}: need 1 <= N and {min_size} <= H, W"
            " (the model's minimum size), and min <= opt <= max in every dimension"
        )
    return profile


# ----------------------------------------------------------------------------- environment


def gpu_problem() -> str | None:
    """Why TensorRT cannot run here (no NVIDIA driver/GPU, no tensorrt module), or None."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA GPU driver here (libcuda.so.1 not found)"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or not count.value:
        return "no NVIDIA GPU visible (cuInit/cuDeviceGetCount failed or found 0 devices)"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install tensorrt)"
    return None


def require_tensorrt(what: str = "--trt") -> None:
    """Raise the one-line EdgesegError when TensorRT cannot run here."""
    problem = gpu_problem()
    if problem:
        raise EdgesegError(
            f"{what}: TensorRT needs an NVIDIA GPU with the tensorrt package, and {problem};"
            " export without --trt here (the ONNX files run everywhere), or build the engine"
            " on the deployment GPU"
        )


def current_environment() -> dict[str, str]:
    """TensorRT, CUDA driver API, GPU name, compute capability and driver version here."""
    import tensorrt as trt

    cuda = ctypes.CDLL("libcuda.so.1")
    version = ctypes.c_int(0)
    cuda.cuDriverGetVersion(ctypes.byref(version))
    query = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader", "--id=0"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    name, cap, driver = ([s.strip() for s in query.split(",")] + ["?", "?", "?"])[:3]
    return {
        "tensorrt": trt.__version__,
        "cuda": f"{version.value // 1000}.{version.value % 1000 // 10}",
        "gpu": name,
        "compute_capability": cap,
        "driver": driver,
    }


def sidecar_mismatch(sidecar: dict[str, Any], here: dict[str, str]) -> list[str]:
    """``["tensorrt 10.3.0 (engine) != 10.8.0 (here)", ...]`` for every MUST_MATCH key."""
    return [
        f"{key} {sidecar.get(key, '?')} (engine) != {here.get(key, '?')} (here)"
        for key in MUST_MATCH
        if str(sidecar.get(key)) != str(here.get(key))
    ]


# ----------------------------------------------------------------------------- build


def build_engine(onnx_path: Path, engine_path: Path, profile: Profile) -> Path:
    """Build a TensorRT engine from an edgeseg ONNX file and write its sidecar.

    Args:
        onnx_path: ``X.onnx`` (fp32), ``X_fp16.onnx`` or a symmetric int8 QDQ file; the
            engine's precision is the file's (see the module docstring).
        engine_path: the ``.engine`` to write; ``<engine>.json`` is written beside it.
        profile: min/opt/max ``(N, H, W)`` of the ``image`` input.

    Returns:
        ``engine_path``.
    """
    require_tensorrt()
    import tensorrt as trt

    from edgeseg.artifacts import read_model_info
    from edgeseg.files import write_bytes, write_json

    info = read_model_info(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = info.precision != "fp32"
    flags = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgesegError(f"{onnx_path}: TensorRT cannot parse it ({errors[:300]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if not typed and hasattr(trt.BuilderFlag, "TF32"):  # TensorRT 11 is always strongly typed
        config.clear_flag(trt.BuilderFlag.TF32)
    shapes = builder.create_optimization_profile()
    shapes.set_shape("image", *profile.shapes(info.in_channels))
    config.add_optimization_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgesegError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    write_bytes(engine_path, bytes(serialized))
    write_json(
        Path(f"{engine_path}.json"),
        {
            "format": SIDECAR_FORMAT,
            **current_environment(),
            "precision": info.precision,
            "onnx": Path(onnx_path).name,
            "profile": {"min": profile.min, "opt": profile.opt, "max": profile.max},
            "metadata": info.metadata,
        },
    )
    return Path(engine_path)


def load_engine(engine_path: Path) -> tuple[Any, dict[str, Any]]:
    """Deserialise an engine after checking its sidecar against this machine.

    Returns:
        ``(ICudaEngine, sidecar)``.

    Raises:
        EdgesegError: no GPU/tensorrt, no sidecar, or a sidecar naming another TensorRT,
            CUDA, GPU or compute capability (the engine is never used then).
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise EdgesegError(f"{engine_path}: engine not found; build one with `edgeseg export --trt`")
    sidecar = read_sidecar(engine_path)
    require_tensorrt(str(engine_path))
    mismatch = sidecar_mismatch(sidecar, current_environment())
    if mismatch:
        raise EdgesegError(
            f"{engine_path}: built for another setup ({'; '.join(mismatch)}); TensorRT engines"
            " do not move between versions or GPUs, rebuild it here with `edgeseg export --trt`"
        )
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise EdgesegError(f"{engine_path}: TensorRT could not deserialise it; rebuild it")
    return engine, sidecar


class EngineSession:
    """A TensorRT engine behind ORT's ``session.run(names, feeds)`` interface (torch CUDA buffers)."""

    def __init__(self, engine_path: Path) -> None:
        import torch

        if not torch.cuda.is_available():
            raise EdgesegError(f"{engine_path}: running an engine needs PyTorch with CUDA")
        self.engine, self.sidecar = load_engine(engine_path)
        self.context = self.engine.create_execution_context()

    def get_providers(self) -> list[str]:
        return ["TensorRT (native engine)"]

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        image = torch.from_numpy(np.ascontiguousarray(feeds["image"])).cuda()
        self.context.set_input_shape("image", tuple(image.shape))
        outputs = {}
        for name in ("logits", "labels"):
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.uint8 if name == "labels" else torch.float32
            outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        self.context.set_tensor_address("image", image.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EdgesegError("TensorRT execution failed (input outside the engine's profile?)")
        stream.synchronize()
        return [outputs[n].cpu().numpy() for n in (names or ["logits", "labels"])]
