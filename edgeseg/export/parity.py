"""Parity validation: prove an exported model is the trained PyTorch model, on real slices.

    edgeseg validate MODEL.onnx [MODEL_fp16.onnx ...] [--ckpt CKPT] [--data DIR] [--providers ...]

Reference: the checkpoint's PyTorch model, fp32, eval mode. Candidates: every given ONNX
file on every provider that really works here (ORT CPU always; CUDA and TensorRT when a
session truly runs on them, the provider that actually ran is reported). Inputs: real
held-out slices with ground truth (the checkpoint's ``data.test_keys``, or the demo set's
slab split, or ``--data``), centre-cropped or padded to each size of the table. Padding
repeats the image's edge pixels (MRI borders are air, so this adds background-like
intensities) and labels the padded pixels background (0).

Per candidate x size: max and mean |Δlogit|, the smallest atol that passes at rtol 1e-3
(Polygraphy's "minimum required tolerance"), label agreement with the reference argmax
(the candidate's in-graph ``labels`` output), foreground mIoU of reference and candidate
against ground truth, and ΔmIoU. Each row is gated by the file's precision (:data:`GATES`).
An independent executor, ``onnx.reference.ReferenceEvaluator``, must agree with ORT on a
small odd-sized input; for fp16 files PyTorch's CPU ``.half()`` run shows the real float16
activation error and the largest activation against float16's 65504 limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.artifacts import ArtifactPaths, ModelInfo, engine_info, read_model_info, read_sidecar
from edgeseg.data.split import HeldOut, checkpoint_split, size_batches
from edgeseg.errors import EdgesegError
from edgeseg.files import read_json, write_json
from edgeseg.metrics import compare
from edgeseg.runtime.ort_session import PROVIDERS, probe
from edgeseg.runtime.runners import Runner, RunnerSpec, open_runner, run_batches

if TYPE_CHECKING:
    from edgeseg.export.quantize_fp16 import Fp16Check
    from edgeseg.model import Checkpoint

    pass

FORMAT = "edgeseg-parity-v1"
SIZES_HWN = (  # (H, W, batch): the training size, odd, non-square, small
    (394, 394, 4),
    (393, 395, 1),
    (394, 300, 2),
    (300, 394, 2),
    (256, 257, 1),
    (64, 64, 2),
)


def size_table(full: int = 8, other: int = 4) -> tuple[tuple[int, int, int, int], ...]:
    """``(H, W, slices, batch)`` rows: ``full`` slices at 394x394, ``other`` at each other size."""
    if full < 1 or other < 1:
        raise EdgesegError(f"validation slices {full}/{other}: need at least 1 per size")
    return tuple((h, w, full if (h, w) == (394, 394) else other, b) for h, w, b in SIZES_HWN)


SIZES = size_table()


@dataclass(frozen=True)
class Gate:
    """Pass criteria for one precision; None = not checked."""

    max_logit_rel: float | None = None  # max|Δlogit| <= this * max(1, max|reference logit|)
    min_agreement: float | None = None  # label agreement with the reference, fraction
    max_dmiou: float | None = None  # |mIoU(candidate) - mIoU(reference)|, foreground mIoU


# One gate per precision, whichever backend runs it (ONNX Runtime, OpenVINO, ExecuTorch): a
# backend x precision pair that fails its gate is never deployed or picked by `edgeseg tune`.
GATES = {
    "fp32": Gate(max_logit_rel=1e-4, min_agreement=0.9999, max_dmiou=1e-4),
    "fp16": Gate(min_agreement=0.999, max_dmiou=1e-3),
    "bf16": Gate(min_agreement=0.999, max_dmiou=1e-3),  # like fp16: 8 mantissa bits, fp32's range
    "int8": Gate(max_dmiou=5e-3),
}


@dataclass
class ParityConfig:
    """What ``edgeseg validate`` compares; saved in parity.json."""

    sizes: tuple[tuple[int, int, int, int], ...] = SIZES  # (H, W, slices, batch) rows
    providers: tuple[str, ...] = ("cpu", "cuda", "tensorrt")  # candidates, where they work
    gates: dict[str, Gate] = field(default_factory=lambda: dict(GATES))  # per precision
    threads: int | None = None  # ORT intra-op threads; None = one per physical core
    reference_check: bool = True  # onnx.reference.ReferenceEvaluator vs ORT, small input
    fp16_torch_slices: int = 1  # 394² slices for the PyTorch .half() check (~10 s each on CPU)


@dataclass
class ParityRow:
    """One candidate file x provider x size."""

    model: str
    precision: str
    provider: str  # the provider that actually ran (session.get_providers()[0])
    size: str  # "HxW"
    batch: int
    slices: int
    max_abs: float  # max |Δlogit|
    mean_abs: float
    ref_max: float  # max |reference logit|, the scale of the fp32 gate
    min_atol: float  # smallest atol passing at rtol RTOL
    agreement: float  # fraction of pixels whose label equals the reference argmax
    miou_ref: float | None
    miou_cand: float | None
    d_miou: float | None
    failures: list[str] = field(default_factory=list)  # names the failed checks


@dataclass
class ParityReport:
    """Everything one validation measured; ``passed`` is the gate."""

    checkpoint: str
    checkpoint_sha256: str
    data: str
    config: dict[str, Any]
    rows: list[ParityRow] = field(default_factory=list)
    reference_evaluator: dict[str, Any] = field(default_factory=dict)  # per model file
    fp16_activations: Fp16Check | None = None  # PyTorch .half() check
    skipped: dict[str, str] = field(default_factory=dict)  # provider -> why not run
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. int8 calibration, latencies

    @property
    def failures(self) -> list[str]:
        rows = [f"{r.model} {r.provider} {r.size}: {f}" for r in self.rows for f in r.failures]
        refs = [f"{m}: {v['failure']}" for m, v in self.reference_evaluator.items() if v.get("failure")]
        return rows + refs

    @property
    def passed(self) -> bool:
        return bool(self.rows) and not self.failures

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the parity.json content)."""
        return {
            "format": FORMAT,
            "passed": self.passed,
            "failures": self.failures,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "data": self.data,
            "config": self.config,
            "rows": [asdict(r) for r in self.rows],
            "reference_evaluator": self.reference_evaluator,
            "fp16_activations": asdict(self.fp16_activations) if self.fp16_activations else {},
            "skipped_providers": self.skipped,
            **self.extra,
        }

    def write(self, path: Path, merge: bool = False) -> Path:
        """Atomically write :meth:`to_json` to ``path``.

        With ``merge``, an existing parity.json of the same checkpoint keeps what this report
        does not redo (other models' rows, the export's calibration and per-file scores): a
        standalone ``edgeseg validate`` of one file never erases the record of the others.
        """
        record = self.to_json()
        old = read_json(path) if merge else None
        if old and old.get("format") == FORMAT and old.get("checkpoint_sha256") == self.checkpoint_sha256:
            redone = {r["model"] for r in record["rows"]}
            rows = [r for r in old.get("rows", []) if r.get("model") not in redone] + record["rows"]
            refs = {**old.get("reference_evaluator", {}), **record["reference_evaluator"]}
            failures = [f"{r['model']} {r['provider']} {r['size']}: {f}" for r in rows for f in r["failures"]]
            failures += [f"{m}: {v['failure']}" for m, v in refs.items() if v.get("failure")]
            fresh = {k: v for k, v in record.items() if v not in ({}, [], None, "")}
            record = {
                **old,
                **fresh,
                "rows": rows,
                "reference_evaluator": refs,
                "failures": failures,
                "passed": bool(rows) and not failures,
            }
        return write_json(path, record)


# ----------------------------------------------------------------------------- data


def load_eval_data(ckpt: dict[str, Any], data: Path | None = None) -> HeldOut:
    """Held-out slices (+ training slices) of a checkpoint: :func:`edgeseg.data.split.checkpoint_split`."""
    return checkpoint_split(ckpt, data)


def gate_failures(row: dict[str, Any], gate: Gate) -> list[str]:
    """Names of the checks a row fails under ``gate`` (empty = pass)."""
    failed = []
    limit = None if gate.max_logit_rel is None else gate.max_logit_rel * max(1.0, row["ref_max"])
    if limit is not None and not row["max_abs"] <= limit:
        failed.append(f"max|Δlogit| {row['max_abs']:.2e} > {limit:.2e}")
    if gate.min_agreement is not None and not row["agreement"] >= gate.min_agreement:
        failed.append(f"agreement {100 * row['agreement']:.4f}% < {100 * gate.min_agreement:g}%")
    d = row["d_miou"]
    if gate.max_dmiou is not None and d is not None and not abs(d) <= gate.max_dmiou:
        failed.append(f"|ΔmIoU| {abs(d):.5f} > {gate.max_dmiou:g}")
    return failed


def reference_evaluator_check(
    path: Path, runner: Runner, gate: bool = True, shape: tuple[int, ...] = (1, 1, 33, 35)
) -> dict[str, Any]:
    """``onnx.reference.ReferenceEvaluator`` vs the ORT runner on one small odd-sized input.

    ``gate``: a difference above 1e-3 of the logit scale is a failure (fp32 files; fp16 and
    int8 files are reported only, the two runtimes round them differently by design).
    """
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    x = (rng.gamma(2.0, 300.0, shape)).astype(np.float32)  # MRI-like positive intensities
    try:
        ref_logits, ref_labels = ReferenceEvaluator(str(path)).run(["logits", "labels"], {"image": x})
    except Exception as exc:  # an op the reference runtime does not implement
        return {"shape": list(shape), "skipped": f"{type(exc).__name__}: {str(exc)[:160]}"}
    out = runner.run(x)
    logits, labels = out["logits"], out["labels"]
    diff = float(np.abs(ref_logits.astype(np.float32) - logits).max())
    scale = max(1.0, float(np.abs(ref_logits).max()))
    result = {"shape": list(shape), "max_abs": diff, "labels_equal": float((ref_labels == labels).mean())}
    if gate and diff > 1e-3 * scale:
        result["failure"] = f"ReferenceEvaluator and ORT differ by {diff:.2e} (> 1e-3 x {scale:.1f})"
    return result


# ----------------------------------------------------------------------------- validate


def find_checkpoint(model_path: Path, sha256: str) -> Path:
    """The ``X.pt`` next to ``X.onnx`` / ``X_fp16.onnx`` / ``X_int8.onnx`` whose hash matches."""
    from edgeseg.files import sha256_file

    candidate = ArtifactPaths.of(model_path).checkpoint
    if candidate.is_file() and (not sha256 or sha256_file(candidate) == sha256):
        return candidate
    raise EdgesegError(
        f"{model_path}: no matching checkpoint found beside it ({candidate.name} is "
        f"{'missing' if not candidate.is_file() else 'a different checkpoint'});"
        " pass the one it was exported from with --ckpt"
    )


def validate(
    models: Path | list[Path],
    ckpt: Path | Checkpoint | None = None,
    data: Path | None = None,
    config: ParityConfig | None = None,
    eval_data: HeldOut | None = None,
) -> ParityReport:
    """Compare exported ONNX files with their PyTorch checkpoint on real slices.

    Args:
        models: one or more edgeseg ONNX files exported from the same checkpoint.
        ckpt: the checkpoint (a path, or one already loaded); default the ``X.pt`` beside
            ``X.onnx`` (hash-checked).
        data: a tutorial-layout dataset to validate on (its slab split's test slices);
            default the checkpoint's held-out slices, or the demo set.
        config: sizes, providers, gates; default :class:`ParityConfig`.
        eval_data: already-loaded slices (export passes the ones it calibrated with).

    Returns:
        The report; ``report.passed`` is the gate, ``report.failures`` names failed checks.
    """
    from edgeseg.model import Checkpoint, reference_logits

    config = config or ParityConfig()
    paths = [Path(m) for m in (models if isinstance(models, list) else [models])]
    infos = [_model_info(p) for p in paths]
    loaded = Checkpoint.load(ckpt or find_checkpoint(paths[0], infos[0].checkpoint_sha256))
    ckpt, sha, model, state = loaded.path, loaded.sha256, loaded.model, loaded.state
    for info in infos:
        if info.checkpoint_sha256 and info.checkpoint_sha256 != sha:
            raise EdgesegError(
                f"{info.path}: exported from checkpoint {info.checkpoint_sha256[:12]}…, not"
                f" {ckpt} ({sha[:12]}…); pass the matching --ckpt"
            )
    eval_data = eval_data or load_eval_data(state, data)
    report = ParityReport(str(ckpt), sha, eval_data.source, _config_json(config))
    rows = size_batches(eval_data, config.sizes)
    for row in rows:
        row["ref"] = reference_logits(model, row["inputs"])
    for path, info in zip(paths, infos, strict=True):
        _validate_file(report, path, info, rows, config)
        if info.precision == "fp16" and config.fp16_torch_slices:
            full = size_batches(eval_data, ((394, 394, config.fp16_torch_slices, 1),))[0]
            from edgeseg.export.quantize_fp16 import fp16_activation_check

            report.fp16_activations = fp16_activation_check(model, full["inputs"])
    return report


def _model_info(path: Path) -> ModelInfo:
    """ModelInfo of an ONNX file, of a TensorRT engine (its sidecar's metadata) or of an
    ExecuTorch file (the metadata of ``X.onnx`` beside it; ``X_int8.pte`` is int8)."""
    if path.suffix == ".engine":
        return engine_info(path)
    if path.suffix == ".pte":
        from dataclasses import replace

        onnx = read_model_info(ArtifactPaths.of(path).onnx())
        return replace(onnx, path=path, precision="int8" if path.stem.endswith("_int8") else "fp32")
    return read_model_info(path)


def _validate_engine(
    report: ParityReport, path: Path, info: Any, rows: list[dict[str, Any]], config: ParityConfig
) -> None:
    """Rows for a native TensorRT engine, for the sizes inside its profile."""
    runner = open_runner(path, RunnerSpec("tensorrt-engine", outputs=("logits", "labels")))
    profile = read_sidecar(path)["profile"]
    lo, hi = profile["min"], profile["max"]
    inside = [
        r
        for r in rows
        if all(
            lo[0] <= x.shape[0] <= hi[0] and lo[1] <= x.shape[2] <= hi[1] and lo[2] <= x.shape[3] <= hi[2]
            for x in r["inputs"]
        )
    ]
    if len(inside) < len(rows):
        report.skipped[path.name] = f"{len(rows) - len(inside)} sizes outside the engine's profile"
    _append_rows(report, path, info, inside, runner, runner.label, config)


def _append_rows(
    report: ParityReport,
    path: Path,
    info: Any,
    rows: list[dict[str, Any]],
    runner: Runner,
    actual: str,
    config: ParityConfig,
) -> None:
    gate = config.gates.get(info.precision, Gate())
    for row in rows:
        logits, labels = run_batches(runner, row["inputs"])
        numbers = compare(row["ref"], logits, labels, row["masks"], info.class_names)
        report.rows.append(
            ParityRow(
                model=path.name,
                precision=info.precision,
                provider=actual,
                size=row["size"],
                batch=row["batch"],
                slices=sum(len(x) for x in row["inputs"]),
                **numbers,
                failures=gate_failures(numbers, gate),
            )
        )


def _validate_file(
    report: ParityReport, path: Path, info: Any, rows: list[dict[str, Any]], config: ParityConfig
) -> None:
    """Append one row per working provider x size for one ONNX file (or engine, or .pte)."""
    if path.suffix == ".engine":
        _validate_engine(report, path, info, rows, config)
        return
    if path.suffix == ".pte":  # ExecuTorch's Python runtime (imports torch: export time only)
        runner = open_runner(path, RunnerSpec("executorch", outputs=("logits", "labels")))
        _append_rows(report, path, info, rows, runner, runner.label, config)
        return
    for provider in config.providers:
        reason = probe(PROVIDERS[provider]) if provider in PROVIDERS else "unknown provider"
        if reason:
            report.skipped[provider] = reason
            continue
        runner = open_runner(
            path, RunnerSpec("ort", provider, threads=config.threads or 0, outputs=("logits", "labels"))
        )
        if provider == "cpu" and config.reference_check:
            report.reference_evaluator[path.name] = reference_evaluator_check(
                path, runner, gate=info.precision == "fp32"
            )
        _append_rows(report, path, info, rows, runner, runner.provider, config)


def _config_json(config: ParityConfig) -> dict[str, Any]:
    d = asdict(config)
    d["gates"] = {k: asdict(v) for k, v in config.gates.items()}
    d["sizes"] = [list(s) for s in config.sizes]
    return d
