"""ExecuTorch export: ``X.pte`` (fp32) and ``X_int8.pte`` (PT2E int8) for XNNPACK, with dynamic H x W.

    edgeseg export CKPT --executorch      (needs ``pip install 'edgeseg[executorch]'``)

The ``.pte`` files are for embedded C++ deployments (Arm boards, phones) through ExecuTorch's
C++ runtime, which needs no torch; ``edgeseg infer`` never runs them. Both files take
``image`` float32 ``(1, 1, H, W)`` raw intensities, H and W in ``[min_size, MAX_SIDE]``, and
return ``(logits (1, C, H, W) float32, labels (1, H, W) uint8)`` like the ONNX file.

* fp32: ``torch.export`` with named dynamic H, W -> ``to_edge_transform_and_lower`` with the
  XNNPACK partitioner -> ``to_executorch``.
* int8: PT2E with ``XNNPACKQuantizer`` (symmetric, per-channel weights), calibrated on the same
  real training slices and crops as the ONNX int8 file (:func:`edgeseg.export.quantize.calibration_set`).
  As there, the normalisation, the first and the last conv stay float: quantised, they flip
  labels where gray and white matter meet (95-97 % agreement instead of > 99 % here).
  :func:`choose_pte_int8` calibrates the activations with each of :data:`ACT_OBSERVERS`, runs
  each lowered file through ExecuTorch on the held-out slices of
  :data:`edgeseg.export.quantize.SCORE_SIZES` and keeps the smallest worst |ΔmIoU|, as
  :func:`edgeseg.export.quantize.choose_int8` does for the ONNX file. On the shipped model XNNPACK's
  default, a histogram observer, clipped the activations of 64x64 brain crops (ΔmIoU +0.0079
  on 16 of them) where min/max ranges kept them (-0.0000).

``edgeseg export`` then validates them with the ONNX files (:func:`edgeseg.export.parity.validate`),
through ExecuTorch's Python runtime (``RunnerSpec("executorch")``, which imports torch: export
time only), at every parity size, gated like the ONNX files of their precision.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.export.quantize import Int8Candidate
from edgeseg.files import atomic_write

if TYPE_CHECKING:
    import torch

    from edgeseg.data.split import HeldOut
    from edgeseg.model import UNet

MAX_SIDE = 1024  # largest H and W: ExecuTorch plans its memory for the largest shape
FLOAT_MODULES = ("normalize", "stem.block.0", "head")  # kept float in X_int8.pte (see module doc)
ACT_OBSERVERS = ("minmax", "histogram")  # activation range observers tried for X_int8.pte
INSTALL = "pip install 'edgeseg[executorch]'"


def require_executorch() -> str:
    """ExecuTorch's version, or EdgesegError naming the install command."""
    try:
        from executorch.version import __version__
    except ImportError as exc:
        raise EdgesegError(f"--executorch needs ExecuTorch, which is not installed ({exc}); {INSTALL}") from exc
    return str(__version__)


@contextlib.contextmanager
def _quiet_import_warnings() -> Iterator[None]:
    """Silence warnings that ExecuTorch's first import logs and that concern no edgeseg user.

    torchao logs "Failed to load ..." for each CUDA kernel library that a CPU build of torch
    cannot load (none is used here), and torch's pytree logs a deprecation for one of torchao's
    enums. Errors still show.
    """
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def export_pte(model: UNet, out: Path, calib_images: list[np.ndarray] | None = None, observer: str = "minmax") -> Path:
    """Write one ``.pte``: fp32, or int8 when ``calib_images`` (raw float32 (H, W) slices) are given.

    Args:
        model: the checkpoint's model (eval mode); its inference form is exported.
        out: the ``.pte`` to write (atomically).
        calib_images: training slices and crops for PT2E calibration; None = fp32.
        observer: int8 activation ranges, one of :data:`ACT_OBSERVERS`.

    Returns:
        ``out``.
    """
    import torch

    with _quiet_import_warnings():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    from edgeseg.model import inference_form, with_labels

    fused = inference_form(model)
    fused.frame_form = "remainder"  # the same frame, in a form torch.export proves for every H, W
    net = with_labels(fused)
    side = model.config.min_size
    # A freshly allocated, normally strided example: a zero-stride view makes to_executorch() fail.
    example = (torch.rand(1, model.config.in_channels, 2 * side + 1, 2 * side + 3) * 600.0).contiguous()
    dims = {
        "image": {2: torch.export.Dim("H", min=side, max=MAX_SIDE), 3: torch.export.Dim("W", min=side, max=MAX_SIDE)}
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (example,), dynamic_shapes=dims)
        if calib_images is not None:
            quantized = _quantized(program, calib_images, observer)
            program = torch.export.export(quantized, (example,), dynamic_shapes=dims)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    atomic_write(Path(out), lambda tmp: tmp.write_bytes(lowered.buffer))
    return Path(out)


def _quantized(program: Any, calib_images: list[np.ndarray], observer: str) -> torch.nn.Module:
    """PT2E: annotate with XNNPACKQuantizer (FLOAT_MODULES left float), calibrate, convert."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    def quantise(node: torch.fx.Node) -> bool:
        stack = node.meta.get("nn_module_stack") or {}
        names = [str(entry[0]).removeprefix("L['self'].").removeprefix("net.") for entry in stack.values()]
        # Ops of the top-level forward stay float: contract 3's aligned frame (the shifted windows
        # of the input and of the logits, exact 0/1-weighted sums) and the argmax. Quantising the
        # logits' window flipped labels (int8 |ΔmIoU| up to 0.038 on the shipped model).
        # (A node with no module stack at all, a weight or a bias, follows its conv.)
        inner = [n for n in names if n not in ("L['self']", "net", "")]
        if names and not inner:
            return False
        return not any(n == f or n.startswith(f"{f}.") for n in inner for f in FLOAT_MODULES)

    quantizer = XNNPACKQuantizer().set_global(_int8_config(observer))
    quantizer.set_filter_function(quantise)
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for image in calib_images:
            prepared(torch.from_numpy(np.array(image, np.float32, copy=True)[None, None]))
    return convert_pt2e(prepared)


def _int8_config(observer: str) -> Any:
    """XNNPACK's symmetric per-channel config, its activation observer set to ``observer``."""
    from dataclasses import replace

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver

    if observer not in ACT_OBSERVERS:
        raise EdgesegError(f"int8 activation observer '{observer}': choose one of {', '.join(ACT_OBSERVERS)}")
    config = get_symmetric_quantization_config(is_per_channel=True)
    kind = {"minmax": MinMaxObserver, "histogram": HistogramObserver}[observer]
    act = replace(config.input_activation, observer_or_fake_quant_ctr=kind.with_args(eps=2**-12))
    return replace(config, input_activation=act, output_activation=act)


@dataclass
class PteInt8Choice:
    """What :func:`choose_pte_int8` tried and kept (also in parity.json as ``pte_int8``)."""

    observer: str  # the activation observer kept
    calib_slices: int
    calib_inputs: int  # slices plus crops
    candidates: dict[str, Int8Candidate]  # observer -> its scores through ExecuTorch


def choose_pte_int8(model: UNet, out: Path, data: HeldOut, calib: int) -> PteInt8Choice:
    """Write ``X_int8.pte`` with each of :data:`ACT_OBSERVERS`; keep the smallest worst |ΔmIoU|.

    Each candidate runs through ExecuTorch's runtime on the held-out slices of
    :data:`edgeseg.export.quantize.SCORE_SIZES`, against the PyTorch model; ties go to label agreement.
    The candidates are lowered in a temporary folder beside ``out``, so the kept one is renamed
    into place atomically.
    """
    import tempfile
    import time

    from edgeseg.export.quantize import calibration_set, keep_best, score_int8, score_rows
    from edgeseg.runtime.runners import RunnerSpec

    calib_images = calibration_set(data.train_images, calib)
    rows = score_rows(data, model)
    spec = RunnerSpec("executorch", outputs=("logits", "labels"))
    results: dict[str, Int8Candidate] = {}
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=".edgeseg-pte-", dir=Path(out).parent) as tmp:
        for observer in ACT_OBSERVERS:
            start = time.perf_counter()
            files[observer] = export_pte(model, Path(tmp) / f"{observer}.pte", calib_images, observer)
            results[observer] = score_int8(files[observer], rows, spec, model.config.class_names, start)
        best = keep_best(results, files, Path(out))
    return PteInt8Choice(best, calib, len(calib_images), results)


def export_executorch(model: UNet, fp32_onnx: Path, data: HeldOut, calib: int) -> tuple[dict[str, Path], PteInt8Choice]:
    """Both ``.pte`` files beside ``fp32_onnx`` (``{"pte-fp32": X.pte, "pte-int8": X_int8.pte}``)
    and what the int8 choice tried."""
    from edgeseg.artifacts import ArtifactPaths

    require_executorch()
    paths = ArtifactPaths.of(fp32_onnx)
    fp32 = export_pte(model, paths.pte("fp32"))
    choice = choose_pte_int8(model, paths.pte("int8"), data, calib)
    return {"pte-fp32": fp32, "pte-int8": paths.pte("int8")}, choice
