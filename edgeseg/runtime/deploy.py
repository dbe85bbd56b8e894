"""``MODEL.deploy.json``: what ``edgeseg tune`` measured on one machine, and the backend it picked.

:mod:`edgeseg.bench.tune` writes it; ``edgeseg infer --backend auto`` reads it through
:func:`choose_backend`, which returns the pick only when the file was tuned on a machine with
this one's fingerprint (:mod:`edgeseg.machine`) and the picked file is still the one that was
timed (its SHA-256), names a backend, precision and ONNX file that infer runs, and its backend
is installed. Otherwise inference runs the model file on ONNX Runtime (at the file's own
precision) and says why, and how to tune, in one line. The file sits beside the model, or in
the cache folder for the model packaged inside an installed edgeseg (:func:`deploy_path`).

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


@dataclass(frozen=True)
class Backend:
    """A backend that tune times and ``edgeseg infer`` runs on CPU."""

    title: str  # for lines: "ONNX Runtime"
    module: str  # what must import for it to run
    extra: str  # the pyproject extra that installs it
    precisions: tuple[str, ...]  # what it runs (bf16: OpenVINO on the fp32 file)

    @property
    def install(self) -> str:
        """The command that installs it: ``pip install 'edgeseg[openvino]'``."""
        return f"pip install 'edgeseg[{self.extra}]'"


BACKENDS = {
    "ort": Backend("ONNX Runtime", "onnxruntime", "cpu", ("fp32", "fp16", "int8")),
    "openvino": Backend("OpenVINO", "openvino", "openvino", ("fp32", "bf16", "int8")),
}


def deploy_path(model: Path) -> Path:
    """Where ``MODEL.deploy.json`` lives: beside a user's model (``export/model.onnx`` ->
    ``export/model.deploy.json``); for the model packaged inside an installed edgeseg, in the
    cache folder (:func:`edgeseg.files.cache_dir`): site-packages is not the user's to write,
    and ``pip uninstall`` would leave the file behind."""
    from edgeseg.artifacts import ArtifactPaths
    from edgeseg.files import cache_dir

    beside = ArtifactPaths.of(model).deploy
    package = Path(__file__).resolve().parents[1]
    return cache_dir() / beside.name if Path(model).resolve().is_relative_to(package) else beside


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
    gate: str = ""  # the gate applied (its precision), see edgeseg.export.parity.GATES
    failures: list[str] = field(default_factory=list)  # failed gate checks, with numbers
    hint: str = "latency"  # openvino: latency | throughput (RunnerSpec.hint)
    crop_p50_ms: float | None = None  # the same, timed on the typical brain box (settings["crop"])
    crop_p99_ms: float | None = None
    crop_rss_mb: float | None = None  # peak RSS of a process that ran the box only

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
    """The tuned pick for ``model`` on this machine, or ONNX Runtime on ``model`` with the reason.

    Args:
        model: the fp32 ONNX file (its deploy file is at :func:`deploy_path`).
        here: this machine's fingerprint; default :func:`edgeseg.machine.fingerprint`.

    Returns:
        The :class:`Choice`; never raises for a missing, foreign, stale or hand-broken deploy file
        (an unknown or uninstalled backend, a file that is not an edgeseg ONNX model).
    """
    model = Path(model)
    where = deploy_path(model)
    if where.parent == model.parent:  # beside the model: its name says enough
        where = Path(where.name)
    tune = f"run `edgeseg tune {model}` to pick the fastest gated backend for this machine"
    fallback = Choice(model, *DEFAULT, None, "", tuned=False)
    ort = _ort_on(model)
    try:
        plan = read_plan(model)
    except EdgesegError as exc:
        reason = "no deploy file" if not deploy_path(model).exists() else str(exc).split("; run")[0]
        return _with_note(fallback, f"backend: {ort} ({reason}); {tune}")
    here = here or fingerprint()
    if not plan.machine.matches(here):
        why = "; ".join(plan.machine.differences(here))
        return _with_note(fallback, f"backend: {ort} ({where} was tuned on another machine: {why}); {tune}")
    pick = plan.picked
    if pick is None:
        return _with_note(fallback, f"backend: {ort} ({where}: no candidate passed its gate)")
    why_not, fix = _unusable(model, pick)
    if why_not:
        return _with_note(fallback, f"backend: {ort} ({where} picks {why_not}); {fix}{tune}")
    path = model.with_name(pick.file)
    tuned = f"the tuned pick of {where}, p50 {pick.p50_ms:.1f} ms"
    note = f"backend: {pick.label or pick.name} on {path.name} ({tuned})"
    return Choice(path, pick.backend, pick.precision, pick.threads or None, note, tuned=True, hint=pick.hint)


def _unusable(model: Path, pick: Candidate) -> tuple[str, str]:
    """Why ``edgeseg infer`` cannot run ``pick`` here, worded to follow "picks", and a fix to put
    before the advice to tune again; ``("", "")`` if it can."""
    import importlib

    from edgeseg.artifacts import read_model_info
    from edgeseg.files import sha256_file
    from edgeseg.runtime.openvino_backend import import_openvino

    backend = BACKENDS.get(pick.backend)
    if backend is None:
        runs = " and ".join(BACKENDS)
        return f"the backend {pick.backend!r}, which `edgeseg infer` does not run: it runs {runs}", ""
    if pick.precision not in backend.precisions:
        runs = ", ".join(backend.precisions)
        return f"{backend.title} {pick.precision}, a precision it does not run: it runs {runs}", ""
    if Path(pick.file).name != pick.file or not pick.file.endswith(".onnx"):
        return f"{pick.file}, which is not an ONNX file beside {model.name}", ""
    path = model.with_name(pick.file)
    if not path.is_file():
        return f"{pick.file}, which is missing", ""
    if sha256_file(path) != pick.sha256:
        return f"{pick.file}, which changed since it was tuned", ""
    try:
        read_model_info(path)
    except EdgesegError as exc:  # e.g. a hand-written file: its hash matches, its content is no model
        return (
            f"{pick.file}, which is not an edgeseg ONNX model: {str(exc).removeprefix(f'{path}: ').split(';')[0]}",
            "",
        )
    try:  # openvino without the conversion tools inference never uses (15 MB of RSS)
        import_openvino() if backend.module == "openvino" else importlib.import_module(backend.module)
    except ImportError:  # e.g. a core install of a folder tuned with the openvino extra
        return (
            f"{backend.title} {pick.precision}, but {backend.module} is not installed",
            f"{backend.install} to run it, or ",
        )
    return "", ""


def _ort_on(model: Path) -> str:
    """``ONNX Runtime int8``: what runs ``model`` when no tuned pick applies, named in the file's own precision."""
    from edgeseg.artifacts import read_model_info

    try:
        return f"ONNX Runtime {read_model_info(model).precision}"
    except EdgesegError:  # not a model: infer refuses it before running anything
        return "ONNX Runtime"


def _with_note(choice: Choice, note: str) -> Choice:
    return Choice(choice.path, choice.backend, choice.precision, choice.threads, note, choice.tuned)
