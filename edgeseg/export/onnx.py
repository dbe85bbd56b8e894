"""Export stage: one self-contained ONNX model for every input size, in fp32, fp16 and int8.

    edgeseg export [CKPT] [--out DIR] [--fp16] [--int8] [--trt]

:func:`export_model` writes, next to the checkpoint ``X.pt`` (or in ``--out``):

* ``X.onnx``: fp32, input ``image`` float32 ``(N, 1, H, W)`` raw intensities with symbolic
  ``N``, ``H``, ``W``; outputs ``logits`` float32 ``(N, C, H, W)`` and ``labels`` uint8
  ``(N, H, W)`` (the argmax, in the graph). The decoder pad is computed at run time, so one
  file serves every size >= ``min_size``. ``edgeseg.*`` metadata (``edgeseg-onnx-v1``).
* ``X_fp16.onnx`` (``--fp16``): onnxconverter-common's float16 converter, float32 I/O; the
  in-graph normalisation (sums of ~155k raw intensities) stays float32.
* ``X_int8.onnx`` (``--int8``): ORT static QDQ, per-channel weights, calibrated on real
  training slices; the calibration method is chosen by the resulting ΔmIoU (edgeseg.export.quantize).
* ``X.engine`` + ``X.engine.json`` (``--trt``): a TensorRT engine (edgeseg.runtime.tensorrt).
* ``DIR/X/config.pbtxt`` + ``DIR/X/1/model.onnx`` (``--triton DIR``): a Triton model
  repository for every ONNX file written (and ``DIR/X_trt`` for the engine), after the
  parity gate passes (edgeseg.export.triton).

then runs :func:`edgeseg.export.parity.validate` on every file and writes ``parity.json``; a failed
gate raises EdgesegError naming the check (the files stay for inspection).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.artifacts import FORMAT, NORMALIZATION, ArtifactPaths, save_onnx, set_metadata
from edgeseg.data.split import SplitRecord
from edgeseg.errors import EdgesegError
from edgeseg.files import check_writable_dir

if TYPE_CHECKING:
    import onnx
    import torch

    from edgeseg.export.executorch import PteInt8Choice
    from edgeseg.export.parity import ParityReport
    from edgeseg.export.quantize import Int8Choice

DEFAULT_OPSET = 20  # torch's default; onnx.reference runs the int8 QDQ graph only from opset 19
IR_VERSION = 10  # onnx 1.23 would write IR 11+; onnxruntime 1.31 and TensorRT 10 read 10


@dataclass
class ExportConfig:
    """What ``edgeseg export`` writes; saved in ``parity.json`` beside the files."""

    out: Path | None = None  # output folder; None = next to the checkpoint (as Ultralytics does)
    fp16: bool = False  # also write X_fp16.onnx (float16 compute, float32 I/O)
    int8: bool = False  # also write X_int8.onnx (static QDQ, per-channel weights)
    trt: bool = False  # also build a TensorRT engine (needs an NVIDIA GPU and tensorrt)
    opset: int = DEFAULT_OPSET  # ONNX opset of the exported graph
    simplify: bool = True  # onnxslim, kept only if N/H/W stay symbolic and the pads dynamic
    fuse: bool = True  # export model.inference_form: BN folded, decoder concat split (2-5 % faster)
    calib: int = 32  # training slices used to calibrate int8
    calib_method: str = "auto"  # auto | minmax | entropy | percentile (auto: best ΔmIoU)
    trt_min: str = "1x16x16"  # TensorRT profile minimum, NxHxW
    trt_opt: str = "4x394x394"  # TensorRT profile optimum (the tutorial's slice size)
    trt_max: str = "8x1024x1024"  # TensorRT profile maximum
    data: Path | None = None  # validation/calibration data; None = the checkpoint's own
    validate: bool = True  # run parity validation after export and gate on it
    slices: int = 8  # held-out slices compared at 394x394
    size_slices: int = 4  # held-out slices compared at each other size of the table
    providers: tuple[str, ...] = ("cpu", "cuda", "tensorrt")  # parity candidates, if they work
    triton: Path | None = None  # also write a Triton model repository here (edgeseg[triton])
    executorch: bool = False  # also write X.pte and X_int8.pte for ExecuTorch/XNNPACK (edgeseg[executorch])


@dataclass
class ExportReport:
    """Everything one export produced."""

    checkpoint: Path
    files: dict[str, Path] = field(default_factory=dict)  # precision -> file (fp32/fp16/int8/trt)
    int8: Int8Choice | None = None  # calibration choice, ΔmIoU, latencies
    pte_int8: PteInt8Choice | None = None  # X_int8.pte's activation observer choice, ΔmIoU
    parity: ParityReport | None = None
    next_commands: list[str] = field(default_factory=list)
    triton: list[Any] = field(default_factory=list)  # edgeseg.export.triton.TritonModel, one per served model


# ----------------------------------------------------------------------------- fp32


def _to_onnx(model: torch.nn.Module, opset: int, min_size: int) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) with named symbolic N, H, W; returns the in-memory proto."""
    import logging

    import torch
    from torch.export import Dim

    from edgeseg.model import with_labels

    example = torch.zeros(2, model.config.in_channels, 2 * min_size + 1, 2 * min_size + 3)
    dims = {0: Dim("N", min=1), 2: Dim("H", min=min_size), 3: Dim("W", min=min_size)}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # torchvision-op notices
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            with_labels(model),
            (example,),
            input_names=["image"],
            output_names=["logits", "labels"],
            dynamic_shapes={"image": dims},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    return proto


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim's result if the I/O dims stay symbolic and a Pad still exists; else the input."""
    import onnxslim

    try:
        slim = onnxslim.slim(proto)
    except Exception:  # a simplifier bug must not block the export: keep the checked graph
        return proto
    if symbolic_dims(slim) == symbolic_dims(proto) and any(n.op_type == "Pad" for n in slim.graph.node):
        slim.ir_version = proto.ir_version
        return slim
    return proto


def symbolic_dims(proto: onnx.ModelProto) -> dict[str, list[str | int]]:
    """``{tensor: [dim_param or dim_value, ...]}`` for the graph's inputs and outputs."""
    return {
        vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in [*proto.graph.input, *proto.graph.output]
    }


def model_metadata(ckpt: dict[str, Any], precision: str, opset: int, checkpoint_sha256: str) -> dict[str, str]:
    """The ``edgeseg.*`` metadata_props of an exported file (all values strings)."""
    from edgeseg import __version__
    from edgeseg.model import checkpoint_model_config
    from edgeseg.model_contract import ModelConfig

    config = ModelConfig(**checkpoint_model_config(ckpt))
    contract = config.contract
    miou = (ckpt.get("metrics") or {}).get("miou_fg")
    spacing = (ckpt.get("data") or {}).get("pixel_spacing_mm")
    return {
        "edgeseg.format": FORMAT,
        "edgeseg.version": __version__,
        "edgeseg.precision": precision,
        "edgeseg.class_names": json.dumps(list(config.class_names)),
        "edgeseg.num_classes": str(config.num_classes),
        "edgeseg.in_channels": str(config.in_channels),
        "edgeseg.min_size": str(config.min_size),
        "edgeseg.input": json.dumps(
            {
                "name": "image",
                "dtype": "float32",
                "shape": ["N", config.in_channels, "H", "W"],
                "units": "raw intensities",
            }
        ),
        "edgeseg.normalization": NORMALIZATION[contract],
        "edgeseg.normalization_contract": str(contract),
        "edgeseg.train_miou_fg": "" if miou is None else repr(float(miou)),
        "edgeseg.checkpoint_sha256": checkpoint_sha256,
        "edgeseg.opset": str(opset),
        # In-plane mm per pixel of the training slices; infer resamples scans to it ("" = unknown).
        "edgeseg.pixel_spacing_mm": "" if spacing is None else repr(float(spacing)),
        # How the checkpoint's held-out data was chosen: bench scores the file on it, torch-free.
        **SplitRecord.from_checkpoint(ckpt).to_metadata(),
    }


def export_onnx(
    checkpoint: Path,
    out_path: Path | None = None,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    fuse: bool = True,
) -> Path:
    """Export a checkpoint to the fp32 ``edgeseg-onnx-v1`` file.

    Args:
        checkpoint: a ``.pt`` written by ``edgeseg train`` (loaded with weights_only=True).
        out_path: the ``.onnx`` to write; default ``X.onnx`` next to ``X.pt``.
        opset: ONNX opset (>= 17).
        simplify: run onnxslim when it keeps the dims symbolic and the pads dynamic.
        fuse: export :func:`edgeseg.model.inference_form` (BatchNorm folded, each decoder
            concat split into two convs and an Add): the same function, no concatenated
            tensor; ORT CPU ran it 2-5 % faster in fp32 and 0-3 % in int8 at 394x394.

    Returns:
        The written path.
    """
    from edgeseg.model import Checkpoint, inference_form

    if opset < 17:
        raise EdgesegError(f"opset {opset}: edgeseg exports need opset >= 17")
    loaded = Checkpoint.load(checkpoint)
    model, ckpt = loaded.model, loaded.state
    out_path = Path(out_path) if out_path else ArtifactPaths.of(loaded.path).onnx()
    proto = _to_onnx(inference_form(model) if fuse else model, opset, model.config.min_size)
    if simplify:
        proto = _simplify(proto)
    set_metadata(proto, {**model_metadata(ckpt, "fp32", opset, loaded.sha256), **_qc_ranges(proto, ckpt)})
    return save_onnx(proto, out_path)


def _qc_ranges(proto: onnx.ModelProto, ckpt: dict[str, Any]) -> dict[str, str]:
    """``edgeseg.qc_ranges`` (see :mod:`edgeseg.io.qc`) on every slice of the checkpoint's data
    (training and held-out); none when that data is not on this machine."""
    from edgeseg.data.dataset import load_slices
    from edgeseg.io.qc import METADATA_KEY, MIN_BRAIN, ranges_on_slices
    from edgeseg.model_contract import ModelConfig

    names = ModelConfig(**ckpt["model_config"]).class_names
    try:
        images = load_slices(Path((ckpt.get("data") or {})["root"]), len(names)).images
    except (EdgesegError, KeyError, TypeError, OSError):
        return {}
    ranges = ranges_on_slices(proto.SerializeToString(), images, names)
    return {METADATA_KEY: json.dumps({**ranges, "slices": len(images), "min_brain": MIN_BRAIN})}


# ----------------------------------------------------------------------------- the whole export


def export_model(checkpoint: Path | None = None, config: ExportConfig | None = None) -> ExportReport:
    """Everything ``edgeseg export`` does: fp32 always, fp16/int8/TensorRT by flag, then parity.

    Args:
        checkpoint: a ``.pt``; default the newest run's ``best.pt`` (``runs/*/best.pt``).
        config: what to write; default :class:`ExportConfig`.

    Returns:
        The report with the files, int8 calibration findings and the parity report. The
        gate is ``report.parity.passed``; :func:`run_export` turns a failure into an error.
    """
    from edgeseg.artifacts import find_latest_checkpoint
    from edgeseg.export.parity import ParityConfig, load_eval_data, size_table, validate
    from edgeseg.model import Checkpoint

    config = config or ExportConfig()
    checkpoint = Path(checkpoint) if checkpoint else find_latest_checkpoint()
    loaded = Checkpoint.load(checkpoint)  # loaded and hashed once, for every step below
    profile = _trt_profile(loaded, config) if config.trt else None  # fail fast, before work
    if config.executorch:  # fail fast: ExecuTorch missing
        from edgeseg.export.executorch import require_executorch

        require_executorch()
    paths = ArtifactPaths.of(checkpoint, config.out)
    if config.triton is not None:  # fail fast: tritonclient missing, or a folder that is not ours
        from edgeseg.export.triton import check_repository

        served = [k for k in ("fp32", "fp16", "int8") if k == "fp32" or getattr(config, k)]
        check_repository(
            config.triton, [paths.onnx(k).stem for k in served] + ([f"{paths.stem}_trt"] if config.trt else [])
        )
    check_writable_dir(paths.folder, "--out" if config.out else "the checkpoint's folder")
    report = ExportReport(
        checkpoint, {"fp32": export_onnx(loaded, paths.onnx("fp32"), config.opset, config.simplify, config.fuse)}
    )
    model = loaded.model
    data = load_eval_data(loaded.state, config.data) if (config.int8 or config.validate or config.executorch) else None
    if config.fp16:
        from edgeseg.export.quantize_fp16 import convert_fp16

        report.files["fp16"] = convert_fp16(paths.onnx("fp32"), paths.onnx("fp16"))
    if config.int8:
        from edgeseg.export.quantize import choose_int8

        report.int8 = choose_int8(
            paths.onnx("fp32"), paths.onnx("int8"), data, model, config.calib, config.calib_method
        )
        report.files["int8"] = paths.onnx("int8")
    if profile is not None:
        report.files["trt"] = _build_trt(report, paths, profile, data)
    if config.executorch:
        from edgeseg.export.executorch import export_executorch

        pte_files, report.pte_int8 = export_executorch(model, paths.onnx("fp32"), data, config.calib)
        report.files.update(pte_files)
    if config.validate:
        parity = ParityConfig(sizes=size_table(config.slices, config.size_slices), providers=config.providers)
        report.parity = validate(list(report.files.values()), loaded, config=parity, eval_data=data)
        report.parity.extra.update(
            export=_config_json(config),
            int8=asdict(report.int8) if report.int8 else {},
            pte_int8=asdict(report.pte_int8) if report.pte_int8 else {},
        )
        report.parity.write(paths.parity)
    if config.triton is not None and (report.parity is None or report.parity.passed):
        from edgeseg.export.triton import TritonConfig, write_model_repository

        for key in ("fp32", "fp16", "int8"):  # X.engine beside X.onnx is served with fp32 if built now
            if key in report.files:
                report.triton += write_model_repository(
                    report.files[key], config.triton, TritonConfig(engine=config.trt)
                )
    report.next_commands = next_commands(report)
    return report


def _trt_profile(loaded: Any, config: ExportConfig) -> Any:
    """Check that TensorRT can run here and parse the profile options (``loaded``: a model.Checkpoint)."""
    from edgeseg.runtime.tensorrt import make_profile, require_tensorrt

    require_tensorrt()
    min_size = loaded.model.config.min_size
    return make_profile(config.trt_min, config.trt_opt, config.trt_max, min_size)


def _build_trt(report: ExportReport, paths: dict[str, Path], profile: Any, data: Any) -> Path:
    """The TensorRT engine in the highest precision asked for (int8 > fp16 > fp32)."""
    from edgeseg.runtime.tensorrt import build_engine

    if "int8" not in report.files:
        return build_engine(report.files.get("fp16", report.files["fp32"]), paths.engine, profile)
    from edgeseg.export.quantize import calibration_set, quantize_int8

    with tempfile.TemporaryDirectory(prefix="edgeseg-trt-") as tmp:  # S8S8, zero-point 0
        sym = quantize_int8(
            paths.onnx("fp32"),
            Path(tmp) / f"{paths.onnx('int8').stem}_trt.onnx",
            calibration_set(data.train_images, report.int8.calib_slices),
            report.int8.method,
            symmetric=True,
        )
        return build_engine(sym, paths.engine, profile)


def next_commands(report: ExportReport) -> list[str]:
    """The ready-to-run commands printed after an export."""
    onnx_files = " ".join(str(p) for p in report.files.values() if p.suffix == ".onnx")
    return [
        f"edgeseg validate {onnx_files} --ckpt {report.checkpoint}",
        f"edgeseg infer SCAN.nii.gz --model {report.files['fp32']}",
        f"edgeseg bench {report.files['fp32']}",
    ]


def _config_json(config: ExportConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


def run_export(checkpoint: Path | None, config: ExportConfig) -> ExportReport:
    """``edgeseg export``: export, print the files, parity table and next commands; gate."""
    from edgeseg.export.parity_report import print_report, wide_console

    console = wide_console()
    report = export_model(checkpoint, config)
    for precision, path in report.files.items():
        console.print(f"{precision:>5}  {path}  ({path.stat().st_size / 1e6:.2f} MB)")
    if report.int8:
        _print_int8(console, report.int8)
    if report.pte_int8:
        _print_pte_int8(console, report.pte_int8)
    for model in report.triton:
        console.print(f"triton  {model.platform}  {model.config}")
    if report.parity is not None:
        print_report(console, report.parity)
        if not report.parity.passed:
            raise EdgesegError(
                f"{report.checkpoint}: parity gate failed ({'; '.join(report.parity.failures)});"
                f" the files stay for inspection, details in {ArtifactPaths.of(report.checkpoint, config.out).parity}"
            )
    console.print("next:\n" + "\n".join(f"  {c}" for c in report.next_commands))
    return report


def _print_int8(console: Any, int8: Int8Choice) -> None:
    tried = ", ".join(f"{k} {v.worst_d_miou:.4f}" for k, v in int8.candidates.items())
    lat = int8.latency_ms
    console.print(
        f"int8: chose {int8.method} calibration, {'7' if int8.reduce_range else '8'}-bit"
        f" weights, by worst |ΔmIoU| over 3 sizes ({tried}); {int8.calib_inputs} calibration"
        f" inputs from {int8.calib_slices} training slices; CPU latency 1x394x394: int8"
        f" {lat['int8']:.1f} ms vs fp32 {lat['fp32']:.1f} ms"
    )


def _print_pte_int8(console: Any, pte: PteInt8Choice) -> None:
    tried = ", ".join(f"{k} {v.worst_d_miou:.4f}" for k, v in pte.candidates.items())
    console.print(
        f"int8 .pte: chose {pte.observer} activation ranges by worst |ΔmIoU| over 3 sizes through"
        f" ExecuTorch ({tried}); {pte.calib_inputs} calibration inputs from {pte.calib_slices} training slices"
    )
