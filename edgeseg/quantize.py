"""Reduced precision for an exported edgeseg model: fp16 conversion and int8 static QDQ.

Used by ``edgeseg export --fp16 / --int8`` (:func:`edgeseg.export.export_model`).

* :func:`convert_fp16`: onnxconverter-common's float16 converter with float32 inputs and
  outputs; the in-graph normalisation (:func:`normalization_nodes`) stays float32, since its
  sums of ~155k raw intensities (squared) overflow float16's 65504.
* :func:`quantize_int8`: ORT ``quant_pre_process`` (``skip_symbolic_shape=True``: symbolic
  shape inference cannot follow the run-time pad) then ``quantize_static``: QDQ, per-channel
  int8 weights, uint8 activations (U8S8, the fast CPU path) with ``reduce_range`` (AVX2
  without VNNI can saturate U8S8 products), calibrated on real training slices. The
  normalisation stays float32 (quantising raw intensities to 256 levels would lose detail).
  For TensorRT, ``symmetric=True`` gives S8S8 with zero-point 0, which TensorRT requires.
* :func:`choose_int8`: tries MinMax, Entropy and Percentile calibration and keeps the one
  whose model loses the least mIoU on the validation slices; also times int8 against fp32
  on CPU (QDQ can be slower than fp32, onnxruntime#20052).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.errors import EdgesegError

if TYPE_CHECKING:
    import onnx

    from edgeseg.parity import EvalData

CALIB_METHODS = ("minmax", "entropy", "percentile")
SELECT_SLICES = 6  # 394² validation slices that score each calibration method
LATENCY_RUNS = 5  # timed runs (after one warm-up) for the int8 vs fp32 latency


def normalization_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes computing the first Conv's input from the image: the normalisation.

    Found structurally (ancestors of the first Conv's data input), so it survives onnxslim
    renaming nodes or dropping their metadata. Unnamed nodes get names first.
    """
    producers = {}
    for i, node in enumerate(proto.graph.node):
        node.name = node.name or f"edgeseg_node_{i}"
        producers.update({out: node for out in node.output})
    conv = next((n for n in proto.graph.node if n.op_type == "Conv"), None)
    if conv is None:
        raise EdgesegError("the graph has no Conv node; is this an edgeseg U-Net export?")
    found: dict[str, None] = {}
    stack = [conv.input[0]]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in found:
            found[node.name] = None
            stack.extend(node.input)
    return list(found)


def convert_fp16(src: Path, dst: Path) -> Path:
    """Write the float16 version of an fp32 edgeseg ONNX (float32 I/O, float32 normalisation)."""
    import onnx
    from onnxconverter_common.float16 import convert_float_to_float16

    from edgeseg.export import save_onnx, set_metadata

    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    fp16 = convert_float_to_float16(
        proto, keep_io_types=True, node_block_list=normalization_nodes(proto)
    )
    fp16.ir_version = proto.ir_version
    set_metadata(fp16, {**meta, "edgeseg.precision": "fp16"})
    return save_onnx(fp16, dst)


class SliceReader:
    """ORT CalibrationDataReader over real slices, one ``(1, 1, H, W)`` input at a time.

    ``set_range``/``__len__`` let quantize_static collect one slice per pass
    (``CalibStridedMinMax``), so histogram calibrators never hold every activation of every
    slice in memory at once.
    """

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self.images[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iter, None)
        return None if image is None else {"image": image[None, None].astype(np.float32)}


def quantize_int8(
    src: Path, dst: Path, calib_images: list[np.ndarray], method: str = "minmax",
    symmetric: bool = False,
) -> Path:
    """Static QDQ int8 model from an fp32 edgeseg ONNX, calibrated on ``calib_images``.

    Args:
        src: the fp32 file.
        dst: the int8 file to write.
        calib_images: real training slices, float32 (H, W) raw intensities.
        method: ``minmax``, ``entropy`` or ``percentile``.
        symmetric: S8S8 with zero-points 0 (TensorRT); default U8S8 + reduce_range (CPU).

    Returns:
        ``dst``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeseg.export import save_onnx, set_metadata

    if method not in CALIB_METHODS:
        raise EdgesegError(f"calibration method {method!r}: choose auto, {', '.join(CALIB_METHODS)}")
    if not calib_images:
        raise EdgesegError(f"{src}: no training slices to calibrate int8 with; pass --data")
    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    with tempfile.TemporaryDirectory(prefix="edgeseg-int8-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(out), SliceReader(calib_images), quant_format=QuantFormat.QDQ,
            per_channel=True, reduce_range=not symmetric,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=normalization_nodes(onnx.load(str(pre))),
            calibrate_method=getattr(CalibrationMethod, {"minmax": "MinMax"}.get(
                method, method.capitalize())),
            extra_options={"CalibStridedMinMax": 1, "ActivationSymmetric": symmetric,
                           "WeightSymmetric": True},
        )
        int8 = onnx.load(str(out))
    int8.ir_version = min(int8.ir_version, proto.ir_version)
    set_metadata(int8, {**meta, "edgeseg.precision": "int8"})
    return save_onnx(int8, dst)


def choose_int8(
    src: Path, dst: Path, data: EvalData, model: Any, calib: int = 32, method: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    """Quantise with each calibration method and keep the best by ΔmIoU on validation slices.

    Args:
        src: the fp32 ONNX file.
        dst: where the chosen int8 model goes.
        data: held-out slices (scoring) and training slices (calibration).
        model: the checkpoint's PyTorch model, the reference for ΔmIoU.
        calib: number of training slices to calibrate on (evenly spread).
        method: ``auto`` (try all) or one of :data:`CALIB_METHODS`.
        threads: ORT threads for scoring and timing.

    Returns:
        ``{"method", "calib_slices", "candidates": {method: {d_miou, agreement, seconds}},
        "latency_ms": {"fp32", "int8"}}``.
    """
    from edgeseg.parity import pick

    methods = CALIB_METHODS if method == "auto" else (method,)
    calib_images = pick(data.train_images, calib)
    score_rows = _score_rows(data, model)
    results: dict[str, dict[str, Any]] = {}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeseg-calib-", dir=Path(dst).parent) as tmp:
        for name in methods:
            start = time.perf_counter()
            path = quantize_int8(src, Path(tmp) / f"{name}.onnx", calib_images, name)
            results[name] = {**_score(path, score_rows, threads),
                             "seconds": round(time.perf_counter() - start, 1)}
        best = min(results, key=lambda m: (abs(results[m]["d_miou"] or 0.0),
                                           -results[m]["agreement"]))
        os.replace(Path(tmp) / f"{best}.onnx", dst)  # same folder: an atomic rename
    return {
        "method": best, "calib_slices": len(calib_images), "candidates": results,
        "latency_ms": {"fp32": cpu_latency_ms(src, threads), "int8": cpu_latency_ms(dst, threads)},
    }


def _score_rows(data: EvalData, model: Any) -> dict[str, Any]:
    """The 394² validation batch and its PyTorch reference logits, for scoring methods."""
    from edgeseg.parity import reference_logits, size_batches

    row = size_batches(data, ((394, 394, SELECT_SLICES, 2),))[0]
    row["ref"] = reference_logits(model, row["inputs"])
    return row


def _score(path: Path, row: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """ΔmIoU and label agreement of one int8 candidate against the PyTorch reference."""
    from edgeseg.parity import compare, run_session
    from edgeseg.runtime import create_session, read_model_info

    session, _ = create_session(path, provider="cpu", threads=threads)
    logits, labels = run_session(session, row["inputs"])
    numbers = compare(row["ref"], logits, labels, row["masks"],
                      read_model_info(path).class_names)
    return {"d_miou": numbers["d_miou"], "agreement": numbers["agreement"],
            "max_abs": numbers["max_abs"]}


def cpu_latency_ms(path: Path, threads: int | None = None, shape: tuple[int, ...] = (1, 1, 394, 394)) -> float:
    """Median ``session.run`` time on ORT CPU after one warm-up, in milliseconds."""
    from edgeseg.runtime import create_session

    session, _ = create_session(path, provider="cpu", threads=threads)
    x = np.random.default_rng(0).gamma(2.0, 300.0, shape).astype(np.float32)
    session.run(None, {"image": x})
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 2)
