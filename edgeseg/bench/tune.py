"""Tune stage: time every gated backend x precision x thread setting on this machine, pick one.

    edgeseg tune [MODEL] [--target edge-x86] [--runs 30] [--slices 8]

For the fp32 ``MODEL`` (default the shipped ``export/model.onnx``) and its siblings
(``X_fp16.onnx``, ``X_int8.onnx``, ``X.pt``), :func:`tune` runs each candidate in a fresh
child interpreter (:func:`edgeseg.runtime.measure.run_child`), one after the other: one runtime's
spinning threads would otherwise slow the next one (1.3x seen between ORT and OpenVINO).
Each child loads its backend (:func:`edgeseg.runtime.runners.open_runner`), times 394² batches of the
target's size after warm-up (p50/p99 per batch), reads its peak RSS, then runs the held-out slices and compares its
logits and labels with ONNX Runtime fp32's on the same slices (run first, by the same
child code). Each candidate is gated by its precision (:data:`edgeseg.export.parity.GATES`).

Candidates: ONNX Runtime fp32/fp16/int8, OpenVINO fp32 (explicit f32 hint), bf16 (only where
the CPU has AVX512-BF16 or AMX; elsewhere listed as skipped with the reason) and int8 (our QDQ
file), each at 1 thread and at all cores (at most the target's threads). At a batch above 1 (a
throughput target such as ``clinical-cpu``), OpenVINO is also timed in its throughput mode
(the THROUGHPUT hint: the batch's slices as parallel requests on CPU streams) at all cores,
and the timing is shortened to one warm-up and at least 3 runs (a batch of 32 takes seconds). Peers, timed in the
same run and never picked: eager PyTorch on ``X.pt`` when torch is importable, and OpenVINO
with its own defaults (no hints, the file's dynamic shapes) on ``X.onnx``, what a user gets from
``compile_model(path, "CPU")``. OpenVINO candidates are compiled for the timed shape (the
runner's ``static`` shapes, :class:`edgeseg.runtime.runners.OpenVinoRunner`).

Every measured candidate and peer is then timed again in a fresh child on the typical brain box
(:func:`edgeseg.bench.crop_bench.typical_crop`: the median box of the held-out slices, what
``edgeseg infer`` runs after cropping), with that process's own peak RSS: the table's crop columns
(``--no-crop`` leaves them out and halves the run).

The pick is the fastest p50 among candidates that pass their gate and fit the target's RSS
budget (``rss_mb`` in bench/targets.toml); ``MODEL.deploy.json`` (:mod:`edgeseg.runtime.deploy`) is
written atomically beside the model (for the model packaged in an installed edgeseg, in the
user's cache folder instead: :func:`edgeseg.runtime.deploy.deploy_path`), with this machine's
fingerprint and every candidate. The pick is made on the whole frame (a volume the crop leaves
whole still has to fit); a faster candidate that only the budget left out is printed with what it
would have given (:mod:`edgeseg.bench.tune_report`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.machine import Fingerprint, fingerprint
from edgeseg.runtime.deploy import BACKENDS, Candidate, DeployPlan, deploy_path

FILE_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "bf16": "fp32"}  # bf16 runs the fp32 file
REFERENCE = ("ort", "fp32")  # what ΔmIoU, agreement and Δlogit are measured against
NO_OPENVINO = f"openvino is not installed ({BACKENDS['openvino'].install})"


@dataclass
class TuneConfig:
    """How ``edgeseg tune`` measures; saved in the deploy file."""

    target: str = "edge-x86"  # bench/targets.toml profile: its threads cap and RSS budget apply
    targets_file: Path | None = None  # None = the shipped bench/targets.toml
    size: int = 394  # slice side timed (the tutorial's)
    batch: int | None = None  # slices per timed inference; None = the target's batch
    warmup: int | None = None  # untimed inferences first; None = 3, or 1 above batch 1 (a batch of 32 takes seconds)
    runs: int = 30  # timed inferences per candidate at most
    min_runs: int | None = None  # timed inferences at least; None = 5, or 3 above batch 1
    max_seconds: float = 8.0  # stop timing a candidate after this long (once min_runs are in)
    slices: int = 8  # held-out slices for ΔmIoU (evenly spread over the held-out set)
    data: Path | None = None  # dataset root for the held-out slices; None = the checkpoint's / demo set
    threads: tuple[int, ...] = ()  # thread settings; () = 1 and all cores, capped by the target
    peers: bool = True  # also time eager PyTorch and OpenVINO's defaults (never picked)
    crop: bool = True  # also time each candidate on the typical brain box (edgeseg.bench.crop_bench), own process
    timeout_s: float = 600.0  # per child


# ----------------------------------------------------------------------------- candidates


def list_candidates(
    model: Path, here: Fingerprint, threads: tuple[int, ...], peers: bool = True, batch: int = 1
) -> list[Candidate]:
    """Every backend x precision x threads (x OpenVINO mode at a batch above 1) worth timing here;
    the impossible ones as skipped rows."""
    import importlib.util

    from edgeseg.artifacts import ArtifactPaths

    have_ov = importlib.util.find_spec("openvino") is not None
    paths = ArtifactPaths.of(model)
    out: list[Candidate] = []
    for backend, spec in BACKENDS.items():
        for precision in spec.precisions:
            file = paths.onnx(FILE_PRECISION[precision])
            reason = _why_not(backend, precision, file, here, have_ov)
            for t in threads if not reason else threads[:1]:
                out.append(
                    Candidate(backend, precision, t, file.name, status="skip" if reason else "", reason=reason or "")
                )
            if backend == "openvino" and batch > 1 and not reason:
                out.append(Candidate(backend, precision, threads[-1], file.name, hint="throughput"))
    if peers:
        pt = paths.checkpoint
        eager = "" if pt.is_file() else f"{pt.name} not found (the checkpoint beside the model)"
        if not eager and importlib.util.find_spec("torch") is None:
            eager = "torch is not installed (pip install 'edgeseg[train]')"
        out.append(Candidate("torch", "fp32", 0, pt.name, "peer", status="skip" if eager else "", reason=eager))
        ov = "" if have_ov else NO_OPENVINO
        out.append(Candidate("openvino", "default", 0, model.name, "peer", "skip" if ov else "", ov))
    return out


def _why_not(backend: str, precision: str, file: Path, here: Fingerprint, have_ov: bool) -> str | None:
    """Why ``backend`` cannot run ``precision`` here, or None."""
    if backend == "openvino" and not have_ov:
        return NO_OPENVINO
    if backend == "openvino" and precision == "bf16" and not here.has_bf16:
        return f"OpenVINO bf16 needs AVX512-BF16 or AMX; this CPU ({here.cpu}) has neither"
    if not file.is_file():
        return f"{file.name} not found (run `edgeseg export --{precision}`)"
    return None


def parse_threads(text: str | None) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``; None or empty -> ``()`` (the default settings)."""
    if not text:
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = (0,)
    if any(v < 1 for v in values):
        raise EdgesegError(f"--threads {text!r}: give positive integers separated by commas, e.g. 1,2")
    return values


def thread_settings(cores: int, cap: int, asked: tuple[int, ...] = ()) -> tuple[int, ...]:
    """``asked``, else 1 and all cores, none above ``cap`` (the target's threads; 0 = no cap)."""
    top = min(cores, cap) if cap else cores
    return tuple(sorted(set(asked))) if asked else tuple(sorted({1, top}))


# ----------------------------------------------------------------------------- held-out slices


def held_out_slices(model: Path, slices: int, data: Path | None) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """``(images, masks, source)``: up to ``slices`` of the model's own held-out slices, as bench and
    evaluate score it (the split its ONNX metadata records; torch-free)."""
    from edgeseg.artifacts import read_model_info
    from edgeseg.data.split import SplitRecord, held_out

    record = SplitRecord.from_metadata(read_model_info(model).metadata, model)
    held = held_out(record, data).limited(slices)
    return held.images, held.masks, held.source


# ----------------------------------------------------------------------------- the child


def child_main(spec_json: str) -> None:
    """Entry of a candidate's child process (:func:`edgeseg.runtime.measure.run_child`): one JSON line out."""
    import json

    print(json.dumps(candidate_child(json.loads(spec_json))))


def candidate_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Inside a fresh interpreter: load, time, read peak RSS, then score on the held-out slices.

    ``spec``: ``path``, ``runner`` (RunnerSpec fields), ``batch``, ``size``, ``warmup``, ``runs``,
    ``min_runs``, ``max_seconds``, ``eval`` (npz of images and masks), ``reference`` (npz
    of ORT fp32 logits, or None for the reference itself, which writes it to ``write_ref``).
    """
    from edgeseg.runtime.measure import peak_rss_mb, synthetic_batch, time_runs
    from edgeseg.runtime.runners import RunnerSpec, open_runner

    runner_spec = RunnerSpec(**{**spec["runner"], "outputs": ("logits", "labels")})
    runner = open_runner(Path(spec["path"]), runner_spec)
    x = synthetic_batch(spec.get("batch", 1), spec["size"])
    if spec.get("shape"):  # the brain box: the model sees only that part of the frame
        x = np.ascontiguousarray(x[..., : spec["shape"][0], : spec["shape"][1]])
    seconds = time_runs(runner.labels, x, spec["warmup"], spec["runs"], spec["min_runs"], spec["max_seconds"])
    rss, torch_free = peak_rss_mb(), "torch" not in sys.modules
    ms = np.asarray(seconds) * 1e3
    out = {
        "label": runner.label,
        "ran_precision": runner.precision,
        "create_s": round(runner.create_s, 3),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "runs": len(seconds),
        "rss_mb": round(rss, 1),
        "torch_free": torch_free,
    }
    return {**out, **_score(runner, spec)} if spec.get("eval") else out


def _score(runner: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """mIoU on the held-out slices and, against the reference logits, the parity numbers."""
    from edgeseg.metrics import evaluate_arrays

    held = np.load(spec["eval"])
    images, masks = list(held["images"]), list(held["masks"])
    results = [runner.run(img[None, None]) for img in images]
    logits = [np.asarray(r["logits"], np.float32) for r in results]
    labels = [np.asarray(r["labels"]) for r in results]
    names = [str(n) for n in held["class_names"]]
    miou = evaluate_arrays([lab[0] for lab in labels], masks, len(names), names)["miou_fg"]
    if spec["reference"] is None:  # this is the reference: it agrees with itself
        np.savez(spec["write_ref"], *logits)
        ref_logits = logits
    else:
        ref = np.load(spec["reference"])
        ref_logits = [ref[f"arr_{i}"] for i in range(len(images))]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(logits, ref_logits, strict=True))
    agree = np.mean([(lab == r.argmax(1)).mean() for lab, r in zip(labels, ref_logits, strict=True)])
    scale = max(float(np.abs(r).max()) for r in ref_logits)
    return {"miou": miou, "max_abs": diff, "ref_max": scale, "agreement": float(agree)}


# ----------------------------------------------------------------------------- the run


def tune(model: Path, config: TuneConfig | None = None, log: Any = None) -> DeployPlan:
    """Measure every candidate in its own process, gate, pick, write ``MODEL.deploy.json``.

    Args:
        model: the fp32 ONNX file.
        config: settings; default :class:`TuneConfig`.
        log: progress callback taking one line, or None.

    Returns:
        The :class:`DeployPlan` written beside the model.
    """
    from edgeseg.artifacts import read_model_info
    from edgeseg.bench.targets import DEFAULT_TARGETS, load_targets, select_targets
    from edgeseg.bench.tune_report import ratios

    config = config or TuneConfig()
    model = Path(model)
    info = read_model_info(model)
    target = select_targets(load_targets(config.targets_file or DEFAULT_TARGETS), config.target)[0]
    here = fingerprint()
    threads = thread_settings(here.cores, target.threads, config.threads)
    batch = config.batch or target.batch
    config = replace(  # the defaults by batch; given values stay
        config,
        warmup=(3 if batch == 1 else 1) if config.warmup is None else config.warmup,
        min_runs=(5 if batch == 1 else 3) if config.min_runs is None else config.min_runs,
    )
    candidates = list_candidates(model, here, threads, config.peers, batch)
    load_start = os.getloadavg()
    images, masks, source = held_out_slices(model, config.slices, config.data)
    crop = None
    if config.crop:
        from edgeseg.bench.crop_bench import typical_crop

        crop = typical_crop(images, info.normalization_contract, info.min_size, config.size)
    with tempfile.TemporaryDirectory(prefix="edgeseg-tune-") as tmp:
        held = Path(tmp) / "held.npz"
        np.savez(held, images=np.stack(images), masks=np.stack(masks), class_names=np.array(info.class_names))
        first = next(
            i for i, c in enumerate(candidates) if (c.backend, c.precision, c.threads) == REFERENCE[:2] + (threads[-1],)
        )
        reference = _measure(model, candidates[first], config, batch, held, None, Path(tmp) / "ref.npz", log)
        if reference.status != "ok":
            raise EdgesegError(f"{model}: ONNX Runtime fp32 (the reference) failed: {reference.reason}; re-export it")
        measured = [
            reference if i == first else _measure(model, c, config, batch, held, Path(tmp) / "ref.npz", None, log)
            for i, c in enumerate(candidates)
        ]
    if crop is not None:
        measured = [_measure_crop(model, c, config, batch, crop.shape, log) for c in measured]
    for c in measured:
        c.d_miou = None if c.miou is None or reference.miou is None else c.miou - reference.miou
    _gate(measured)
    budget = target.rss_mb
    pick = choose(measured, budget)
    settings = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "threads": list(threads),
        "batch": batch,
        "eval": source,
        "reference_miou": reference.miou,
        "crop": None if crop is None else {"shape": list(crop.shape), "describe": crop.describe()},
        "load_avg_start": [round(v, 2) for v in load_start],
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
    }
    plan = DeployPlan(model.name, here, target.name, budget, measured, pick, settings)
    plan.settings["ratios"] = ratios(plan)
    plan.settings["crop_ratios"] = ratios(plan, cropped=True)
    from edgeseg.files import write_json

    where = deploy_path(model)
    try:
        write_json(where, plan.to_json())
    except OSError as exc:
        raise EdgesegError(
            f"{where}: cannot write the deploy file ({exc}); copy {model} to a folder of yours"
        ) from None
    return plan


def _measure(
    model: Path,
    c: Candidate,
    config: TuneConfig,
    batch: int,
    held: Path,
    reference: Path | None,
    write_ref: Path | None,
    log: Any,
) -> Candidate:
    """Run one candidate's child; a failure is a ``fail`` row with the child's last line."""
    from edgeseg.files import sha256_file
    from edgeseg.runtime.measure import run_child

    if c.status == "skip":
        return c
    if log:
        log(f"{c.name} ({c.file}) ...")
    path = model.with_name(c.file)
    spec = {
        "batch": batch,
        "mode": "tune",  # run_child names it in its errors
        "path": str(path),
        "runner": _runner_fields(c),
        "eval": str(held),
        "reference": None if reference is None else str(reference),
        "write_ref": None if write_ref is None else str(write_ref),
        **{k: getattr(config, k) for k in ("size", "warmup", "runs", "min_runs", "max_seconds")},
    }
    try:
        result = run_child(spec, c.threads, timeout=config.timeout_s, module="edgeseg.bench.tune")
        # run_child sizes BLAS pools to c.threads; a throughput candidate splits them over streams
    except Exception as exc:  # a backend that cannot load or run is a row, not a crashed tune
        return replace(c, status="fail", reason=str(exc).removeprefix("tune helper failed: ")[:300])
    return replace(c, status="ok", sha256=sha256_file(path), **result)


def _runner_fields(c: Candidate) -> dict[str, Any]:
    """The :class:`edgeseg.runtime.runners.RunnerSpec` fields a child opens ``c`` with."""
    runner: dict[str, Any] = {"backend": c.backend, "precision": c.precision, "threads": c.threads, "device": "cpu"}
    if c.hint != "latency":
        runner["hint"] = c.hint
    if c.backend == "openvino" and c.role == "peer":  # what compile_model(path, "CPU") gives a user
        runner["shapes"] = "dynamic"
    return runner


def _measure_crop(
    model: Path, c: Candidate, config: TuneConfig, batch: int, shape: tuple[int, int], log: Any
) -> Candidate:
    """Time a measured candidate again on the brain box, in a fresh child (so its peak RSS is that of a
    process that ran the box only); a failure leaves the crop figures empty and says so in ``reason``."""
    from edgeseg.runtime.measure import run_child

    if c.status != "ok":
        return c
    if log:
        log(f"{c.name} ({c.file}) on the {shape[0]}x{shape[1]} brain box ...")
    spec = {
        "batch": batch,
        "mode": "tune",
        "path": str(model.with_name(c.file)),
        "runner": _runner_fields(c),
        "shape": list(shape),
        **{k: getattr(config, k) for k in ("size", "warmup", "runs", "min_runs", "max_seconds")},
    }
    try:
        got = run_child(spec, c.threads, timeout=config.timeout_s, module="edgeseg.bench.tune")
    except Exception as exc:
        note = f"brain box failed: {str(exc).removeprefix('tune helper failed: ')[:200]}"
        return replace(c, reason=f"{c.reason}; {note}" if c.reason else note)
    return replace(c, crop_p50_ms=got["p50_ms"], crop_p99_ms=got["p99_ms"], crop_rss_mb=got["rss_mb"])


def _gate(measured: list[Candidate]) -> None:
    """Apply each candidate's precision gate (vs ONNX Runtime fp32) in place."""
    from edgeseg.export.parity import GATES, Gate, gate_failures

    for c in measured:
        if c.status != "ok" or c.agreement is None:
            continue
        c.gate = c.ran_precision if c.ran_precision in GATES else c.precision
        row = {"max_abs": c.max_abs, "ref_max": c.ref_max, "agreement": c.agreement, "d_miou": c.d_miou}
        c.failures = gate_failures(row, GATES.get(c.gate, Gate()))


def choose(measured: list[Candidate], rss_budget_mb: float | None) -> int | None:
    """Index of the fastest p50 among candidates that pass their gate and fit the RSS budget."""
    fits = []
    for i, c in enumerate(measured):
        if c.role != "candidate" or not c.passed:
            continue
        if rss_budget_mb is not None and c.rss_mb is not None and c.rss_mb > rss_budget_mb:
            note = f"peak RSS {c.rss_mb:.0f} MB > budget {rss_budget_mb:.0f} MB"
            c.reason = note if not c.reason or "budget" in c.reason else f"{c.reason}; {note}"
            continue
        fits.append(i)
    return min(fits, key=lambda i: measured[i].p50_ms) if fits else None


def run_tune(model: Path | None, config: TuneConfig) -> DeployPlan:
    """``edgeseg tune``: measure, print the table and the pick, write ``MODEL.deploy.json``."""
    import onnxruntime  # noqa: F401  the reference runs in a child: without it, the CLI names the extra here
    from rich.console import Console

    from edgeseg import SHIPPED_MODEL
    from edgeseg.bench.tune_report import summary_lines, table

    model = Path(model) if model is not None else SHIPPED_MODEL
    err, out = Console(stderr=True), Console(width=max(Console().width, 200))
    plan = tune(model, config, log=lambda m: err.print(m, highlight=False, markup=False))
    out.print(table(plan))
    for line in summary_lines(plan):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    out.print(f"-> {deploy_path(model)}", highlight=False, markup=False)
    return plan
