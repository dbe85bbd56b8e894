"""``MODEL.deploy.json``: what ``edgeseg tune`` measured on one machine, and the backend it picked.

:mod:`edgeseg.tune` writes it; ``edgeseg infer --backend auto`` reads it through
:func:`choose_backend`, which returns the pick only when the file was tuned on a machine with
this one's fingerprint (:mod:`edgeseg.machine`) and the picked file is still the one that was
timed (its SHA-256). Otherwise inference runs ONNX Runtime fp32 and says, once, how to tune.

Torch-free, like inference: imports the standard library, numpy-free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError
from edgeseg.machine import Fingerprint, fingerprint

FORMAT = "edgeseg-deploy-v1"
DEFAULT = ("ort", "fp32")  # (backend, precision) when nothing tuned applies
BACKEND_MODULES = {"ort": "onnxruntime", "openvino": "openvino"}  # what a pick needs importable


def deploy_path(model: Path) -> Path:
    """``export/model.onnx`` (or any sibling) -> ``export/model.deploy.json``."""
    from edgeseg.artifacts import ArtifactPaths

    return ArtifactPaths.of(model).deploy


@dataclass
class Candidate:
    """One backend x precision x thread setting that tune timed (or could not run)."""

    backend: str  # ort | openvino | torch (RunnerSpec.backend)
    precision: str  # asked for: fp32 | fp16 | bf16 | int8
    threads: int  # 0 = the backend's own default
    file: str  # the model file's name, beside MODEL
    role: str = "candidate"  # candidate | peer (eager PyTorch, OpenVINO's defaults: compared, never picked)
    status: str = ""  # ok | fail | skip; "" = not measured yet
    reason: str = ""  # why skipped or failed, or why not picked
    label: str = ""  # what really ran, e.g. "OpenVINO 2026.4 CPU int8 (19/21 convs u8)"
    ran_precision: str = ""  # the precision that really ran
    sha256: str = ""  # of ``file`` when it was timed
    create_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    runs: int = 0
    rss_mb: float | None = None  # peak RSS of the process that ran it (VmHWM after timing)
    torch_free: bool | None = None  # the process never imported torch
    miou: float | None = None  # foreground mIoU on the held-out slices
    d_miou: float | None = None  # against ONNX Runtime fp32 on the same slices
    agreement: float | None = None  # label agreement with ONNX Runtime fp32
    max_abs: float | None = None  # max |Δlogit| against ONNX Runtime fp32
    ref_max: float | None = None  # max |logit| of ONNX Runtime fp32: the scale of the fp32 gate
    gate: str = ""  # the gate applied (its precision), see edgeseg.parity.GATES
    failures: list[str] = field(default_factory=list)  # failed gate checks, with numbers
    hint: str = "latency"  # openvino: latency | throughput (RunnerSpec.hint)

    @property
    def name(self) -> str:
        threads = f"{self.threads}t" if self.threads else "default threads"
        mode = "" if self.hint == "latency" else f" {self.hint}"
        return f"{self.backend} {self.precision} {threads}{mode}"

    @property
    def passed(self) -> bool:
        return self.status == "ok" and not self.failures


@dataclass
class DeployPlan:
    """The content of ``MODEL.deploy.json``."""

    model: str  # the fp32 ONNX file tuned (name; the other files sit beside it)
    machine: Fingerprint
    target: str  # bench/targets.toml profile whose budget applied
    rss_budget_mb: float | None
    candidates: list[Candidate]
    pick: int | None  # index into candidates; None = nothing passed (infer runs ORT fp32)
    settings: dict[str, Any] = field(default_factory=dict)  # size, runs, eval slices, load average

    @property
    def picked(self) -> Candidate | None:
        return None if self.pick is None else self.candidates[self.pick]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "machine": self.machine.to_json(),
            "target": self.target,
            "rss_budget_mb": self.rss_budget_mb,
            "pick": self.pick,
            "picked": None if self.picked is None else self.picked.name,
            "settings": self.settings,
            "candidates": [asdict(c) for c in self.candidates],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeployPlan:
        """Inverse of :meth:`to_json`; KeyError/TypeError/ValueError on a malformed record."""
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        candidates = [Candidate(**c) for c in data["candidates"]]
        pick = data["pick"]
        if pick is not None and not 0 <= int(pick) < len(candidates):
            raise ValueError(f"pick {pick} is not a candidate")
        return cls(
            model=str(data["model"]),
            machine=Fingerprint.from_json(data["machine"]),
            target=str(data["target"]),
            rss_budget_mb=data.get("rss_budget_mb"),
            candidates=candidates,
            pick=None if pick is None else int(pick),
            settings=dict(data.get("settings") or {}),
        )


def read_plan(model: Path) -> DeployPlan:
    """The plan beside ``model``; EdgesegError (naming the file and the fix) if absent or unreadable."""
    path = deploy_path(model)
    fix = f"run `edgeseg tune {model}` on this machine"
    try:
        return DeployPlan.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise EdgesegError(f"{path}: not found; {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgesegError(f"{path}: not a readable deploy file ({type(exc).__name__}: {exc}); {fix}") from exc


@dataclass(frozen=True)
class Choice:
    """What ``--backend auto`` runs: a file and a backend, and the line that says why."""

    path: Path
    backend: str
    precision: str
    threads: int | None  # None: as the caller asked
    note: str  # one line for the user
    tuned: bool  # True: the pick of a matching deploy file
    hint: str = "latency"  # openvino: latency | throughput


def choose_backend(model: Path, here: Fingerprint | None = None) -> Choice:
    """The tuned pick for ``model`` on this machine, or ONNX Runtime fp32 with the reason.

    Args:
        model: the fp32 ONNX file (``MODEL.deploy.json`` is looked for beside it).
        here: this machine's fingerprint; default :func:`edgeseg.machine.fingerprint`.

    Returns:
        The :class:`Choice`; never raises for a missing, foreign or stale deploy file.
    """
    model = Path(model)
    tune = f"run `edgeseg tune {model}` to pick the fastest gated backend for this machine"
    fallback = Choice(model, *DEFAULT, None, "", tuned=False)
    try:
        plan = read_plan(model)
    except EdgesegError as exc:
        reason = "no deploy file" if not deploy_path(model).exists() else str(exc).split("; run")[0]
        return _with_note(fallback, f"backend: ONNX Runtime fp32 ({reason}); {tune}")
    here = here or fingerprint()
    if not plan.machine.matches(here):
        why = "; ".join(plan.machine.differences(here))
        return _with_note(
            fallback,
            f"backend: ONNX Runtime fp32 ({deploy_path(model).name} was tuned on another machine: {why}); {tune}",
        )
    pick = plan.picked
    if pick is None:
        return _with_note(
            fallback, f"backend: ONNX Runtime fp32 ({deploy_path(model).name}: no candidate passed its gate)"
        )
    path = model.with_name(pick.file)
    import importlib.util

    from edgeseg.files import sha256_file

    module = BACKEND_MODULES.get(pick.backend, pick.backend)
    if importlib.util.find_spec(module) is None:  # e.g. a core install of a tuned folder
        why = f"{module} is not installed: pip install 'edgeseg[{pick.backend}]'"
        return _with_note(fallback, f"backend: ONNX Runtime fp32 (the tuned pick {pick.name} needs {why})")

    if not path.is_file() or sha256_file(path) != pick.sha256:
        state = "is missing" if not path.is_file() else "changed since it was tuned"
        return _with_note(fallback, f"backend: ONNX Runtime fp32 ({path.name} {state}); {tune}")
    tuned = f"the tuned pick of {deploy_path(model).name}, p50 {pick.p50_ms:.1f} ms"
    note = f"backend: {pick.label or pick.name} on {path.name} ({tuned})"
    return Choice(path, pick.backend, pick.precision, pick.threads or None, note, tuned=True, hint=pick.hint)


def _with_note(choice: Choice, note: str) -> Choice:
    return Choice(choice.path, choice.backend, choice.precision, choice.threads, note, choice.tuned)
