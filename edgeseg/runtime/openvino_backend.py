"""OpenVINO's CPU plugin on edgeseg's ONNX files, torch-free: what each precision asks for, and what ran.

:class:`edgeseg.runtime.runners.OpenVinoRunner` (``RunnerSpec(backend="openvino")``) compiles with
:func:`openvino_config`:

* ``fp32``: ``X.onnx`` with ``INFERENCE_PRECISION_HINT=f32``. The hint is explicit because
  OpenVINO's CPU default is bf16 wherever the CPU has it (AVX512-BF16 or AMX).
* ``bf16``: ``X.onnx`` with the bf16 hint, only on a CPU with AVX512-BF16 or AMX; elsewhere
  :func:`openvino_config` refuses it with the reason (OpenVINO would quietly run f32 or emulate).
* ``int8``: our QDQ ``X_int8.onnx``; OpenVINO's low-precision transformations turn its
  Q/DQ pairs into u8/i8 kernels, and the layers we keep float run f32 (the hint). ``fp32`` or
  ``bf16`` on that file also run its quantised convs in int8, with that hint for the rest.
* ``default``: no hints at all, what a user gets from ``compile_model(path, "CPU")``: the peer
  that ``edgeseg tune`` compares with.

Two modes (``RunnerSpec.hint``): ``latency`` (the default) compiles for one synchronous request
at a time, all threads on it; ``throughput`` asks for OpenVINO's THROUGHPUT hint and runs a
batch's slices as parallel requests, one per CPU stream (``NUM_STREAMS``: 0 lets OpenVINO choose,
else that many), for batched volumes where no single slice waits.

What really ran is read back from the compiled model's runtime graph (each Convolution's
``runtimePrecision``), never assumed from the hint: :func:`ran_precision`.

Compiled graphs go to OpenVINO's model cache (``CACHE_DIR``), so a new process does not pay a
compile (0.3-0.6 s a shape) for a shape it met before: :func:`model_cache_dir` gives
``<cache folder>/openvino`` (:func:`edgeseg.files.cache_dir`), trimmed to :data:`CACHE_CAP_MB`
(oldest files first); ``EDGESEG_OPENVINO_CACHE=off`` turns it off, a folder path moves it; a
folder that cannot be written means no cache, never a failure.

Peak RSS (issue 24, the AMD EPYC, AVX2, OpenVINO 2026.4, the int8 file at 394², 2 threads, a bare
script; the machine was shared, RSS does not depend on the load): the interpreter and numpy
25 MB, ``import openvino`` 53, ``read_model`` 67, ``compile_model`` 124, the first inference 152
(its activations and scratch; 141 at 320², 136 at 256²), steady 152. Of the 152, the plugin's and
the runtime's code pages are 41 MB and the heap and anonymous maps 75 MB. Compile properties moved
nothing (``ENABLE_MMAP``, ``NUM_STREAMS=1``, ``INFERENCE_NUM_THREADS=1``,
``CPU_DENORMALS_OPTIMIZATION``, ``CPU_RUNTIME_CACHE_CAPACITY=0``, ``ENABLE_CPU_PINNING=false``,
reading from bytes: all 152); what did: glibc keeps the heap that reading and transforming the
graph freed, so :func:`release_heap` after each compile gives it back (148), and a graph imported
from the model cache leaves less behind than a compile (147; both 143). ``MALLOC_ARENA_MAX=1``
gave 147 alone and nothing on top of those. And :func:`import_openvino` leaves out OpenVINO's
model-conversion tools, which ``import openvino`` brings and inference never uses: 15 MB less after
the import, 9 MB less at the runner's peak (int8 148 -> 139 MB compiled, 144 -> 135 from the cache;
fp32 157 -> 147).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError
from edgeseg.files import cache_dir

PRECISIONS = ("fp32", "bf16", "int8", "default")
MODES = ("latency", "throughput")
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the layers kept float run f32
LOW = {"u8": "int8", "i8": "int8", "bf16": "bf16", "f16": "fp16"}  # runtimePrecision -> our name
CACHE_ENV = "EDGESEG_OPENVINO_CACHE"  # off (or 0, no, false): no model cache; an absolute path: that folder
CACHE_OFF = ("off", "0", "no", "false")
# A compiled blob of the shipped model is a few MB; every (file, shape, precision) adds one.
CACHE_CAP_MB = 256  # $EDGESEG_OPENVINO_CACHE_MB overrides it


def model_cache_dir(cap_mb: int | None = None) -> Path | None:
    """The folder for OpenVINO's ``CACHE_DIR``, trimmed to ``cap_mb``; None when opted out or not writable.

    ``$EDGESEG_OPENVINO_CACHE``: unset or empty, ``<cache folder>/openvino``; ``off``, no cache;
    an absolute path, that folder (a relative one is ignored, as XDG ignores one).
    ``cap_mb``: None reads ``$EDGESEG_OPENVINO_CACHE_MB`` (a whole number), else :data:`CACHE_CAP_MB`.
    """
    if cap_mb is None:
        text = os.environ.get("EDGESEG_OPENVINO_CACHE_MB", "").strip()
        cap_mb = int(text) if text.isdigit() else CACHE_CAP_MB
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in CACHE_OFF:
        return None
    folder = Path(value) if os.path.isabs(value) else cache_dir() / "openvino"
    try:  # read-only home, a file in the way, a full disk: run uncached
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return None
    trim_cache(folder, cap_mb << 20)
    return folder


def import_openvino() -> Any:
    """``import openvino`` without its model-conversion tools (``openvino.tools.ovc``, for
    ``convert_model``), which its ``__init__`` imports when it can and edgeseg never calls: on the
    AMD EPYC that import was 15 MB of peak RSS (54.6 -> 39.8 MB after ``import openvino``) and
    0.6 s under load. Blocking a module with a ``None`` in ``sys.modules`` is Python's own way; the
    ``__init__`` catches the ImportError, and the block is lifted at once, so a later
    ``import openvino.tools.ovc`` works as usual. Raises ImportError when OpenVINO is not installed."""
    import sys

    if sys.modules.get("openvino") is not None:  # imported already (a None entry: blocked, import raises)
        return sys.modules["openvino"]
    block = "openvino.tools.ovc" not in sys.modules
    if block:
        sys.modules["openvino.tools.ovc"] = None  # type: ignore[assignment]
    try:
        import openvino
    finally:
        if block and "openvino.tools.ovc" in sys.modules and sys.modules["openvino.tools.ovc"] is None:
            del sys.modules["openvino.tools.ovc"]
    return openvino


def release_heap() -> None:
    """Give the heap that glibc holds after a compile back to the system (``malloc_trim``); elsewhere
    (musl, macOS, Windows) nothing. Costs a few ms, once a compiled shape."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def trim_cache(folder: Path, cap_bytes: int) -> int:
    """Delete the oldest files of ``folder`` until it holds at most ``cap_bytes``; the bytes kept."""
    files = []
    for entry in os.scandir(folder):
        try:
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                files.append((st.st_mtime, st.st_size, entry.path))
        except OSError:  # removed meanwhile by another process trimming the same folder
            continue
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= cap_bytes:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        total -= size
    return total


def openvino_config(
    precision: str,
    threads: int,
    file_precision: str,
    has_bf16: bool,
    cpu: str,
    hint: str = "latency",
    streams: int = 0,
) -> dict[str, Any]:
    """``compile_model`` properties for one precision, or EdgesegError saying why it cannot run.

    Args:
        precision: fp32 | bf16 | int8 | default.
        threads: ``INFERENCE_NUM_THREADS``; 0 = OpenVINO's default.
        file_precision: the file's ``edgeseg.precision`` (``int8`` needs the QDQ file).
        has_bf16: the CPU has AVX512-BF16 or AMX (:attr:`edgeseg.machine.Fingerprint.has_bf16`).
        cpu: the CPU's model name, for the refusal.
        hint: ``latency`` or ``throughput`` (see the module's text).
        streams: ``NUM_STREAMS`` in throughput mode; 0 = OpenVINO's choice.
    """
    if hint not in MODES:
        raise EdgesegError(f"OpenVINO mode {hint!r}: choose one of {', '.join(MODES)}")
    if streams < 0 or (streams and hint != "throughput"):
        raise EdgesegError(f"OpenVINO streams={streams}: give 0, or a positive count with the throughput mode")
    if precision not in PRECISIONS:
        raise EdgesegError(f"OpenVINO precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not has_bf16:
        raise EdgesegError(
            f"OpenVINO bf16 needs a CPU with AVX512-BF16 or AMX; this one ({cpu}) has neither: use fp32 or int8"
        )
    if precision == "int8" and file_precision != "int8":
        raise EdgesegError(
            f"OpenVINO int8 runs the QDQ file X_int8.onnx (edgeseg export --int8), not an {file_precision} file"
        )
    if precision == "default":
        return {} if hint == "latency" else {"PERFORMANCE_HINT": "THROUGHPUT"}
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": HINTS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if streams:
        config["NUM_STREAMS"] = int(streams)
    return config


def ran_precision(compiled: Any) -> tuple[str, str]:
    """``(precision, detail)`` of a compiled model, from its convolutions' runtime precisions.

    ``precision`` is the lowest one any convolution runs in (int8 < bf16 < fp16 < fp32);
    ``detail`` counts them, e.g. ``"19/21 convs u8, 2 f32"``.
    """
    kinds: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else ""
        if layer in ("Convolution", "Deconvolution") and "runtimePrecision" in info:
            kinds[info["runtimePrecision"].astype(str)] += 1
    total = sum(kinds.values())
    ran = next((LOW[k] for k in ("u8", "i8", "bf16", "f16") if kinds.get(k)), "fp32")
    detail = ", ".join(
        f"{n}/{total} convs {k}" if i == 0 else f"{n} {k}" for i, (k, n) in enumerate(kinds.most_common())
    )
    return ran, detail or "no convolutions"
