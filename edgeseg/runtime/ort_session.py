"""ONNX Runtime in edgeseg: which providers really work here, and the one session builder.

Torch-free: numpy, onnx (for the probe model) and onnxruntime, all imported lazily. Split
from :mod:`edgeseg.runtime.runners` (the runners), which builds its ONNX Runtime runner on this; the
provider probe and the session levers are one concern, and ``edgeseg bench`` and
``infer --backend auto`` ask it which GPU providers work without loading any runner.

* :func:`resolve_providers` turns ``auto|cpu|cuda|tensorrt`` into a provider list.
  onnxruntime-gpu lists CUDA and TensorRT as *available* even with no GPU or with a
  CUDA/cuDNN mismatch, and then silently runs on CPU (onnxruntime#11323). So each GPU
  provider is probed once per process on a one-node model, and counts as working only if
  the probe session really runs on it. ``auto`` = TensorRT > CUDA > CPU among working
  ones; an explicit ``cuda``/``tensorrt`` request that cannot work raises EdgesegError
  naming the reason (a missing library, or no GPU) instead of running 50x slower on CPU.
* :func:`create_session` is the only place an ``onnxruntime.InferenceSession`` is built,
  with the :class:`SessionLevers` measured best; it returns the provider that ACTUALLY
  runs it and warns on stderr if that is not the one asked for.

GPU note: if CUDA/cuDNN come from pip ``nvidia-*`` wheels, call
``onnxruntime.preload_dlls()`` first or put their ``lib/`` folders on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from edgeseg.artifacts import INPUT_NAME, ModelInfo, read_model_info
from edgeseg.errors import EdgesegError, describe
from edgeseg.files import cache_dir

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PROVIDER_LIBS = {  # shared library each GPU provider loads; dlopen tells why it cannot
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
}


def available_providers() -> list[str]:
    """Providers this onnxruntime build lists; GPU ones may still not work (see module doc)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def provider_works(name: str) -> bool:
    """True if a session asked for ``name`` really runs on it here (probed once, cached)."""
    return probe(name) is None


@cache
def probe(name: str) -> str | None:
    """None if provider ``name`` works, else the reason it does not.

    On Linux the GPU providers' libraries are looked at before ``import onnxruntime``: absent (the
    CPU wheel) or not loadable (onnxruntime-gpu without CUDA's libraries), the answer needs no
    import, so a job that runs on OpenVINO does not pay for importing ONNX Runtime as well (issue
    24: 0.14-0.33 s on the AMD EPYC, a shared machine, of a 5-slice job of about 2 s)."""
    if name == PROVIDERS["cpu"]:
        return None
    if sys.platform.startswith("linux") and name in PROVIDER_LIBS:
        lib = _provider_lib(name)
        if lib is None or not lib.is_file():
            return "this onnxruntime build does not include it (install onnxruntime-gpu)"
        problem = _library_problem(name)
        if problem:
            return problem
    import onnxruntime as ort

    if name not in ort.get_available_providers():
        return "this onnxruntime build does not include it (install onnxruntime-gpu)"
    problem = _library_problem(name)
    if problem:  # its session could not load it either: the same answer, without building one (nor importing onnx)
        return problem
    ort.set_default_logger_severity(4)  # the probe's failures are reported by us, once
    try:
        session = ort.InferenceSession(_probe_model(), providers=[name], enable_fallback=0)
        actual = session.get_providers()[0]
    except Exception as exc:
        actual, error = None, describe(exc)
    else:
        error = ""
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default: warnings
    if actual == name:
        return None
    return _library_problem(name) or error or "no usable NVIDIA GPU (onnxruntime fell back to CPU)"


@lru_cache(maxsize=1)
def _probe_model() -> bytes:
    """A one-node Identity model, serialised, for probing providers."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # old enough for every onnxruntime this project supports
    return model.SerializeToString()


def _provider_lib(name: str) -> Path | None:
    """Where onnxruntime keeps the provider's shared library, found without importing it; None
    when onnxruntime is not installed."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "capi" / PROVIDER_LIBS.get(name, "")


def _library_problem(name: str) -> str | None:
    """Why the provider's shared library cannot load (e.g. libcublasLt missing), if it cannot."""
    lib = _provider_lib(name)
    if lib is None or name not in PROVIDER_LIBS or not lib.is_file():
        return None
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        return f"its library cannot load: {describe(exc)}"
    return None


def resolve_providers(
    provider: str = "auto", trt_options: dict[str, Any] | None = None
) -> list[str | tuple[str, dict[str, Any]]]:
    """Provider list for ``InferenceSession`` from ``auto|cpu|cuda|tensorrt``.

    Args:
        provider: ``auto`` (TensorRT > CUDA > CPU among those that really work here),
            or one of ``cpu``, ``cuda``, ``tensorrt``.
        trt_options: TensorRT provider options, used when TensorRT is in the list.

    Returns:
        Provider names (TensorRT as a ``(name, options)`` pair), CPU always last.

    Raises:
        EdgesegError: unknown choice, or an explicit GPU provider that cannot run here.
    """
    choice = provider.lower()
    if choice not in (*PROVIDERS, "auto"):
        raise EdgesegError(f"unknown provider {provider!r}; choose auto, cpu, cuda or tensorrt")
    if choice in ("cuda", "tensorrt") and not provider_works(PROVIDERS[choice]):
        raise EdgesegError(
            f"provider {choice}: {PROVIDERS[choice]} cannot run here"
            f" ({probe(PROVIDERS[choice])}); use --provider auto or cpu, or fix the"
            " CUDA/cuDNN/TensorRT install (see onnxruntime's GPU requirements page)"
        )
    wanted = {"auto": ("tensorrt", "cuda"), "tensorrt": ("tensorrt", "cuda"), "cuda": ("cuda",)}
    chain: list[str | tuple[str, dict[str, Any]]] = []
    for key in wanted.get(choice, ()):
        name = PROVIDERS[key]
        if provider_works(name):
            chain.append((name, dict(trt_options or {})) if key == "tensorrt" else name)
    chain.append(PROVIDERS["cpu"])
    return chain


def default_trt_options(
    info: ModelInfo,
    batch_size: int = 8,
    opt_hw: tuple[int, int] = (394, 394),
    max_hw: tuple[int, int] = (1024, 1024),
) -> dict[str, Any]:
    """TensorRT provider options for an edgeseg model: one shape profile, cached engines.

    All three profile shapes are set, otherwise the engine is rebuilt whenever a new
    shape leaves the range seen so far (onnxruntime#13851). Shapes outside
    ``[min_size, max_hw]`` or batches above ``batch_size`` fail on TensorRT.
    """
    cache = cache_dir() / "trt"
    c, m = info.in_channels, info.min_size
    return {
        "trt_profile_min_shapes": f"{INPUT_NAME}:1x{c}x{m}x{m}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{batch_size}x{c}x{opt_hw[0]}x{opt_hw[1]}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{batch_size}x{c}x{max_hw[0]}x{max_hw[1]}",
        # A cached engine is invalid after a model, ORT, TensorRT or GPU change; ORT keys
        # the cache file by model hash and profile.
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        # Off even for fp16 models: their fp16 layers are explicit in the graph, and the FP16
        # builder flag would let TensorRT also run the fp32 normalisation (sums of raw
        # intensities) in fp16, which overflows. Unverified on a GPU here.
        "trt_fp16_enable": False,
        # int8 models are QDQ: explicit scales in the graph, never a calibration table.
        "trt_int8_enable": info.precision == "int8",
    }


@dataclass(frozen=True)
class SessionLevers:
    """ONNX Runtime CPU session settings; the defaults are what measured best.

    Ratios are fp32 batch-1 speed against the defaults, interleaved in one run
    (``pytest bench/bench_levers.py --benchmark-only``) on the shared 2-core AVX2 box.
    """

    level: str = "ORT_ENABLE_ALL"  # BASIC/EXTENDED/DISABLE_ALL: 0.83-0.89x
    nchwc: bool = True  # NCHWc blocked layout (only at ENABLE_ALL); without it 0.84x
    spinning: bool = False  # off: 1.07x fp32, 1.02x int8 with the cores shared; less CPU burnt
    arena: bool = True  # off: 0.88x
    mem_pattern: bool = False  # off: 1.04x, and peak RSS -14 MB fp32 / -28 MB int8


def create_session(
    path: str | Path,
    provider: str = "auto",
    threads: int | None = None,
    trt_options: dict[str, Any] | None = None,
    levers: SessionLevers = SessionLevers(),
) -> tuple[Any, str]:
    """An ``onnxruntime.InferenceSession`` for an edgeseg model, and who really runs it.

    Args:
        path: the ONNX file; checked with :func:`read_model_info` first.
        provider: ``auto|cpu|cuda|tensorrt`` (see :func:`resolve_providers`).
        threads: intra-op threads; None or 0 lets onnxruntime use one per physical core.
        trt_options: overrides merged over :func:`default_trt_options`.
        levers: CPU session settings (bench/bench_levers.py measures the alternatives).

    Returns:
        ``(session, actual_provider)`` where ``actual_provider`` is
        ``session.get_providers()[0]``, e.g. ``"CPUExecutionProvider"``.
    """
    import onnxruntime as ort

    info = read_model_info(path)
    chain = resolve_providers(provider, {**default_trt_options(info), **(trt_options or {})})
    for entry in chain:
        if isinstance(entry, tuple):
            Path(entry[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levers.level)
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(levers.spinning)))
    options.enable_cpu_mem_arena = levers.arena
    options.enable_mem_pattern = levers.mem_pattern
    if threads:
        options.intra_op_num_threads = int(threads)
    disabled = [] if levers.nchwc else ["NchwcTransformer"]
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=chain, enable_fallback=0, disabled_optimizers=disabled
        )
    except Exception as exc:  # IR version too new, unsupported op, TensorRT build failure
        raise EdgesegError(
            f"{path}: onnxruntime {ort.__version__} cannot load this model"
            f" ({describe(exc)}); re-export it with `edgeseg export` or try --provider cpu"
        ) from exc
    actual = session.get_providers()[0]
    first = chain[0][0] if isinstance(chain[0], tuple) else chain[0]
    if actual != first:
        print(
            f"WARNING: {first} was requested but {actual} is running {path}; inference will"
            " be much slower (check the CUDA/cuDNN/TensorRT versions onnxruntime needs)",
            file=sys.stderr,
        )
    return session, actual
