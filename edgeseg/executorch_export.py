"""ExecuTorch export: ``X.pte`` (fp32) and ``X_int8.pte`` (PT2E int8) for XNNPACK, with dynamic H x W.

    edgeseg export CKPT --executorch      (needs ``pip install 'edgeseg[executorch]'``)

The ``.pte`` files are for embedded C++ deployments (Arm boards, phones) through ExecuTorch's
C++ runtime, which needs no torch; ``edgeseg infer`` never runs them. Both files take
``image`` float32 ``(1, 1, H, W)`` raw intensities, H and W in ``[min_size, MAX_SIDE]``, and
return ``(logits (1, C, H, W) float32, labels (1, H, W) uint8)`` like the ONNX file.

* fp32: ``torch.export`` with named dynamic H, W -> ``to_edge_transform_and_lower`` with the
  XNNPACK partitioner -> ``to_executorch``.
* int8: PT2E with ``XNNPACKQuantizer`` (symmetric, per-channel weights), calibrated on the same
  real training slices and crops as the ONNX int8 file (:func:`edgeseg.quantize.calibration_set`).
  As there, the normalisation, the first and the last conv stay float: quantised, they flip
  labels where gray and white matter meet (95-97 % agreement instead of > 99 % here).

``edgeseg export`` then validates them with the ONNX files (:func:`edgeseg.parity.validate`),
through ExecuTorch's Python runtime (``RunnerSpec("executorch")``, which imports torch: export
time only), at every parity size, gated like the ONNX files of their precision.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import atomic_write

if TYPE_CHECKING:
    import torch

    from edgeseg.model import UNet

MAX_SIDE = 1024  # largest H and W: ExecuTorch plans its memory for the largest shape
FLOAT_MODULES = ("normalize", "stem.block.0", "head")  # kept float in X_int8.pte (see module doc)
INSTALL = "pip install 'edgeseg[executorch]'"


def require_executorch() -> str:
    """ExecuTorch's version, or EdgesegError naming the install command."""
    try:
        from executorch.version import __version__
    except ImportError as exc:
        raise EdgesegError(f"--executorch needs ExecuTorch, which is not installed ({exc}); {INSTALL}") from exc
    return str(__version__)


def export_pte(model: UNet, out: Path, calib_images: list[np.ndarray] | None = None) -> Path:
    """Write one ``.pte``: fp32, or int8 when ``calib_images`` (raw float32 (H, W) slices) are given.

    Args:
        model: the checkpoint's model (eval mode); its inference form is exported.
        out: the ``.pte`` to write (atomically).
        calib_images: training slices and crops for PT2E calibration; None = fp32.

    Returns:
        ``out``.
    """
    import torch
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
            program = torch.export.export(_quantized(program, calib_images), (example,), dynamic_shapes=dims)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    atomic_write(Path(out), lambda tmp: tmp.write_bytes(lowered.buffer))
    return Path(out)


def _quantized(program: Any, calib_images: list[np.ndarray]) -> torch.nn.Module:
    """PT2E: annotate with XNNPACKQuantizer (FLOAT_MODULES left float), calibrate, convert."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
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

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(quantise)
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for image in calib_images:
            prepared(torch.from_numpy(np.array(image, np.float32, copy=True)[None, None]))
    return convert_pt2e(prepared)


def export_executorch(model: UNet, fp32_onnx: Path, train_images: list[np.ndarray], calib: int) -> dict[str, Path]:
    """Both ``.pte`` files beside ``fp32_onnx``: ``{"pte-fp32": X.pte, "pte-int8": X_int8.pte}``."""
    from edgeseg.artifacts import ArtifactPaths
    from edgeseg.quantize import calibration_set

    require_executorch()
    paths = ArtifactPaths.of(fp32_onnx)
    return {
        "pte-fp32": export_pte(model, paths.pte("fp32")),
        "pte-int8": export_pte(model, paths.pte("int8"), calibration_set(train_images, calib)),
    }
