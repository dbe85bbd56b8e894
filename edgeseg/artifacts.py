"""The edgeseg model contract, written and read in one place (torch-free).

An edgeseg ONNX file (``edgeseg-onnx-v1``) has one float32 input ``image`` ``(N, 1, H, W)``
of raw intensities, outputs ``logits`` float32 ``(N, C, H, W)`` and ``labels`` uint8
``(N, H, W)``, and ``edgeseg.*`` metadata_props that say what it is (class names, minimum
size, precision, normalisation contract, pixel spacing, the checkpoint it came from).

* :func:`read_model_info` checks a file against the contract and returns a :class:`ModelInfo`;
  :func:`set_metadata` and :func:`save_onnx` are the writing side (used by export).
* :class:`ArtifactPaths` is the one place that knows the sibling files of a model:
  ``X.pt -> X.onnx / X_fp16.onnx / X_int8.onnx / X.engine (+ .json) / X.deploy.json``.
* :func:`read_sidecar` reads a TensorRT engine's ``X.engine.json``, which carries the
  ONNX file's metadata (an engine has none of its own).
* :func:`find_latest_checkpoint`: the newest ``runs/*/best.pt``.

Imports numpy-free standard library plus ``onnx`` (lazily, to read or save a graph).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.errors import EdgesegError, describe
from edgeseg.files import atomic_write

if TYPE_CHECKING:
    import onnx

    from edgeseg.onnx_header import OnnxHeader, ValueInfo

FORMAT = "edgeseg-onnx-v1"
INPUT_NAME = "image"
OUTPUTS = {"logits": ("float", 4), "labels": ("uint8", 3)}  # name -> (element type, rank)
REQUIRED_KEYS = ("format", "class_names", "num_classes", "in_channels", "min_size")
# The normalisation is inside the graph, so a file of any of these contracts runs as exported;
# a newer contract may change what the input must be, so it is refused.
KNOWN_CONTRACTS = ("1", "2", "3")
NORMALIZATION = {  # edgeseg.normalization of each contract (edgeseg.normalization_contract)
    1: "per-image z-score over H and W inside the graph: (x - mean) / sqrt(var + 1e-6); feed raw scanner intensities",
    2: "per-image tissue mean inside the graph: x / mean(x | x > 0.4 sum(x^4)/sum(x^3)),"
    " independent of padding, cropping and intensity scale; feed raw scanner intensities",
    3: "per-image tissue mean inside the graph as in contract 2, and each image framed in zeros so that"
    " its first nonzero row and column sit on the 8-pixel pooling grid (logits cut back to H x W):"
    " labels do not move when a zero-background slice is padded or cropped; feed raw scanner intensities",
}


@dataclass(frozen=True)
class ModelInfo:
    """What an edgeseg ONNX file says about itself (its ``edgeseg.*`` metadata)."""

    path: Path
    precision: str  # "fp32" | "fp16" | "int8"
    class_names: tuple[str, ...]
    in_channels: int
    min_size: int  # smallest H and W the network accepts
    opset: int
    version: str = ""  # edgeseg version that exported it
    normalization: str = ""  # how the graph normalises raw intensities
    normalization_contract: int = 1  # its version; files written before it was recorded are 1
    train_miou_fg: float | None = None  # held-out foreground mIoU of the checkpoint
    checkpoint_sha256: str = ""  # the checkpoint this model was exported from
    pixel_spacing_mm: float | None = None  # in-plane mm per pixel of the training data; None: unknown
    metadata: dict[str, str] = field(default_factory=dict)  # every metadata_props entry

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_model_info(path: str | Path) -> ModelInfo:
    """Read and check an edgeseg ONNX file without creating a session.

    Args:
        path: an ONNX file written by ``edgeseg export``.

    Returns:
        Its :class:`ModelInfo`.

    Raises:
        EdgesegError: missing or unreadable file, or not an ``edgeseg-onnx-v1`` model
            (wrong inputs/outputs, missing metadata).
    """
    from edgeseg.onnx_header import read_header

    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: model not found; run `edgeseg export` or pass --model")
    try:  # the wire format, not the onnx package: ~11 MB less in every inference process
        header = read_header(path)
    except (OSError, ValueError) as exc:  # truncated, corrupt or unreadable file
        raise EdgesegError(
            f"{path}: not a readable ONNX file ({describe(exc)}); pass a model written by `edgeseg export`"
        ) from exc
    check_io(path, header)
    return info_from_metadata(path, header.metadata, header.opset)


def check_io(path: Path, header: OnnxHeader) -> None:
    """Raise unless the graph has the contract's input and outputs."""

    def describe(vi: ValueInfo) -> tuple[str, int]:
        return vi.elem, vi.rank

    inputs = [vi for vi in header.inputs if vi.name not in header.initializers]
    fix = "re-export it with `edgeseg export`"
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or describe(inputs[0]) != ("float", 4):
        got = [(vi.name, *describe(vi)) for vi in inputs]
        raise EdgesegError(
            f"{path}: not an edgeseg model: inputs are {got}, expected one float32 rank-4"
            f" input '{INPUT_NAME}' (N, 1, H, W); {fix}"
        )
    outputs = {vi.name: describe(vi) for vi in header.outputs}
    for name, want in OUTPUTS.items():
        if outputs.get(name) != want:
            raise EdgesegError(
                f"{path}: not an edgeseg model: output '{name}' is {outputs.get(name)},"
                f" expected {want[0]} of rank {want[1]}; {fix}"
            )


def info_from_metadata(path: Path, meta: dict[str, str], opset: int) -> ModelInfo:
    """Parse the ``edgeseg.*`` metadata into a ModelInfo."""
    fix = "re-export it with `edgeseg export`"
    missing = [k for k in REQUIRED_KEYS if f"edgeseg.{k}" not in meta]
    if missing:
        keys = ", ".join(f"edgeseg.{k}" for k in missing)
        raise EdgesegError(f"{path}: not an edgeseg model: metadata lacks {keys}; {fix}")
    if meta["edgeseg.format"] != FORMAT:
        raise EdgesegError(f"{path}: model format is {meta['edgeseg.format']!r}, this edgeseg reads {FORMAT!r}; {fix}")
    try:
        names = tuple(str(n) for n in json.loads(meta["edgeseg.class_names"]))
        num, in_ch, min_size = (int(meta[f"edgeseg.{k}"]) for k in REQUIRED_KEYS[2:])
        miou = meta.get("edgeseg.train_miou_fg")
        miou_value = float(miou) if miou not in (None, "", "null", "None") else None
    except (ValueError, TypeError) as exc:
        raise EdgesegError(f"{path}: malformed edgeseg metadata ({exc}); {fix}") from exc
    contract = meta.get("edgeseg.normalization_contract", "1")
    if contract not in KNOWN_CONTRACTS:
        raise EdgesegError(
            f"{path}: normalisation contract {contract!r} is unknown to this edgeseg (knows"
            f" {', '.join(KNOWN_CONTRACTS)}); upgrade edgeseg, or run a file this version's `edgeseg export` wrote"
        )
    if len(names) != num or num < 2 or in_ch < 1 or min_size < 1:
        raise EdgesegError(
            f"{path}: inconsistent edgeseg metadata ({len(names)} class names, num_classes"
            f" {num}, in_channels {in_ch}, min_size {min_size}); {fix}"
        )
    return ModelInfo(
        path=path,
        precision=meta.get("edgeseg.precision", "fp32"),
        class_names=names,
        in_channels=in_ch,
        min_size=min_size,
        opset=opset,
        version=meta.get("edgeseg.version", ""),
        normalization=meta.get("edgeseg.normalization", ""),
        train_miou_fg=miou_value,
        normalization_contract=int(contract),
        checkpoint_sha256=meta.get("edgeseg.checkpoint_sha256", ""),
        pixel_spacing_mm=_pixel_spacing(path, meta.get("edgeseg.pixel_spacing_mm")),
        metadata=dict(meta),
    )


def _pixel_spacing(path: Path, value: str | None) -> float | None:
    """``edgeseg.pixel_spacing_mm`` as a positive float; absent or empty means unknown."""
    if value is None or not value.strip():
        return None
    try:
        mm = float(value)
    except ValueError:
        mm = float("nan")
    if not math.isfinite(mm) or mm <= 0:
        raise EdgesegError(
            f"{path}: metadata edgeseg.pixel_spacing_mm is {value!r}, expected a positive number"
            " of mm such as '0.5' (or empty when unknown); re-export it with `edgeseg export`"
        )
    return mm


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the ``edgeseg.*`` metadata_props, keeping any others."""
    kept = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("edgeseg.")]
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def save_onnx(proto: onnx.ModelProto, path: Path) -> Path:
    """Full ``onnx.checker`` check and shape inference, then an atomic single-file save."""
    import onnx

    del proto.graph.value_info[:]  # stale after fp16/int8 rewrites; inference redoes them
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise EdgesegError(f"{path}: the exported graph fails onnx.checker ({exc})") from exc
    path = Path(path)
    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))
    return path


PRECISIONS = ("fp32", "fp16", "int8")
_SUFFIX = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}  # X.onnx, X_fp16.onnx, X_int8.onnx
_EXTENSIONS = (".engine.json", ".deploy.json", ".onnx", ".engine", ".pte", ".pt")  # longest first
SIDECAR_FORMAT = "edgeseg-trt-engine-v1"


@dataclass(frozen=True)
class ArtifactPaths:
    """The sibling files of one model, from any of them (``X.pt``, ``X_int8.onnx``, ``X.engine``, ...)."""

    folder: Path
    stem: str  # ``X``: the checkpoint's name without ``.pt``

    @classmethod
    def of(cls, path: Path, out: Path | None = None) -> ArtifactPaths:
        """The artifacts of ``path``'s model, in ``out`` if given, else beside ``path``."""
        path = Path(path)
        stem = path.name
        for ext in _EXTENSIONS:
            if stem.endswith(ext):
                stem = stem.removesuffix(ext)
                break
        for suffix in _SUFFIX.values():
            if suffix and stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        return cls(Path(out) if out is not None else path.parent, stem)

    @property
    def checkpoint(self) -> Path:
        return self.folder / f"{self.stem}.pt"

    def onnx(self, precision: str = "fp32") -> Path:
        """``X.onnx``, ``X_fp16.onnx`` or ``X_int8.onnx``."""
        if precision not in _SUFFIX:
            raise EdgesegError(f"precision {precision!r}: an ONNX file is one of {', '.join(PRECISIONS)}")
        return self.folder / f"{self.stem}{_SUFFIX[precision]}.onnx"

    def pte(self, precision: str = "fp32") -> Path:
        """``X.pte`` or ``X_int8.pte`` (ExecuTorch, ``edgeseg export --executorch``)."""
        if precision not in ("fp32", "int8"):
            raise EdgesegError(f"precision {precision!r}: an ExecuTorch file is fp32 or int8")
        return self.folder / f"{self.stem}{_SUFFIX[precision]}.pte"

    @property
    def engine(self) -> Path:
        return self.folder / f"{self.stem}.engine"

    @property
    def sidecar(self) -> Path:
        return self.folder / f"{self.stem}.engine.json"

    @property
    def parity(self) -> Path:
        return self.folder / "parity.json"

    @property
    def deploy(self) -> Path:
        """``X.deploy.json``: the runtime ``edgeseg tune`` picked on a machine."""
        return self.folder / f"{self.stem}.deploy.json"


def read_sidecar(engine: Path) -> dict[str, Any]:
    """The engine's ``X.engine.json``; EdgesegError if missing or not ours."""
    path = Path(f"{engine}.json")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgesegError(
            f"{engine}: no readable sidecar {path.name} ({type(exc).__name__}); engines without"
            " one are refused, rebuild it with `edgeseg export --trt` on this machine"
        ) from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise EdgesegError(f"{path}: not an edgeseg engine sidecar; rebuild with `edgeseg export --trt`")
    return sidecar


def engine_info(engine: Path) -> ModelInfo:
    """The ModelInfo of the ONNX file an engine was built from, from its sidecar."""
    meta = read_sidecar(engine).get("metadata") or {}
    return info_from_metadata(Path(engine), meta, int(meta.get("edgeseg.opset", 0) or 0))


def find_latest_checkpoint(runs_dir: Path = Path("runs")) -> Path:
    """The newest run's ``best.pt`` under ``runs_dir``."""
    candidates = sorted(Path(runs_dir).glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise EdgesegError(f"{runs_dir}: no run with a best.pt; train one with `edgeseg train` or pass a checkpoint")
    return candidates[-1]
