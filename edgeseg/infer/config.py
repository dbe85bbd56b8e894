"""What `edgeseg infer` is asked and what it answers: its config, its report, and the runner choice.

Torch-free. :class:`InferConfig` holds the command's options, :class:`InferReport` a run's
result, :class:`Segmented` what the report keeps of one scan (built where it was segmented,
so a Dask worker sends it back to the client), and :func:`choose_runner` the file and runner
that ``--backend`` asks for. They live below both the local scan loop
(:mod:`edgeseg.infer.segment`) and the Dask one (:mod:`edgeseg.infer.cluster`), so that a worker is
configured, and chooses its runner, exactly as a local run does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeseg.artifacts import read_model_info
from edgeseg.errors import EdgesegError
from edgeseg.io.scans import MAX_RESAMPLED_PIXELS
from edgeseg.runtime.runners import RunnerSpec
from edgeseg.sizes import MAX_GUNZIPPED_BYTES

FORMATS = ("nifti", "dicom-seg", "both")  # outputs of a DICOM input
# What the runner fetches per batch: logits for the QC confidence figures and for resampling, and
# the graph's own ArgMax, cheaper than numpy's on the logits (README, QC cost).
FETCHED = ("logits", "labels")
BACKENDS = ("auto", "ort", "openvino")  # --backend
# Inputs whose QC mosaic is written unless --no-overlay: volumes, where one label file is hard to
# judge by eye. A .npy or PNG input is one slice (or a stack without geometry) whose label PNG/array
# is already what a reader opens; --overlay gives them a mosaic too.
MOSAIC_KINDS = ("nifti", "dicom")


@dataclass
class InferConfig:
    """Options of one `edgeseg infer` run."""

    model: Path | None = None  # None: the shipped export/model.onnx
    out: Path = Path("segmentations")  # output root; mirrors the input tree
    backend: str = "auto"  # auto (edgeseg tune's pick for this machine, else ort on the file as given), ort, openvino
    provider: str = "auto"  # auto (TensorRT > CUDA > CPU that really work), cpu, cuda, tensorrt
    threads: int | None = None  # onnxruntime intra-op threads; None: one per physical core
    batch_size: int = 8  # slices per session.run; also the TensorRT profile's batch
    axis: int | None = None  # volume axis to slice along; None: acquisition axis, else axial
    overlay: bool | None = None  # <name>_overlay.png, the QC mosaic; None: for volumes (MOSAIC_KINDS) only
    overwrite: bool = False  # redo scans whose outputs exist (default: skip them, i.e. resume)
    prefetch: int = 2  # scans decoded ahead of the one on the model
    workers: int = 2  # threads that read and write scans
    quiet: bool = False  # no progress bar or report lines (failures still reported)
    resample: bool = True  # resample slices in-plane to the model's pixel spacing when both are known
    cluster: str | None = None  # Dask scheduler address or local:N (edgeseg.infer.cluster); None: this process
    cluster_timeout: float = 30.0  # --cluster: seconds with no worker that can run a scan before the run stops
    series: str | None = None  # DICOM: only series with this UID or SeriesDescription pattern
    force: bool = False  # DICOM: also segment series whose Modality is not MR
    format: str = "both"  # DICOM inputs: nifti | dicom-seg | both (SEG for PACS, NIfTI for research)
    seg_flagged: bool = False  # DICOM SEG and SR for scans QC flagged too, marked "QC FLAGGED: <reasons>"
    skull_strip: bool = False  # ROBEX brain mask first (NIfTI/DICOM); labels outside it are 0
    max_resampled_pixels: int = MAX_RESAMPLED_PIXELS  # H x W a slice may grow to by resampling
    max_decompressed_mb: int = MAX_GUNZIPPED_BYTES >> 20  # MiB a .nii.gz may decompress to
    # run the model on each volume's brain box only (edgeseg.infer.crop); --no-crop: whole slices. QC is the
    # same either way: signed (CT) volumes are not cropped, brain at a box edge reruns whole slices.
    crop: bool = True


@dataclass
class InferReport:
    """What a run did: counts, one summary row per scan, throughput."""

    provider: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0
    failed: int = 0
    skipped: int = 0  # outputs already there, intact and up to date (resume)
    redone: int = 0  # outputs already there but damaged or stale, made again (within done)
    ignored: int = 0  # files of unsupported types met while walking folders
    ignored_files: list[Path] = field(default_factory=list)
    set_aside: list[tuple[Path, str]] = field(default_factory=list)  # DICOM that is no image, or not selected
    flagged: list[tuple[Path, str]] = field(default_factory=list)  # QC figures outside the model's ranges
    slices: int = 0
    resampled: int = 0  # scans whose slices went to the model at its pixel spacing
    cropped: int = 0  # scans whose model ran on their brain's box only (edgeseg.infer.crop)
    seconds: float = 0.0  # wall time of the scan loop
    model_seconds: float = 0.0  # time inside session.run
    summary: Path | None = None

    @property
    def slices_per_s(self) -> float:
        return self.slices / self.seconds if self.seconds else 0.0

    @property
    def model_slices_per_s(self) -> float:
        return self.slices / self.model_seconds if self.model_seconds else 0.0


@dataclass
class Segmented:
    """What the report keeps of one segmented scan (built where it was segmented)."""

    row: dict[str, Any]  # its summary.csv row
    slices: int
    seconds: float  # inside session.run
    resampled: bool  # went to the model at its pixel spacing
    notes: list[str]  # lines to show about it
    cropped: bool = False  # the model ran on its brain's box only


def choose_runner(model: Path, config: InferConfig) -> tuple[Path, RunnerSpec, str]:
    """The file and runner ``--backend`` asks for, and a line saying why (empty: nothing to say).

    ``auto`` runs the pick of ``edgeseg tune`` (``MODEL.deploy.json``, :mod:`edgeseg.runtime.deploy`)
    where it was tuned on this machine, else ONNX Runtime on ``model`` with one line on how to tune.
    tune measures CPU backends only, so a GPU provider that works here (or is asked for) wins.
    """
    from edgeseg.runtime.deploy import choose_backend
    from edgeseg.runtime.ort_session import resolve_providers

    ort = RunnerSpec("ort", config.provider, "fp32", config.threads or 0, config.batch_size, FETCHED)
    if config.backend not in BACKENDS:
        raise EdgesegError(f"--backend {config.backend}: unknown; choose one of {', '.join(BACKENDS)}")
    if config.backend == "ort":
        return model, ort, ""
    cpu = replace(ort, backend="openvino", device="cpu")
    if config.backend == "openvino":
        return model, replace(cpu, precision="int8" if read_model_info(model).precision == "int8" else "fp32"), ""
    if config.provider not in ("auto", "cpu") or len(resolve_providers(config.provider)) > 1:
        return model, ort, ""
    choice = choose_backend(model)
    if not choice.tuned:
        return model, ort, choice.note
    spec = replace(
        cpu if choice.backend == "openvino" else ort,
        precision=choice.precision,
        threads=config.threads or choice.threads or 0,
        hint=choice.hint,
    )
    return choice.path, spec, choice.note
