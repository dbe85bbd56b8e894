"""`edgeseg export`, `triton`, `validate` and `build-c`: from a checkpoint to what a deployment loads.

export writes the ONNX files (and, by flag, fp16, int8, TensorRT, ExecuTorch, a Triton repository)
and gates them on parity; validate reruns that gate on files already written; triton writes a
model repository for files already exported; build-c builds the C library that runs them. The
library is imported inside each body: torch only where a checkpoint is read.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.options import DataOpt, SizeSlicesOpt, json_option, out_option


def build_c_cmd(
    build_dir: Annotated[Path | None, typer.Option("--build-dir", help="CMake build folder; default build/c.")] = None,
    sanitize: Annotated[bool, typer.Option(help="Build with AddressSanitizer + UBSan (for testing).")] = False,
) -> None:
    """Build libedgeseg and edgeseg-run from a source checkout's csrc/ against the installed openvino (-Werror)."""
    from edgeseg.runtime.cbuild import build_c

    built = build_c(build_dir, sanitize, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"{built.library}\n{built.program}")


class CalibMethod(str, Enum):
    auto = "auto"
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


def export_cmd(
    checkpoint: Annotated[Path | None, typer.Argument(help="A .pt checkpoint; default: newest run's best.pt.")] = None,
    out: Annotated[Path | None, out_option("Output folder; default: next to the checkpoint.")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write X_fp16.onnx (float32 I/O).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write X_int8.onnx (static QDQ, per-channel).")] = False,
    trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT engine (NVIDIA GPU only).")] = False,
    calib: Annotated[int, typer.Option(min=1, help="Training slices that calibrate int8.")] = 32,
    calib_method: Annotated[
        CalibMethod, typer.Option("--calib-method", help="auto: try all, keep the best ΔmIoU.")
    ] = CalibMethod.auto,
    trt_min: Annotated[str, typer.Option("--trt-min", help="TensorRT profile minimum NxHxW.")] = "1x16x16",
    trt_opt: Annotated[str, typer.Option("--trt-opt", help="TensorRT profile optimum NxHxW.")] = "4x394x394",
    trt_max: Annotated[str, typer.Option("--trt-max", help="TensorRT profile maximum NxHxW.")] = "8x1024x1024",
    data: DataOpt = None,
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset.")] = 20,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="onnxslim, if dims stay dynamic.")] = True,
    fuse: Annotated[
        bool,
        typer.Option("--fuse/--no-fuse", help="Fold BatchNorm and split the decoder concat (same function, faster)."),
    ] = True,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="Parity gate after export.")] = True,
    slices: Annotated[int, typer.Option(min=1, help="Held-out slices compared at 394x394.")] = 8,
    size_slices: SizeSlicesOpt = 4,
    triton: Annotated[
        Path | None, typer.Option("--triton", help="Also write a Triton model repository here (edgeseg[triton]).")
    ] = None,
    executorch: Annotated[
        bool,
        typer.Option(
            "--executorch", help="Also write X.pte and X_int8.pte for ExecuTorch/XNNPACK (edgeseg[executorch])."
        ),
    ] = False,
) -> None:
    """Export a checkpoint to ONNX (fp32; fp16/int8/TensorRT by flag) and gate on parity."""
    from edgeseg.export.onnx import ExportConfig, run_export

    config = ExportConfig(
        out=out,
        fp16=fp16,
        int8=int8,
        trt=trt,
        opset=opset,
        simplify=simplify,
        fuse=fuse,
        calib=calib,
        calib_method=calib_method.value,
        trt_min=trt_min,
        trt_opt=trt_opt,
        trt_max=trt_max,
        data=data,
        validate=validate,
        slices=slices,
        size_slices=size_slices,
        triton=triton,
        executorch=executorch,
    )
    run_export(checkpoint, config)


class Kind(str, Enum):
    auto = "auto"
    gpu = "gpu"
    cpu = "cpu"


def triton_cmd(
    model: Annotated[Path, typer.Argument(help="Exported ONNX model; X.engine + sidecar beside it is served too.")],
    out: Annotated[Path, out_option("Triton model repository folder.")] = Path("triton-models"),
    name: Annotated[str | None, typer.Option(help="Model name; default: the file's stem.")] = None,
    max_batch_size: Annotated[
        int,
        typer.Option("--max-batch-size", min=1, help="ONNX Runtime model's max batch (the plan's is its profile's)."),
    ] = 32,
    instances: Annotated[int, typer.Option(min=1, help="Model instances per GPU (or on the CPU).")] = 1,
    kind: Annotated[Kind, typer.Option(help="auto: the GPU where there is one, else CPU.")] = Kind.auto,
) -> None:
    """Write a Triton Inference Server model repository for an exported model (edgeseg[triton])."""
    from edgeseg.export.triton import TritonConfig, run_triton

    config = TritonConfig(name=name, max_batch_size=max_batch_size, instances=instances, kind=kind.value)
    run_triton(model, out, config)


def validate_cmd(
    models: Annotated[list[Path], typer.Argument(help="Exported ONNX (or .engine) files of one checkpoint.")],
    ckpt: Annotated[
        Path | None, typer.Option("--ckpt", help="Reference checkpoint; default X.pt beside X.onnx.")
    ] = None,
    data: DataOpt = None,
    providers: Annotated[
        str, typer.Option(help="Comma-separated cpu, cuda, tensorrt (where they work).")
    ] = "cpu,cuda,tensorrt",
    slices: Annotated[int, typer.Option(min=1, help="Held-out slices at 394x394.")] = 8,
    size_slices: SizeSlicesOpt = 4,
    json_path: Annotated[Path | None, json_option("Report; default parity.json beside the model.")] = None,
) -> None:
    """Parity of exported models against their PyTorch checkpoint on real slices; exit 1 on a failed gate."""
    from edgeseg.export.parity import ParityConfig, size_table
    from edgeseg.export.parity_report import parse_providers, run_validate

    config = ParityConfig(sizes=size_table(slices, size_slices), providers=parse_providers(providers))
    run_validate(models, ckpt, data, config, json_path)
