"""Bench targets: the deployment profiles of ``bench/targets.toml``, and what file each one runs.

A target is a provider (cpu, cuda, tensorrt, openvino, c-openvino = libedgeseg through ctypes,
torch), a precision, batch, threads, the CPU architecture it is meant for and a budget taken
from clinical use. This module reads and checks the file (:func:`load_targets`, each mistake
named with its target), adds a row per candidate ``edgeseg tune`` ran on this machine
(:func:`tuned_targets`), maps a target to its model file and runner (:func:`model_file`,
:func:`runner_spec`), and says why this machine cannot run one (:func:`why_not_here`).

Split from :mod:`edgeseg.bench.suite` (472 lines), which keeps the measurement driver; ``edgeseg
tune`` reads targets without it. Torch-free: onnxruntime's providers, openvino and the C
library are looked at only inside :func:`why_not_here`'s checks.
"""

from __future__ import annotations

import platform
from dataclasses import fields
from pathlib import Path

from edgeseg import SHIPPED_TARGETS
from edgeseg.artifacts import ArtifactPaths
from edgeseg.bench.report import Target
from edgeseg.errors import EdgesegError
from edgeseg.files import read_json
from edgeseg.runtime.runners import RunnerSpec

DEFAULT_TARGETS = SHIPPED_TARGETS
PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino", "c-openvino", "torch")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # bf16: OpenVINO on the fp32 file


def load_targets(path: Path = DEFAULT_TARGETS) -> dict[str, Target]:
    """Read and check ``targets.toml``: one ``[name]`` table per target.

    Raises:
        EdgesegError: missing file, bad TOML, unknown keys or values (naming the target).
    """
    import tomllib

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise EdgesegError(f"{path}: targets file not found; pass --targets FILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgesegError(f"{path}: not valid TOML ({exc}); fix the file") from None
    known = {f.name for f in fields(Target)} - {"name"}
    targets = {}
    for name, spec in raw.items():
        where = f"{path}: target [{name}]"
        if not isinstance(spec, dict) or set(spec) - known:
            extra = sorted(set(spec) - known) if isinstance(spec, dict) else spec
            raise EdgesegError(f"{where}: unknown keys {extra}; allowed: {sorted(known)}")
        try:
            target = Target(name=name, **spec)
        except TypeError as exc:
            raise EdgesegError(f"{where}: {exc}; give provider and a valid budget") from None
        _check_target(where, target)
        targets[name] = target
    return targets


def _check_target(where: str, t: Target) -> None:
    """Raise EdgesegError for impossible values."""
    if t.provider not in PROVIDERS:
        raise EdgesegError(f"{where}: provider {t.provider!r}; choose one of {PROVIDERS}")
    if t.precision not in PRECISIONS:
        raise EdgesegError(f"{where}: precision {t.precision!r}; choose one of {PRECISIONS}")
    if not (isinstance(t.batch, int) and t.batch >= 1 and isinstance(t.threads, int) and t.threads >= 0):
        raise EdgesegError(f"{where}: batch must be >= 1 and threads >= 0 (0 = all cores)")
    if t.hint not in ("latency", "throughput") or (t.hint == "throughput" and t.provider != "openvino"):
        raise EdgesegError(f"{where}: hint {t.hint!r}; latency, or throughput with provider openvino")


def select_targets(targets: dict[str, Target], name: str) -> list[Target]:
    """``all`` or one target by name."""
    if name == "all":
        return list(targets.values())
    if name not in targets:
        raise EdgesegError(f"unknown target {name!r}; choose all or one of {', '.join(targets)}")
    return [targets[name]]


def model_file(model: Path, target: Target) -> Path:
    """The file a target runs: the precision's sibling of ``model`` (X.onnx, X_int8.onnx, ...).

    torch loads the checkpoint ``X.pt``. TensorRT runs the native engine ``X.engine`` when
    its sidecar says it has the target's precision (int8 always: TensorRT needs the
    symmetric S8S8 model the engine is built from, not the CPU's U8S8 ``X_int8.onnx``);
    otherwise fp16 goes through ONNX Runtime's TensorRT provider on the fp32 graph.
    """
    paths = ArtifactPaths.of(model)
    if target.provider == "torch":
        return paths.checkpoint
    if target.provider == "tensorrt":
        if target.precision == "int8" or (read_json(paths.sidecar) or {}).get("precision") == target.precision:
            return paths.engine
        return paths.onnx()
    return paths.onnx("fp32" if target.precision == "bf16" else target.precision)


def tuned_targets(model: Path) -> list[Target]:
    """One target per candidate that ``edgeseg tune`` ran on this machine (``MODEL.deploy.json``);
    none without a deploy file, or for one tuned elsewhere."""
    from edgeseg.machine import fingerprint
    from edgeseg.runtime.deploy import read_plan

    try:
        plan = read_plan(model)
    except EdgesegError:
        return []
    if not plan.machine.matches(fingerprint()):
        return []
    provider, batch = {"ort": "cpu", "openvino": "openvino"}, int(plan.settings.get("batch", 1))
    return [
        Target(
            f"tuned {c.name}",
            provider[c.backend],
            c.precision,
            batch,
            c.threads,
            description=f"edgeseg tune: {c.label}",
            hint=c.hint,
        )
        for c in plan.candidates
        if c.role == "candidate" and c.status == "ok" and c.backend in provider
    ]


def runner_spec(target: Target, path: Path) -> RunnerSpec:
    """How :func:`edgeseg.runtime.runners.open_runner` runs a target's file: ``cpu`` is exactly the
    session ``edgeseg infer --provider cpu`` builds; OpenVINO's precision hint is explicit."""
    backend = "ort" if target.provider in ("cpu", "cuda", "tensorrt") else target.provider
    if target.provider == "tensorrt" and path.suffix == ".engine":
        backend = "tensorrt-engine"
    device = target.provider if backend == "ort" else "cpu"
    # OpenVINO gets an explicit hint (edgeseg.runtime.openvino_backend): int8 from QDQ with f32 elsewhere,
    # bf16 only where asked (and the CPU has it), never its own bf16 default.
    return RunnerSpec(backend, device, target.precision, target.threads, target.batch, hint=target.hint)


def why_not_here(target: Target, path: Path) -> str | None:
    """The reason this machine cannot run ``target`` on ``path``, or None if it can."""
    machine = platform.machine().lower()
    if target.arch and target.arch.lower() not in (machine, {"arm64": "aarch64"}.get(machine)):
        return f"profile for {target.arch}; this machine is {machine} (run it on the device)"
    if target.precision == "bf16" and target.provider != "openvino":
        return "bf16 runs on OpenVINO only (provider = openvino)"
    if target.precision == "bf16":
        from edgeseg.machine import fingerprint

        if not fingerprint().has_bf16:
            return f"OpenVINO bf16 needs AVX512-BF16 or AMX; this CPU ({fingerprint().cpu}) has neither"
    if not path.is_file():
        hint = {
            ".pt": "train and export the checkpoint",
            ".engine": f"run `edgeseg export --trt --{target.precision}` on the GPU",
        }.get(path.suffix, f"run `edgeseg export --{target.precision}`")
        return f"{path.name} not found ({hint})"
    if target.provider == "tensorrt" and path.suffix == ".engine":
        from edgeseg.runtime.tensorrt import gpu_problem

        return gpu_problem()
    if target.provider in ("cuda", "tensorrt"):
        from edgeseg.runtime.ort_session import resolve_providers

        try:
            resolve_providers(target.provider)
        except EdgesegError as exc:  # keep the reason, drop edgeseg infer's --provider advice
            return str(exc).split("; use --provider")[0]
        return None
    if target.provider == "c-openvino":
        from edgeseg.runtime.cbackend import why_unavailable

        return why_unavailable()
    module, extra = {"openvino": ("openvino", "openvino"), "torch": ("torch", "train")}.get(target.provider, ("", ""))
    if module:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'edgeseg[{extra}]')"
    return None
