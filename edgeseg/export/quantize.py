"""int8 for an exported edgeseg model: static QDQ, calibrated on real slices, chosen by ΔmIoU.

Used by ``edgeseg export --int8`` (:func:`edgeseg.export.onnx.export_model`); fp16 is
:mod:`edgeseg.export.quantize_fp16`, and what both keep float is :mod:`edgeseg.export.quantize_nodes`.

* :func:`quantize_int8`: ORT ``quant_pre_process`` (``skip_symbolic_shape=True``: symbolic
  shape inference cannot follow the run-time pad) then ``quantize_static``: QDQ, per-channel
  int8 weights, uint8 activations (U8S8, the fast CPU path), optionally ``reduce_range``
  (AVX2 without VNNI can saturate U8S8 products), calibrated on real training slices. The
  normalisation stays float32 (quantising raw intensities to 256 levels would lose detail).
  For TensorRT, ``symmetric=True`` gives S8S8 with zero-point 0, which TensorRT requires.
* :func:`choose_int8`: tries MinMax, Entropy and Percentile calibration, each with 7-bit
  (``reduce_range``) and 8-bit weights, and keeps the model with the smallest worst-case
  |ΔmIoU| over three sizes of held-out slices: whether saturation or range hurts more is
  measured, not assumed. Also times int8 against fp32 on CPU (QDQ can be slower than fp32,
  onnxruntime#20052). Calibration uses whole training slices plus centre crops.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.export.quantize_nodes import float_nodes
from edgeseg.runtime.measure import latency_stats, time_runs

if TYPE_CHECKING:
    from edgeseg.data.split import HeldOut
    from edgeseg.runtime.runners import RunnerSpec

CALIB_METHODS = ("minmax", "entropy", "percentile")
CALIB_ENUM = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
CALIB_CROPS = (64, 160)  # centre-crop sizes added to the calibration set
SCORE_SIZES = ((394, 394, 6, 2), (256, 257, 2, 1), (64, 64, 4, 2))  # (H, W, slices, batch)
LATENCY_RUNS = 5  # timed runs (after one warm-up) for the int8 vs fp32 latency
# The op types the int8 network quantises (ConvTranspose stays float between Q/DQ). Naming them
# also limits calibration to their tensors: by default ORT calibrates every float tensor, the
# normalisation's sums included, and a histogram calibrator widens a tensor's histogram at its
# first input's bin width whenever a later input exceeds its range: a sum over a slice with
# more brain than the first grew one histogram to 39.7 M bins (2.9 GB at the second input;
# `export --int8 --calib 32` ran out of memory at 21.5 GB).
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MaxPool", "Add", "Relu", "Pad", "Concat")


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


def calibration_set(slices: list[np.ndarray], n: int) -> list[np.ndarray]:
    """``n`` training slices (evenly spread) plus centre crops of every other one at 64 and 160.

    Small crops hold brain only, which shifts the in-graph per-image normalisation: ranges
    calibrated on whole slices alone clipped them (78 % label agreement at 64x64 on the
    demo model instead of 99 %).
    """
    from edgeseg.data.split import fit_to_size, pick

    full = pick(slices, n)
    crops = [
        fit_to_size(im, np.zeros(im.shape, np.uint8), s, s)[0]
        for im in full[::2]
        for s in CALIB_CROPS
        if min(im.shape) > s
    ]
    return full + crops


def quantize_int8(
    src: Path,
    dst: Path,
    calib_images: list[np.ndarray],
    method: str = "minmax",
    reduce_range: bool = True,
    symmetric: bool = False,
    cache: Path | None = None,
) -> Path:
    """Static QDQ int8 model from an fp32 edgeseg ONNX, calibrated on ``calib_images``.

    Args:
        src: the fp32 file.
        dst: the int8 file to write.
        calib_images: real training slices (and crops), float32 (H, W) raw intensities.
        method: ``minmax``, ``entropy`` or ``percentile``.
        reduce_range: 7-bit weights, for CPUs whose U8S8 products can saturate (AVX2 without
            VNNI, per ORT's docs); ignored when ``symmetric``.
        symmetric: S8S8 with zero-points 0 (TensorRT); default U8S8 (the fast CPU path).
        cache: calibration-range cache (JSON); reused if it exists, so a second model with
            the same method but another ``reduce_range`` skips calibration.

    Returns:
        ``dst``.
    """
    import onnx

    from edgeseg.artifacts import save_onnx, set_metadata

    if method not in CALIB_METHODS:
        raise EdgesegError(f"calibration method {method!r}: choose auto, {', '.join(CALIB_METHODS)}")
    if not calib_images:
        raise EdgesegError(f"{src}: no training slices to calibrate int8 with; pass --data")
    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    with tempfile.TemporaryDirectory(prefix="edgeseg-int8-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            _quantize(
                src, pre, out, SliceReader(calib_images), method, reduce_range and not symmetric, symmetric, cache
            )
        int8 = onnx.load(str(out))
    int8.ir_version = min(int8.ir_version, proto.ir_version)
    set_metadata(int8, {**meta, "edgeseg.precision": "int8"})
    return save_onnx(int8, dst)


def _quantize(
    src: Path,
    pre: Path,
    out: Path,
    reader: SliceReader,
    method: str,
    reduce_range: bool,
    symmetric: bool,
    cache: Path | None,
) -> None:
    """quant_pre_process + quantize_static with edgeseg's settings (see quantize_int8)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        nodes_to_exclude=float_nodes(onnx.load(str(pre))),
        op_types_to_quantize=list(QUANTIZED_OPS),
        calibrate_method=getattr(CalibrationMethod, CALIB_ENUM[method]),
        extra_options={"CalibStridedMinMax": 1, "ActivationSymmetric": symmetric, "WeightSymmetric": True},
        calibration_cache_path=None if cache is None else str(cache),
    )


@dataclass
class Int8Candidate:
    """One calibration method x weight range, scored against the PyTorch model."""

    d_miou: dict[str, float]  # ΔmIoU per held-out size ("394x394", "256x257", "64x64")
    worst_d_miou: float  # the largest |ΔmIoU|: what the choice minimises
    agreement: float  # pooled share of labels equal to PyTorch's
    seconds: float  # to calibrate and score


@dataclass
class Int8Choice:
    """What :func:`choose_int8` tried and kept (also in parity.json as ``int8``)."""

    method: str  # the calibration method kept
    reduce_range: bool  # 7-bit weights
    calib_slices: int
    calib_inputs: int  # slices plus crops
    candidates: dict[str, Int8Candidate]  # "minmax/7bit" -> its scores
    latency_ms: dict[str, float]  # "fp32" and "int8", ORT CPU p50 at 1x394x394


def choose_int8(
    src: Path,
    dst: Path,
    data: HeldOut,
    model: Any,
    calib: int = 32,
    method: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    """Quantise with each calibration method (x reduce_range) and keep the best by ΔmIoU.

    A candidate's score is its worst |ΔmIoU| against the PyTorch model over three sizes of
    held-out slices (394x394, 256x257, 64x64), ties broken by label agreement.

    Args:
        src: the fp32 ONNX file.
        dst: where the chosen int8 model goes.
        data: held-out slices (scoring) and training slices (calibration).
        model: the checkpoint's PyTorch model, the reference for ΔmIoU.
        calib: number of whole training slices to calibrate on (plus crops, see
            :func:`calibration_set`).
        method: ``auto`` (try all) or one of :data:`CALIB_METHODS`.
        threads: ORT threads for scoring and timing.

    Returns:
        The :class:`Int8Choice`: every candidate's scores, the one kept, and the latencies.
    """
    from edgeseg.artifacts import read_model_info
    from edgeseg.runtime.runners import RunnerSpec

    methods = CALIB_METHODS if method == "auto" else (method,)
    names = read_model_info(src).class_names
    spec = RunnerSpec("ort", "cpu", threads=threads or 0, outputs=("logits", "labels"))
    calib_images = calibration_set(data.train_images, calib)
    rows = score_rows(data, model)
    results: dict[str, Int8Candidate] = {}
    files: dict[str, Path] = {}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgeseg-calib-", dir=Path(dst).parent) as tmp:
        for name in methods:
            for rr in (True, False):
                key, start = f"{name}/{'7bit' if rr else '8bit'}", time.perf_counter()
                path = quantize_int8(
                    src,
                    Path(tmp) / f"{name}-{rr}.onnx",
                    calib_images,
                    name,
                    reduce_range=rr,
                    cache=Path(tmp) / f"{name}.json",
                )
                files[key] = path
                results[key] = score_int8(path, rows, spec, names, start)
        best = keep_best(results, files, dst)
    return Int8Choice(
        method=best.split("/")[0],
        reduce_range=best.endswith("7bit"),
        calib_slices=calib,
        calib_inputs=len(calib_images),
        candidates=results,
        latency_ms={"fp32": cpu_latency_ms(src, threads), "int8": cpu_latency_ms(dst, threads)},
    )


def keep_best(results: dict[str, Int8Candidate], files: dict[str, Path], dst: Path) -> str:
    """Move the candidate with the smallest worst |ΔmIoU| (ties: label agreement) to ``dst``; its key.

    ``files`` must sit in ``dst``'s folder (a temporary folder beside it): the rename is atomic.
    """
    best = min(results, key=lambda k: (results[k].worst_d_miou, -results[k].agreement))
    os.replace(files[best], dst)
    return best


def score_rows(data: HeldOut, model: Any) -> list[dict[str, Any]]:
    """Held-out batches at :data:`SCORE_SIZES` and their PyTorch reference logits."""
    from edgeseg.data.split import size_batches
    from edgeseg.model import reference_logits

    rows = size_batches(data, SCORE_SIZES)
    for row in rows:
        row["ref"] = reference_logits(model, row["inputs"])
    return rows


def score_int8(
    path: Path, rows: list[dict[str, Any]], spec: RunnerSpec, names: tuple[str, ...], start: float
) -> Int8Candidate:
    """Per-size ΔmIoU, worst |ΔmIoU| and pooled agreement of one int8 candidate run by ``spec``.

    ``names``: the class names; ``start``: ``time.perf_counter()`` when the candidate's
    calibration began (for ``seconds``).
    """
    from edgeseg.metrics import compare
    from edgeseg.runtime.runners import open_runner, run_batches

    runner = open_runner(path, spec)
    d_miou, agree = {}, []
    for row in rows:
        logits, labels = run_batches(runner, row["inputs"])
        numbers = compare(row["ref"], logits, labels, row["masks"], names)
        d_miou[row["size"]] = numbers["d_miou"] or 0.0
        agree.append(numbers["agreement"])
    return Int8Candidate(
        d_miou=d_miou,
        worst_d_miou=max(abs(v) for v in d_miou.values()),
        agreement=float(np.mean(agree)),
        seconds=round(time.perf_counter() - start, 1),
    )


def cpu_latency_ms(path: Path, threads: int | None = None, shape: tuple[int, ...] = (1, 1, 394, 394)) -> float:
    """Median run time on ORT CPU (the session infer builds) after one warm-up, in milliseconds."""
    from edgeseg.runtime.runners import RunnerSpec, open_runner

    runner = open_runner(path, RunnerSpec("ort", "cpu", threads=threads or 0, outputs=("logits", "labels")))
    x = np.random.default_rng(0).gamma(2.0, 300.0, shape).astype(np.float32)
    times = time_runs(runner.run, x, warmup=1, runs=LATENCY_RUNS, min_runs=LATENCY_RUNS)
    return round(latency_stats(times)["p50"], 2)
