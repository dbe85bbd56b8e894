"""ONNX Runtime sessions for edgeseg models: metadata, providers, honest provider reports.

Torch-free: imports only numpy, onnx (to read the model's metadata) and onnxruntime.

* :func:`read_model_info` checks a file against the ``edgeseg-onnx-v1`` contract (one
  float32 input ``image`` ``(N, 1, H, W)``; outputs ``logits`` float32 and ``labels`` uint8;
  ``edgeseg.*`` metadata) and returns what inference needs (class names, minimum size, ...).
* :func:`resolve_providers` turns ``auto|cpu|cuda|tensorrt`` into a provider list.
  onnxruntime-gpu lists CUDA and TensorRT as *available* even with no GPU or with a
  CUDA/cuDNN mismatch, and then silently runs on CPU (onnxruntime#11323). So each GPU
  provider is probed once per process on a one-node model, and counts as working only if
  the probe session really runs on it. ``auto`` = TensorRT > CUDA > CPU among working
  ones; an explicit ``cuda``/``tensorrt`` request that cannot work raises EdgesegError
  naming the reason (a missing library, or no GPU) instead of running 50x slower on CPU.
* :func:`create_session` returns the session and the provider that ACTUALLY runs it, and
  warns on stderr if that is not the one that was asked for.

GPU note: if CUDA/cuDNN come from pip ``nvidia-*`` wheels, call
``onnxruntime.preload_dlls()`` first or put their ``lib/`` folders on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError

FORMAT = "edgeseg-onnx-v1"
INPUT_NAME = "image"
OUTPUTS = {"logits": ("float", 4), "labels": ("uint8", 3)}  # name -> (element type, rank)
REQUIRED_KEYS = ("format", "class_names", "num_classes", "in_channels", "min_size")
# The normalisation is inside the graph, so a file of any of these contracts runs as exported;
# a newer contract may change what the input must be, so it is refused.
KNOWN_CONTRACTS = ("1", "2", "3")
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PROVIDER_LIBS = {  # shared library each GPU provider loads; dlopen tells why it cannot
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
}


@dataclass(frozen=True)
class ModelInfo:
    """What an edgeseg ONNX file says about itself (its ``edgeseg.*`` metadata)."""

    path: Path
    precision: str  # "fp32" | "fp16" | "int8"
    class_names: tuple[str, ...]
    in_channels: int
    min_size: int  # smallest H and W the network accepts
    opset: int
    version: str = ""  # edgeseg version that exported it
    normalization: str = ""  # how the graph normalises raw intensities
    normalization_contract: int = 1  # its version; files written before it was recorded are 1
    train_miou_fg: float | None = None  # held-out foreground mIoU of the checkpoint
    checkpoint_sha256: str = ""  # the checkpoint this model was exported from
    pixel_spacing_mm: float | None = None  # in-plane mm per pixel of the training data; None: unknown
    metadata: dict[str, str] = field(default_factory=dict)  # every metadata_props entry

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_model_info(path: str | Path) -> ModelInfo:
    """Read and check an edgeseg ONNX file without creating a session.

    Args:
        path: an ONNX file written by ``edgeseg export``.

    Returns:
        Its :class:`ModelInfo`.

    Raises:
        EdgesegError: missing or unreadable file, or not an ``edgeseg-onnx-v1`` model
            (wrong inputs/outputs, missing metadata).
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: model not found; run `edgeseg export` or pass --model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, truncated or empty file
        raise EdgesegError(
            f"{path}: not a readable ONNX file ({_first_line(exc)}); pass a model written by `edgeseg export`"
        ) from exc
    _check_io(path, model.graph)
    meta = {p.key: p.value for p in model.metadata_props}
    return _info_from_metadata(path, meta, _opset(model))


def _check_io(path: Path, graph: Any) -> None:
    """Raise unless the graph has the contract's input and outputs."""
    import onnx

    def describe(vi: Any) -> tuple[str, int]:
        t = vi.type.tensor_type
        elem = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
        return ("float" if elem == "float32" else elem), len(t.shape.dim)

    initializers = {i.name for i in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in initializers]
    fix = "re-export it with `edgeseg export`"
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or describe(inputs[0]) != ("float", 4):
        got = [(vi.name, *describe(vi)) for vi in inputs]
        raise EdgesegError(
            f"{path}: not an edgeseg model: inputs are {got}, expected one float32 rank-4"
            f" input '{INPUT_NAME}' (N, 1, H, W); {fix}"
        )
    outputs = {vi.name: describe(vi) for vi in graph.output}
    for name, want in OUTPUTS.items():
        if outputs.get(name) != want:
            raise EdgesegError(
                f"{path}: not an edgeseg model: output '{name}' is {outputs.get(name)},"
                f" expected {want[0]} of rank {want[1]}; {fix}"
            )


def _info_from_metadata(path: Path, meta: dict[str, str], opset: int) -> ModelInfo:
    """Parse the ``edgeseg.*`` metadata into a ModelInfo."""
    fix = "re-export it with `edgeseg export`"
    missing = [k for k in REQUIRED_KEYS if f"edgeseg.{k}" not in meta]
    if missing:
        keys = ", ".join(f"edgeseg.{k}" for k in missing)
        raise EdgesegError(f"{path}: not an edgeseg model: metadata lacks {keys}; {fix}")
    if meta["edgeseg.format"] != FORMAT:
        raise EdgesegError(f"{path}: model format is {meta['edgeseg.format']!r}, this edgeseg reads {FORMAT!r}; {fix}")
    try:
        names = tuple(str(n) for n in json.loads(meta["edgeseg.class_names"]))
        num, in_ch, min_size = (int(meta[f"edgeseg.{k}"]) for k in REQUIRED_KEYS[2:])
        miou = meta.get("edgeseg.train_miou_fg")
        miou_value = float(miou) if miou not in (None, "", "null", "None") else None
    except (ValueError, TypeError) as exc:
        raise EdgesegError(f"{path}: malformed edgeseg metadata ({exc}); {fix}") from exc
    contract = meta.get("edgeseg.normalization_contract", "1")
    if contract not in KNOWN_CONTRACTS:
        raise EdgesegError(
            f"{path}: normalisation contract {contract!r} is unknown to this edgeseg (knows"
            f" {', '.join(KNOWN_CONTRACTS)}); upgrade edgeseg, or run a file this version's `edgeseg export` wrote"
        )
    if len(names) != num or num < 2 or in_ch < 1 or min_size < 1:
        raise EdgesegError(
            f"{path}: inconsistent edgeseg metadata ({len(names)} class names, num_classes"
            f" {num}, in_channels {in_ch}, min_size {min_size}); {fix}"
        )
    return ModelInfo(
        path=path,
        precision=meta.get("edgeseg.precision", "fp32"),
        class_names=names,
        in_channels=in_ch,
        min_size=min_size,
        opset=opset,
        version=meta.get("edgeseg.version", ""),
        normalization=meta.get("edgeseg.normalization", ""),
        train_miou_fg=miou_value,
        normalization_contract=int(contract),
        checkpoint_sha256=meta.get("edgeseg.checkpoint_sha256", ""),
        pixel_spacing_mm=_pixel_spacing(path, meta.get("edgeseg.pixel_spacing_mm")),
        metadata=dict(meta),
    )


def _pixel_spacing(path: Path, value: str | None) -> float | None:
    """``edgeseg.pixel_spacing_mm`` as a positive float; absent or empty means unknown."""
    if value is None or not value.strip():
        return None
    try:
        mm = float(value)
    except ValueError:
        mm = float("nan")
    if not math.isfinite(mm) or mm <= 0:
        raise EdgesegError(
            f"{path}: metadata edgeseg.pixel_spacing_mm is {value!r}, expected a positive number"
            " of mm such as '0.5' (or empty when unknown); re-export it with `edgeseg export`"
        )
    return mm


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def available_providers() -> list[str]:
    """Providers this onnxruntime build lists; GPU ones may still not work (see module doc)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def provider_works(name: str) -> bool:
    """True if a session asked for ``name`` really runs on it here (probed once, cached)."""
    return _probe(name) is None


@cache
def _probe(name: str) -> str | None:
    """None if provider ``name`` works, else the reason it does not."""
    import onnxruntime as ort

    if name == PROVIDERS["cpu"]:
        return None
    if name not in ort.get_available_providers():
        return "this onnxruntime build does not include it (install onnxruntime-gpu)"
    ort.set_default_logger_severity(4)  # the probe's failures are reported by us, once
    try:
        session = ort.InferenceSession(_probe_model(), providers=[name], enable_fallback=0)
        actual = session.get_providers()[0]
    except Exception as exc:
        actual, error = None, _first_line(exc)
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


def _library_problem(name: str) -> str | None:
    """Why the provider's shared library cannot load (e.g. libcublasLt missing), if it cannot."""
    import onnxruntime as ort

    lib = Path(ort.__file__).parent / "capi" / PROVIDER_LIBS.get(name, "")
    if not lib.is_file():
        return None
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        return f"its library cannot load: {_first_line(exc)}"
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
            f" ({_probe(PROVIDERS[choice])}); use --provider auto or cpu, or fix the"
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
    cache = _cache_dir() / "trt"
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


def _cache_dir() -> Path:
    home = os.environ.get("EDGESEG_HOME")
    return Path(home) if home else Path.home() / ".cache" / "edgeseg"


def create_session(
    path: str | Path,
    provider: str = "auto",
    threads: int | None = None,
    trt_options: dict[str, Any] | None = None,
) -> tuple[Any, str]:
    """An ``onnxruntime.InferenceSession`` for an edgeseg model, and who really runs it.

    Args:
        path: the ONNX file; checked with :func:`read_model_info` first.
        provider: ``auto|cpu|cuda|tensorrt`` (see :func:`resolve_providers`).
        threads: intra-op threads; None lets onnxruntime use one per physical core.
        trt_options: overrides merged over :func:`default_trt_options`.

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
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # NCHWc needs it
    # Measured paired against the defaults on 2 cores (bench/bench_levers.py): no spinning
    # 1.07x and no memory pattern 1.04x faster, the latter also -14 MB peak RSS (fp32).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=chain, enable_fallback=0)
    except Exception as exc:  # IR version too new, unsupported op, TensorRT build failure
        raise EdgesegError(
            f"{path}: onnxruntime {ort.__version__} cannot load this model"
            f" ({_first_line(exc)}); re-export it with `edgeseg export` or try --provider cpu"
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
