"""The ``c-openvino`` backend: ``libedgeseg`` (csrc/, OpenVINO's C API) loaded through ctypes.

    from edgeseg.runtime.cbackend import CModel
    with CModel("export/model.onnx", threads=2) as model:
        labels = model.segment(images)          # (N, H, W) or (H, W) raw intensities -> uint8

Build the library first with ``edgeseg build-c`` (or point ``$EDGESEG_CLIB`` at a build).
Imports numpy and ctypes only: no torch, no onnxruntime, no openvino Python module.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache
from pathlib import Path
from types import TracebackType

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.cbuild import default_library

PRECISIONS = {"f32": 0, "bf16": 1, "int8": 2}  # edgeseg_precision in csrc/include/edgeseg.h
SHAPES = {"static": 0, "dynamic": 1}  # edgeseg_shapes in csrc/include/edgeseg.h
FILE_PRECISION = {"fp32": "f32", "fp16": "f32", "int8": "int8"}  # bench's file precision -> ours
ERROR_SIZE = 512  # EDGESEG_ERROR_SIZE


@cache
def load_library(path: Path) -> ctypes.CDLL:
    """Load ``libedgeseg.so`` once per path and declare its functions' C types."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise EdgesegError(
            f"{path}: cannot load libedgeseg ({exc}); run `edgeseg build-c` or set"
            " EDGESEG_CLIB to a built libedgeseg.so"
        ) from None
    handle, size, text = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    signatures = {
        "edgeseg_open_shapes": (
            ctypes.c_int,
            [text, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(handle), ctypes.c_char_p, size],
        ),
        "edgeseg_segment": (ctypes.c_int, [handle, ctypes.c_void_p, size, size, size, ctypes.c_void_p]),
        "edgeseg_metadata": (text, [handle, text]),
        "edgeseg_num_classes": (ctypes.c_int, [handle]),
        "edgeseg_class_name": (text, [handle, ctypes.c_int]),
        "edgeseg_min_size": (ctypes.c_int, [handle]),
        "edgeseg_pixel_spacing_mm": (ctypes.c_double, [handle]),
        "edgeseg_format": (text, [handle]),
        "edgeseg_backend": (text, [handle]),
        "edgeseg_last_error": (text, [handle]),
        "edgeseg_close": (None, [handle]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def why_unavailable(library: Path | None = None) -> str | None:
    """The reason the ``c-openvino`` backend cannot run here, or None if it can."""
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install openvino), and libedgeseg links its wheel"
    path = Path(library) if library else default_library()
    if not path.is_file():
        return f"{path.name} not built ({path}); run `edgeseg build-c`"
    try:
        load_library(path)
    except EdgesegError as exc:
        return str(exc)
    return None


class CModel:
    """An edgeseg ONNX model opened by ``libedgeseg`` on OpenVINO's CPU plugin.

    Args:
        path: the ``.onnx`` file (``X_int8.onnx`` with precision ``int8``).
        threads: inference threads; 0 = OpenVINO's default (one per physical core).
        precision: ``f32``, ``bf16`` (refused with the reason on CPUs without it) or ``int8``.
        shapes: ``static`` compiles once per input shape (faster when shapes repeat, the last two
            kept); ``dynamic`` compiles once, with the file's dynamic shapes.
        library: the ``libedgeseg.so``; default :func:`edgeseg.runtime.cbuild.default_library`.

    Raises:
        EdgesegError: the library cannot load, or libedgeseg refuses the model (its message).
    """

    def __init__(
        self,
        path: str | Path,
        threads: int = 0,
        precision: str = "f32",
        library: Path | None = None,
        shapes: str = "static",
    ) -> None:
        if precision not in PRECISIONS:
            raise EdgesegError(f"precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if shapes not in SHAPES:
            raise EdgesegError(f"shapes {shapes!r}; choose one of {', '.join(SHAPES)}")
        self._lib = load_library(Path(library) if library else default_library())
        self._handle = ctypes.c_void_p()
        error = ctypes.create_string_buffer(ERROR_SIZE)
        status = self._lib.edgeseg_open_shapes(
            str(path).encode(),
            int(threads),
            PRECISIONS[precision],
            SHAPES[shapes],
            ctypes.byref(self._handle),
            error,
            ERROR_SIZE,
        )
        if status != 0:
            raise EdgesegError(error.value.decode(errors="replace"))

    def segment(self, images: np.ndarray) -> np.ndarray:
        """Labels of ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` raw intensities (made float32).

        Returns:
            uint8 ``(H, W)`` for one slice, else ``(N, H, W)``.

        Raises:
            EdgesegError: another shape, or NaN/Inf in a slice (libedgeseg's check, which names it).
        """
        shape = np.shape(images)  # before ascontiguousarray, which makes a 0-d array 1-d
        x = np.ascontiguousarray(images, dtype=np.float32)
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if len(shape) not in (2, 3, 4) or x.ndim not in (2, 3):
            raise EdgesegError(f"array of shape {shape}; expected (H, W), (N, H, W) or (N, 1, H, W)")
        stack = x[None] if x.ndim == 2 else x
        labels = np.empty(stack.shape, np.uint8)
        status = self._lib.edgeseg_segment(self._live(), stack.ctypes.data, *stack.shape, labels.ctypes.data)
        if status != 0:
            raise EdgesegError(self._lib.edgeseg_last_error(self._handle).decode(errors="replace"))
        return labels[0] if x.ndim == 2 else labels

    def metadata(self, key: str) -> str | None:
        """The file's metadata value for ``key`` (e.g. ``edgeseg.normalization``); None if absent."""
        value = self._lib.edgeseg_metadata(self._live(), key.encode())
        return None if value is None else value.decode()

    @property
    def class_names(self) -> tuple[str, ...]:
        n = self._lib.edgeseg_num_classes(self._live())
        return tuple(self._lib.edgeseg_class_name(self._handle, i).decode() for i in range(n))

    @property
    def min_size(self) -> int:
        return int(self._lib.edgeseg_min_size(self._live()))

    @property
    def pixel_spacing_mm(self) -> float | None:
        """mm per pixel the model was trained at; None when the file leaves it unknown."""
        mm = float(self._lib.edgeseg_pixel_spacing_mm(self._live()))
        return mm if mm > 0 else None

    @property
    def format(self) -> str:
        return self._lib.edgeseg_format(self._live()).decode()

    @property
    def backend(self) -> str:
        """What runs it, read back from the compiled model.

        E.g. ``OpenVINO 2026.4.1 CPU, f32, 2 threads, static shapes``.
        """
        return self._lib.edgeseg_backend(self._live()).decode()

    def close(self) -> None:
        """Free the model; further calls raise EdgesegError."""
        if self._handle:
            self._lib.edgeseg_close(self._handle)
            self._handle = ctypes.c_void_p()

    def _live(self) -> ctypes.c_void_p:
        if not self._handle:
            raise EdgesegError("this CModel is closed; open the model again")
        return self._handle

    def __enter__(self) -> CModel:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None):
            self.close()
