"""fp16 for an exported edgeseg model: the converted file, and a real float16 run to check it.

* :func:`convert_fp16`: onnxconverter-common's float16 converter with float32 inputs and
  outputs; the nodes computed from the image alone (:func:`edgeseg.export.quantize_nodes.image_nodes`:
  the normalisation and contract 3's frame shifts) stay float32, since the normalisation's
  sums of ~155k raw intensities (squared) overflow float16's 65504.
* :func:`fp16_activation_check`: PyTorch runs the model in float16 (normalisation float32),
  because ORT on x86 CPU computes an fp16 file's activations in float32 and so shows only
  weight rounding; the parity report's fp16 headroom and agreement come from here.

Used by ``edgeseg export --fp16`` (:func:`edgeseg.export.onnx.export_model`) and the parity check.
Split from :mod:`edgeseg.export.quantize` (507 lines), which keeps the int8 calibration.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.export.quantize_nodes import image_nodes, internal_tensors

if TYPE_CHECKING:
    import torch

    from edgeseg.model import UNet

FP16_MAX = 65504.0  # largest finite float16


def convert_fp16(src: Path, dst: Path) -> Path:
    """Write the float16 version of an fp32 edgeseg ONNX (float32 I/O, float32 normalisation).

    The converter types every tensor that has a value_info entry as float16 and casts a
    blocked node's outputs down to it, even between two blocked nodes: ``x - mean`` of raw
    intensities (up to ~1e5) would pass through float16 and overflow. Dropping the
    value_info of tensors that only flow between blocked nodes keeps them float32.
    """
    import onnx
    from onnxconverter_common.float16 import convert_float_to_float16

    from edgeseg.artifacts import save_onnx, set_metadata

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    meta = {p.key: p.value for p in proto.metadata_props}
    blocked = set(image_nodes(proto))  # the normalisation, the frame's shifts, the image's Shape
    inside = internal_tensors(proto, blocked)
    kept = [vi for vi in proto.graph.value_info if vi.name not in inside]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    with warnings.catch_warnings():  # one warning per tiny weight it lifts to 1e-7 (no subnormals)
        warnings.simplefilter("ignore", UserWarning)
        fp16 = convert_float_to_float16(
            proto, keep_io_types=True, node_block_list=sorted(blocked), disable_shape_infer=True
        )
    fp16.ir_version = proto.ir_version
    set_metadata(fp16, {**meta, "edgeseg.precision": "fp16"})
    return save_onnx(fp16, dst)


@dataclass
class Fp16Check:
    """PyTorch float16 run of the model (normalisation in float32): the real fp16 error."""

    slices: int
    max_activation: float
    max_activation_layer: str
    headroom: float  # 65504 / max |activation|
    max_abs_logit_diff: float
    agreement: float
    finite: bool


def fp16_activation_check(model: UNet, inputs: list[np.ndarray]) -> Fp16Check:
    """PyTorch CPU float16 run (normalisation in float32, as in the fp16 ONNX): real fp16 error.

    ORT on x86 CPU turns an fp16 model's weights back to float32 (onnxruntime#16778), so
    the ORT rows show only weight rounding; this run computes the activations in float16.

    Returns:
        max |activation| of any layer and its headroom to 65504, max |Δlogit| and label
        agreement against the fp32 model, and whether anything overflowed (inf/NaN).
    """
    import copy

    import torch

    half = copy.deepcopy(model).float().eval().half()
    half.normalize = _fp32_normalize(model.normalize)
    peak = {"value": 0.0, "layer": ""}

    def hook(module: torch.nn.Module, _: Any, out: torch.Tensor) -> None:
        value = float(out.detach().float().abs().max())
        if not value <= peak["value"]:  # NaN/inf propagate into the report
            peak.update(value=value, layer=names[module])

    names = {m: n for n, m in half.named_modules() if n and not list(m.children())}
    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.inference_mode():
            logits16 = [half(torch.from_numpy(x)).float().numpy() for x in inputs]
    finally:
        for h in handles:
            h.remove()
    from edgeseg.model import reference_logits

    ref = reference_logits(model, inputs)
    finite = all(np.isfinite(x).all() for x in logits16) and np.isfinite(peak["value"])
    agree = np.mean(np.concatenate([(a.argmax(1) == b.argmax(1)).ravel() for a, b in zip(logits16, ref, strict=True)]))
    return Fp16Check(
        slices=int(sum(len(x) for x in inputs)),
        max_activation=peak["value"],
        max_activation_layer=peak["layer"],
        headroom=FP16_MAX / max(peak["value"], 1e-30),
        max_abs_logit_diff=float(max(np.abs(a - b).max() for a, b in zip(logits16, ref, strict=True))),
        agreement=float(agree),
        finite=bool(finite),
    )


def _fp32_normalize(normalize: torch.nn.Module) -> torch.nn.Module:
    """The model's own normalisation in float32 (its sums overflow float16), handing on float16."""
    import copy

    import torch

    inner = copy.deepcopy(normalize).float()

    class Fp32Normalize(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return inner(x.float()).half()

    return Fp32Normalize()
