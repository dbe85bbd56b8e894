"""The `edgeseg` command line: a thin skin over the library.

Each command converts its options and calls one library function. Library
modules are imported inside the commands so that `edgeseg --help` is fast and
`edgeseg infer` never imports torch.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeseg import __version__
from edgeseg.errors import EdgesegError, Interrupted

app = typer.Typer(
    help="Train, export, validate, run and benchmark the edgeseg MRI segmentation U-Net.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: typer's rich panels print a "<bool>" type beside every flag
)
data_app = typer.Typer(
    help="Datasets: the real-MRI demo set and an example scan.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train, export, validate, run and benchmark the edgeseg MRI segmentation U-Net."""


# Shared option aliases, defined once.
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Dataset root in the tutorial layout (MRIs/, Segmentations/)."),
]
TargetsOpt = Annotated[
    Path | None,
    typer.Option("--targets", exists=True, dir_okay=False, help="Targets file; default: the packaged one."),
]


class Preset(str, Enum):
    default = "default"
    synth = "synth"
    tutorial = "tutorial"


class Split(str, Enum):
    regions = "regions"
    slabs = "slabs"
    tutorial = "tutorial"


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value} is not > 0")
    return value


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    data: DataOpt = None,
    preset: Annotated[
        Preset,
        typer.Option(help="default: fast on 2 CPU cores; synth: + synthetic raw heads (45 min); tutorial: exact."),
    ] = Preset.default,
    epochs: Annotated[
        int | None, typer.Option(min=1, show_default="default 14, tutorial 30", help="Passes over the training slices.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, show_default="16", help="Samples per step.")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(callback=_positive, show_default="default 0.002, tutorial 0.0003", help="(Peak) learning rate."),
    ] = None,
    patch: Annotated[
        int | None,
        typer.Option(min=0, show_default="default 128, tutorial 0", help="Random-crop size; 0 trains on whole slices."),
    ] = None,
    patches_per_slice: Annotated[
        int | None,
        typer.Option(
            "--patches-per-slice",
            min=1,
            show_default="default 2, tutorial 1",
            help="Crops per training slice per epoch.",
        ),
    ] = None,
    split: Annotated[
        Split | None,
        typer.Option(
            show_default="default regions, tutorial tutorial",
            help="Held-out 3-D regions (demo set; other data: slabs), slabs, or the tutorial's last 100.",
        ),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option("--augment/--no-augment", show_default="default on, tutorial off", help="Training augmentation."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(show_default="0", help="Seed for weights, shuffling, augmentation.")
    ] = None,
    device: Annotated[str | None, typer.Option(show_default="auto", help="auto, cpu or cuda.")] = None,
    name: Annotated[
        str | None, typer.Option(show_default="train, train2, ...", help="Run folder name under --runs-dir.")
    ] = None,
    runs_dir: Annotated[
        Path | None, typer.Option("--runs-dir", show_default="runs", help="Parent of run folders.")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Run folder (or last.pt) to continue after a kill.")] = None,
    pixel_spacing: Annotated[
        float | None,
        typer.Option(
            "--pixel-spacing",
            callback=_positive,
            show_default="demo 0.5, else unknown",
            help="In-plane mm per pixel of --data.",
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Training processes (DDP via torchrun: gloo on CPU, one per GPU, NCCL); --batch-size stays global.",
        ),
    ] = 1,
    synth_planes: Annotated[
        int | None,
        typer.Option(
            "--synth-planes", min=0, show_default="default 0, synth 640", help="Planes of synthetic raw heads."
        ),
    ] = None,
    synth_recipe: Annotated[
        str | None,
        typer.Option("--synth-recipe", show_default="full", help="full, no-head, no-contrast or no-deform."),
    ] = None,
) -> None:
    """Train the U-Net (the demo MRI set when --data is not given)."""
    from edgeseg.train import run_training

    overrides = dict(
        data=str(data) if data else None,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patch=patch,
        patches_per_slice=patches_per_slice,
        split=split.value if split else None,
        augment=augment,
        seed=seed,
        device=device,
        name=name,
        runs_dir=str(runs_dir) if runs_dir else None,
        pixel_spacing_mm=pixel_spacing,
        synth_planes=synth_planes,
        synth_recipe=synth_recipe,
    )
    run_training(preset.value, overrides, resume, nproc, _given_options(ctx, drop={"nproc"}))


def _given_options(ctx: typer.Context, drop: set[str]) -> list[str]:
    """The options the user gave, as command-line words again (what --nproc hands each process)."""
    words: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        source = ctx.get_parameter_source(param.name)
        if param.name in drop or value is None or getattr(source, "name", "") == "DEFAULT":
            continue
        if getattr(param, "is_flag", False) and getattr(param, "secondary_opts", None):
            words.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            words += [param.opts[0], str(value.value if isinstance(value, Enum) else value)]
    return words


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[Path | None, typer.Argument(help="Checkpoint; default: newest run's best.pt.")] = None,
    data: DataOpt = None,
    split: Annotated[Split | None, typer.Option(help="Split to evaluate when --data is given.")] = None,
    per_slice: Annotated[
        Path | None, typer.Option("--per-slice", help="Also write one CSV row per held-out slice here.")
    ] = None,
    robustness: Annotated[
        bool,
        typer.Option("--robustness", help="mIoU per perturbation family on the held-out 3-D regions (.pt or .onnx)."),
    ] = False,
    robustness_slices: Annotated[int, typer.Option("--robustness-slices", min=1, help="Slices scored.")] = 32,
) -> None:
    """Per-class IoU and Dice of a checkpoint on held-out slices (or its robustness table)."""
    if robustness:  # torch-free for an .onnx file
        from edgeseg.robustness import run_robustness

        if checkpoint is None:
            from edgeseg.artifacts import find_latest_checkpoint

            checkpoint = find_latest_checkpoint()
        run_robustness(checkpoint, data, robustness_slices)
        return
    from edgeseg.evaluate import run_evaluation

    run_evaluation(checkpoint, data, split.value if split else None, per_slice)


@data_app.command("demo")
def data_demo_cmd(
    out: Annotated[
        Path | None, typer.Option("--out", help="Dataset folder; default ~/.cache/edgeseg/demo-mni152.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a matching set is cached.")] = False,
) -> None:
    """Build the real-MRI demo set (MNI152 template from nilearn, offline) in the tutorial layout."""
    from rich.console import Console

    from edgeseg.demo import build_demo, read_demo_provenance

    root = build_demo(out, force=force)
    counts = read_demo_provenance(root)["counts"]
    per_plane = ", ".join(f"{plane} {n}" for plane, n in counts.items())
    Console().print(f"{root}\n{sum(counts.values())} slices: {per_plane}")


@data_app.command("example")
def data_example_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the example scan into.")] = Path("example-scans"),
) -> None:
    """Write a small real scan (5 axial slices of the MNI152 T1, NIfTI) to try edgeseg infer on."""
    from edgeseg.demo import build_example

    typer.echo(build_example(out))


class Provider(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


class Backend(str, Enum):
    auto = "auto"
    ort = "ort"
    openvino = "openvino"


class SegFormat(str, Enum):
    nifti = "nifti"
    dicom_seg = "dicom-seg"
    both = "both"


@app.command("infer")
def infer_cmd(
    scans: Annotated[
        list[Path],
        typer.Argument(help="Files or folders: .npy, .png/.jpg/.tif, .nii(.gz), .dcm or DICOM series folders."),
    ],
    model: Annotated[
        Path | None, typer.Option("--model", help="Exported ONNX model; default: the packaged shipped model.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder; mirrors the input tree, gets summary.csv.")] = Path(
        "segmentations"
    ),
    backend: Annotated[
        Backend,
        typer.Option(help="auto: the pick of `edgeseg tune` (MODEL.deploy.json) here, else ort on the file as given."),
    ] = Backend.auto,
    provider: Annotated[
        Provider, typer.Option(help="ONNX Runtime: auto = TensorRT > CUDA > CPU, whichever really works.")
    ] = Provider.auto,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads; default one per core (or the tuned setting).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per model call.")] = 8,
    axis: Annotated[
        int | None,
        typer.Option(min=0, max=2, help="Volume axis to slice along; default: acquisition axis, else axial."),
    ] = None,
    overlay: Annotated[
        bool | None,
        typer.Option(
            "--overlay/--no-overlay",
            show_default="volumes only: NIfTI, DICOM",
            help="Write <name>_overlay.png, a QC mosaic of slices with the labels and a legend.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo scans whose outputs exist (default: skip them = resume).")
    ] = False,
    resample: Annotated[
        bool,
        typer.Option("--resample/--no-resample", help="Resample slices to the model's pixel spacing (NIfTI, DICOM)."),
    ] = True,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="Spread scans over Dask workers: a scheduler address (tcp://host:8786)"
            " or local:N (N worker processes here). Needs edgeseg[cluster].",
        ),
    ] = None,
    cluster_timeout: Annotated[
        float,
        typer.Option(
            "--cluster-timeout",
            min=1,
            help="With --cluster: stop, in one line, after this many seconds without a worker that can run a scan.",
        ),
    ] = 30.0,
    series: Annotated[
        str | None,
        typer.Option(
            "--series", help="DICOM: only this SeriesInstanceUID, or SeriesDescription pattern (e.g. '*T1*')."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="DICOM: segment series that triage skips too (not MR, localizers, secondary captures, derived"
            " images, other body parts); the model knows head MR only.",
        ),
    ] = False,
    seg_format: Annotated[
        SegFormat,
        typer.Option(
            "--format", help="Output of a DICOM series: NIfTI, DICOM SEG + SR volume report (for PACS), or both."
        ),
    ] = SegFormat.both,
    seg_flagged: Annotated[
        bool,
        typer.Option(
            "--seg-flagged",
            help="DICOM: write the SEG and SR of a scan QC flagged too, described 'QC FLAGGED: <reasons>'"
            " (default: none, so nothing flagged reaches a PACS).",
        ),
    ] = False,
    skull_strip: Annotated[
        bool,
        typer.Option("--skull-strip", help="Strip the skull first (ROBEX, for heads): writes <name>_brainmask.nii.gz."),
    ] = False,
    max_resampled_pixels: Annotated[
        int,
        typer.Option(
            "--max-resampled-pixels",
            min=1,
            help="Refuse slices that resampling would grow past this many pixels (HxW).",
        ),
    ] = 1024 * 1024,
    max_decompressed_mb: Annotated[
        int,
        typer.Option("--max-decompressed-mb", min=1, help="Refuse a .nii.gz that decompresses past this many MiB."),
    ] = 1024,
    crop: Annotated[
        bool,
        typer.Option(
            "--crop/--no-crop",
            help="Run the model on each volume's brain box only (background outside it; on by default)."
            " --no-crop runs whole slices. Labels agree on >= 99.9 % of brain pixels; QC is the same.",
        ),
    ] = True,
) -> None:
    """Segment scans with an exported ONNX model (torch-free).

    Exit 0 when every scan was segmented or skipped (DICOM series that triage sets aside, such as
    localizers, CT or reports, each listed as 'skipped <path>: <reason>'); exit 1 if any scan failed.
    """
    from edgeseg.infer import InferConfig, run_inference
    from edgeseg.signals import Stopped, stop_on_signals

    config = InferConfig(
        model=model,
        out=out,
        backend=backend.value,
        provider=provider.value,
        threads=threads,
        batch_size=batch_size,
        axis=axis,
        overlay=overlay,
        overwrite=overwrite,
        resample=resample,
        series=series,
        force=force,
        format=seg_format.value,
        seg_flagged=seg_flagged,
        skull_strip=skull_strip,
        cluster=cluster,
        cluster_timeout=cluster_timeout,
        max_resampled_pixels=max_resampled_pixels,
        max_decompressed_mb=max_decompressed_mb,
        crop=crop,
    )
    with stop_on_signals():  # SIGTERM as Ctrl-C; later signals cannot break the cleanup
        try:
            report = run_inference(scans, config)
        except Stopped as exc:  # before the scan loop (which says itself what it finished)
            raise Interrupted("stopped before any scan was segmented; rerun the same command", exc.code) from None
    if report.failed:
        total = report.failed + report.done + report.skipped
        raise EdgesegError(f"{report.failed} of {total} scans failed; see the lines above and {report.summary}")


@app.command("tune")
def tune_cmd(
    model: Annotated[
        Path | None,
        typer.Argument(help="fp32 ONNX model; its _fp16/_int8/.pt siblings are tried too. Default: the shipped one."),
    ] = None,
    target: Annotated[str, typer.Option(help="Target whose threads cap and RSS budget apply.")] = "edge-x86",
    runs: Annotated[int, typer.Option(min=1, help="Timed inferences per candidate at most.")] = 30,
    max_seconds: Annotated[
        float,
        typer.Option(
            "--max-seconds",
            min=0.0,
            help="Stop timing a candidate after this long (once 5 runs are in; 3 above batch 1).",
        ),
    ] = 8.0,
    slices: Annotated[int, typer.Option(min=1, help="Held-out slices for ΔmIoU against ONNX Runtime fp32.")] = 8,
    batch: Annotated[
        int | None,
        typer.Option(
            min=1, show_default="the target's", help="Slices per timed inference (>1: OpenVINO throughput too)."
        ),
    ] = None,
    threads: Annotated[
        str | None, typer.Option(help="Comma-separated thread settings; default 1 and all cores.")
    ] = None,
    peers: Annotated[
        bool, typer.Option("--peers/--no-peers", help="Also time eager PyTorch and OpenVINO's defaults.")
    ] = True,
    crop: Annotated[
        bool, typer.Option("--crop/--no-crop", help="Also time each candidate on the typical brain box (crop columns).")
    ] = True,
    targets: TargetsOpt = None,
    data: DataOpt = None,
) -> None:
    """Time every gated backend x precision x threads here, each in its own process; write MODEL.deploy.json."""
    from edgeseg.tune import TuneConfig, parse_threads, run_tune

    config = TuneConfig(
        target=target,
        targets_file=targets,
        runs=runs,
        max_seconds=max_seconds,
        slices=slices,
        batch=batch,
        threads=parse_threads(threads),
        peers=peers,
        crop=crop,
        data=data,
    )
    run_tune(model, config)


@app.command("bench")
def bench_cmd(
    model: Annotated[
        Path | None,
        typer.Argument(
            help="fp32 ONNX model; its _fp16/_int8/.pt siblings are found next to it."
            " Default: the packaged shipped model."
        ),
    ] = None,
    target: Annotated[str, typer.Option(help="A target from the targets file, or all.")] = "all",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the table as markdown.")] = None,
    targets: TargetsOpt = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed inferences per target at most.")] = 50,
    max_seconds: Annotated[
        float, typer.Option("--max-seconds", min=0.0, help="Stop timing a target after this long (>= 5 runs).")
    ] = 10.0,
    miou: Annotated[bool, typer.Option("--miou/--no-miou", help="Score mIoU on the demo test slices.")] = True,
    rss: Annotated[bool, typer.Option("--rss/--no-rss", help="Peak RSS of a fresh inference process.")] = True,
    crop: Annotated[
        bool, typer.Option("--crop/--no-crop", help="Also time every target on the typical brain box (crop columns).")
    ] = True,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Every column (file size, create and first-run times, all percentiles, GFLOP/s)."),
    ] = False,
) -> None:
    """Latency, throughput, mIoU, memory and budgets per deployment target (the packaged targets file or --targets)."""
    from edgeseg.bench import BenchConfig, bench

    config = BenchConfig(runs=runs, max_seconds=max_seconds, miou=miou, rss=rss, crop=crop)
    if targets:
        config.targets_file = targets
    bench(model, target, config, json_path, markdown, wide)


@app.command("build-c")
def build_c_cmd(
    build_dir: Annotated[Path | None, typer.Option("--build-dir", help="CMake build folder; default build/c.")] = None,
    sanitize: Annotated[bool, typer.Option(help="Build with AddressSanitizer + UBSan (for testing).")] = False,
) -> None:
    """Build libedgeseg and edgeseg-run from a source checkout's csrc/ against the installed openvino (-Werror)."""
    from edgeseg.cbuild import build_c

    built = build_c(build_dir, sanitize, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"{built.library}\n{built.program}")


class CalibMethod(str, Enum):
    auto = "auto"
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path | None, typer.Argument(help="A .pt checkpoint; default: newest run's best.pt.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder; default: next to the checkpoint.")] = None,
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
    size_slices: Annotated[int, typer.Option("--size-slices", min=1, help="Slices at each other size.")] = 4,
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
    from edgeseg.export import ExportConfig, run_export

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


@app.command("triton")
def triton_cmd(
    model: Annotated[Path, typer.Argument(help="Exported ONNX model; X.engine + sidecar beside it is served too.")],
    out: Annotated[Path, typer.Option("--out", help="Triton model repository folder.")] = Path("triton-models"),
    name: Annotated[str | None, typer.Option(help="Model name; default: the file's stem.")] = None,
    max_batch_size: Annotated[
        int,
        typer.Option("--max-batch-size", min=1, help="ONNX Runtime model's max batch (the plan's is its profile's)."),
    ] = 32,
    instances: Annotated[int, typer.Option(min=1, help="Model instances per GPU (or on the CPU).")] = 1,
    kind: Annotated[Kind, typer.Option(help="auto: the GPU where there is one, else CPU.")] = Kind.auto,
) -> None:
    """Write a Triton Inference Server model repository for an exported model (edgeseg[triton])."""
    from edgeseg.triton import TritonConfig, run_triton

    config = TritonConfig(name=name, max_batch_size=max_batch_size, instances=instances, kind=kind.value)
    run_triton(model, out, config)


@app.command("validate")
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
    size_slices: Annotated[int, typer.Option("--size-slices", min=1, help="Slices at each other size.")] = 4,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Report; default parity.json beside the model.")
    ] = None,
) -> None:
    """Parity of exported models against their PyTorch checkpoint on real slices; exit 1 on a failed gate."""
    from edgeseg.parity import ParityConfig, size_table
    from edgeseg.parity_report import parse_providers, run_validate

    config = ParityConfig(sizes=size_table(slices, size_slices), providers=parse_providers(providers))
    run_validate(models, ckpt, data, config, json_path)


@app.command("listen")
def listen_cmd(
    config_file: Annotated[
        Path | None, typer.Option("--config", help="JSON file of settings (see README); options override it.")
    ] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="This node's AE title. [default: EDGESEG]")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="DICOM port. [default: 11112]")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind. [default: 127.0.0.1]")] = None,
    allow: Annotated[
        list[str] | None, typer.Option("--allow", help="A calling AE title to accept (repeat it); others are refused.")
    ] = None,
    allow_any: Annotated[
        bool, typer.Option("--allow-any", help="Accept any calling AE title (a trusted network only).")
    ] = False,
    state: Annotated[
        Path | None, typer.Option("--state", help="Spool, queue, results, audit.jsonl. [default: edgeseg-node]")
    ] = None,
    quiet_seconds: Annotated[
        float | None,
        typer.Option("--quiet-seconds", min=0.01, help="A series is complete after this long without an instance."),
    ] = None,
    send_to: Annotated[
        str | None, typer.Option("--send-to", help="C-STORE results to AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242).")
    ] = None,
    stow_url: Annotated[str | None, typer.Option("--stow-url", help="Or STOW-RS them to this DICOMweb URL.")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="ONNX model; default: the shipped one.")] = None,
    backend: Annotated[Backend | None, typer.Option(help="As `edgeseg infer --backend`. [default: auto]")] = None,
    retry_seconds: Annotated[
        float | None, typer.Option("--retry-seconds", min=0.01, help="Wait before sending again after a failure.")
    ] = None,
    seg_flagged: Annotated[
        bool,
        typer.Option("--seg-flagged", help="Send a SEG and SR marked 'QC FLAGGED' for series QC flags (default none)."),
    ] = False,
    watch: Annotated[
        Path | None,
        typer.Option("--watch", help="Also take in DICOM files exported to this folder (removed once spooled)."),
    ] = None,
    stow_port: Annotated[
        int | None,
        typer.Option("--stow-port", min=1, max=65535, help="Also accept DICOMweb STOW-RS on this port (no auth)."),
    ] = None,
) -> None:
    """A DICOM node: receive series by C-STORE, segment each when complete, send SEG and SR on (edgeseg[node])."""
    from edgeseg.node import run_node
    from edgeseg.node_config import NodeConfig, load_config, override
    from edgeseg.signals import stop_on_signals

    config = override(
        load_config(config_file) if config_file else NodeConfig(),
        ae_title=ae_title,
        port=port,
        host=host,
        allowed=tuple(allow) if allow else None,
        allow_any=allow_any or None,
        state=state,
        quiet_seconds=quiet_seconds,
        destination=send_to,
        stow_url=stow_url,
        model=model,
        backend=backend.value if backend else None,
        retry_seconds=retry_seconds,
        seg_flagged=seg_flagged or None,
        watch=watch,
        stow_port=stow_port,
    )
    with stop_on_signals():  # SIGTERM as Ctrl-C: the server stops between two steps
        run_node(config, say=lambda line: typer.echo(line, err=True))


# Modules the core install leaves out (pyproject.toml), and the install line a missing one names.
_TRAIN = "pip install 'edgeseg[train]' (install PyTorch first from pytorch.org for your CPU or GPU)"
EXTRA_OF = {
    **dict.fromkeys(("torch", "onnxscript", "onnxconverter_common", "onnxslim", "matplotlib", "scipy"), _TRAIN),
    "onnxruntime": "pip install 'edgeseg[cpu]', or 'edgeseg[gpu]' for CUDA (one of them: they share one import name)",
    "onnx": "pip install 'edgeseg[train]', 'edgeseg[triton]' or 'edgeseg[gpu]' (each brings onnx)",
    **dict.fromkeys(("pynetdicom", "dicomweb_client"), "pip install 'edgeseg[node]'"),
}


def _usage_error(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for a command-line usage error, else None.

    Typer 0.29 raises its vendored click's exceptions and older typers raise click's own,
    so they are recognised by their interface (``format_message``, ``exit_code``) rather
    than by importing ``click``, which a fresh install may not have.
    """
    format_message = getattr(exc, "format_message", None)
    code = getattr(exc, "exit_code", None)
    if not callable(format_message) or not isinstance(code, int):
        return None
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "edgeseg"
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `edgeseg` or `edgeseg data`: one line, not the help
        group = getattr(ctx, "command", None)
        names = ", ".join(group.list_commands(ctx)) if hasattr(group, "list_commands") else "see the help"
        return f"Missing command ({names}). See '{command} --help'.", code
    message = " ".join(str(format_message()).split()).rstrip(".") + "."
    return f"{message} See '{command} --help'.", code


def _empty_value(args: list[str]) -> tuple[str, str] | None:
    """(the option given as ``""``, or "an argument", and the command's path) if one was, else None.

    Python reads an empty path as the current folder, so ``--out "$UNSET"`` once wrote everything there.
    """
    if all(arg and not arg.endswith("=") for arg in args):  # nothing empty: skip building the command tree
        return None  # (typer's get_command: 70 ms of every command under load, issue 24)
    import typer.main

    command, path, flags, before = typer.main.get_command(app), ["edgeseg"], set(), ""
    for arg in args:
        if (sub := getattr(command, "commands", {}).get(arg)) is not None:  # a (sub)command's name
            command, path = sub, [*path, arg]
            flags = {o for p in command.params if getattr(p, "is_flag", False) for o in (*p.opts, *p.secondary_opts)}
        name, eq, value = arg.partition("=")
        if name.startswith("--") and eq and not value:  # --out=
            return name, " ".join(path)
        if not arg:
            option = before.startswith("-") and "=" not in before and before not in flags
            return (before if option else "an argument"), " ".join(path)
        before = arg
    return None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user mistakes print one line and exit 1 (usage errors 2), Ctrl-C 130.

    Set ``EDGESEG_DEBUG=1`` to see the traceback of a user mistake.
    """
    args = list(argv if argv is not None else sys.argv[1:])
    if empty := _empty_value(args):
        what, command = empty
        typer.secho(
            f"error: {what} is empty (an unset shell variable?); give it a value or leave it out,"
            f" since an empty path would mean the current folder. See '{command} --help'.",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(2)
    try:
        code = app(args=args, standalone_mode=False)
    except Interrupted as exc:  # the library says what was finished and how to resume
        typer.secho(f"{'terminated (SIGTERM)' if exc.code == 143 else 'interrupted'}: {exc}", err=True)
        sys.exit(exc.code)
    except KeyboardInterrupt:  # Ctrl-C outside a command (typer maps it inside to 130)
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except EdgesegError as exc:
        if os.environ.get("EDGESEG_DEBUG"):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in EXTRA_OF or os.environ.get("EDGESEG_DEBUG"):
            raise
        words = [arg for arg in (argv if argv is not None else sys.argv[1:]) if not arg.startswith("-")]
        command = " ".join(words[:2] if words[:1] == ["data"] else words[:1])
        typer.secho(
            f"error: `edgeseg {command}` needs {root}, which the core install leaves out: {EXTRA_OF[root]}",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(1)
    except Exception as exc:
        usage = _usage_error(exc)
        if usage is None or os.environ.get("EDGESEG_DEBUG"):
            raise
        message, code = usage
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        sys.exit(code)
    if code == 130:
        typer.secho("interrupted before finishing; rerun the same command", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
