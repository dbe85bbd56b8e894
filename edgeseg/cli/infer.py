"""`edgeseg infer`: segment scans with an exported ONNX model, torch-free.

The command builds an ``InferConfig`` and calls ``edgeseg.infer.run.run_inference``; the library is
imported inside the body, so that `edgeseg infer` (and `--help`) never loads torch: the core
install has none (tests/cli/test_cli.py runs infer where `import torch` fails).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.options import (
    Backend,
    batch_size_option,
    crop_option,
    model_option,
    out_option,
    seg_flagged_option,
)
from edgeseg.errors import EdgesegError, Interrupted


class Provider(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


class SegFormat(str, Enum):
    nifti = "nifti"
    dicom_seg = "dicom-seg"
    both = "both"


def infer_cmd(
    scans: Annotated[
        list[Path],
        typer.Argument(help="Files or folders: .npy, .png/.jpg/.tif, .nii(.gz), .dcm or DICOM series folders."),
    ],
    model: Annotated[Path | None, model_option("Exported ONNX model; default: the packaged shipped model.")] = None,
    out: Annotated[Path, out_option("Output folder; mirrors the input tree, gets summary.csv.")] = Path(
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
    batch_size: Annotated[int, batch_size_option("Slices per model call.")] = 8,
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
        seg_flagged_option(
            "DICOM: write the SEG and SR of a scan QC flagged too, described 'QC FLAGGED: <reasons>'"
            " (default: none, so nothing flagged reaches a PACS)."
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
        crop_option(
            "Run the model on each volume's brain box only (background outside it; on by default)."
            " --no-crop runs whole slices. Labels agree on >= 99.9 % of brain pixels; QC is the same."
        ),
    ] = True,
) -> None:
    """Segment scans with an exported ONNX model (torch-free).

    Exit 0 when every scan was segmented or skipped (DICOM series that triage sets aside, such as
    localizers, CT or reports, each listed as 'skipped <path>: <reason>'); exit 1 if any scan failed.
    """
    from edgeseg.infer.run import InferConfig, run_inference
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
