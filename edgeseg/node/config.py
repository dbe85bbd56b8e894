"""The configuration of `edgeseg listen`: who may call, where results go, when a series is complete.

Torch-free, standard library only. :class:`NodeConfig` holds every option; a site keeps its
settings in a JSON file (``edgeseg listen --config node.json``) whose keys are the field names
below, and options given on the command line override it:

    {"ae_title": "EDGESEG", "port": 11112, "allowed": ["ORTHANC", "MRI_SCANNER1"],
     "destination": "ORTHANC@127.0.0.1:4242", "quiet_seconds": 30, "state": "/var/lib/edgeseg-node"}

A wrong key or value is one line naming the file and the valid choices (no traceback).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError

# DICOM PS3.5 AE title: up to 16 characters of the default repertoire, no backslash or control characters.
AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


@dataclass(frozen=True)
class Destination:
    """A DICOM node to C-STORE results to: ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class NodeConfig:
    """Options of one `edgeseg listen` node."""

    ae_title: str = "EDGESEG"  # the called AE title senders must use
    port: int = 11112  # DICOM port (11112 is the IANA "dicom" port; 104 needs root)
    host: str = "127.0.0.1"  # interface to bind: loopback unless a site opens it on purpose
    allowed: tuple[str, ...] = ()  # calling AE titles accepted; every other caller is refused
    allow_any: bool = False  # accept any calling AE title (a trusted network only)
    state: Path = Path("edgeseg-node")  # spool, queue, results and audit.jsonl; survives restarts
    quiet_seconds: float = 30.0  # a series is complete when no instance of it came for this long
    destination: Destination | None = None  # C-STORE results here; None (and no stow_url): keep them in state/
    stow_url: str | None = None  # or STOW-RS them to this DICOMweb base URL (dicomweb-client)
    model: Path | None = None  # None: the shipped model (with its `edgeseg tune` pick, backend "auto")
    backend: str = "auto"  # as `edgeseg infer --backend`
    retry_seconds: float = 30.0  # wait before sending again after the destination failed
    stow_port: int | None = None  # also accept STOW-RS (DICOMweb) on this port of `host` (edgeseg.node.stow)
    watch: Path | None = None  # also take in DICOM files exported to this folder (edgeseg.node.watch)
    seg_flagged: bool = False  # send a SEG/SR marked "QC FLAGGED" for flagged series (as infer --seg-flagged)

    def check(self) -> NodeConfig:
        """Raise :class:`EdgesegError` on an impossible setting; return self."""
        for title in (self.ae_title, *self.allowed):
            check_ae_title(title)
        for name, port in (("port", self.port), ("stow_port", self.stow_port or 1)):
            if not 0 < port < 65536:
                raise EdgesegError(f"{name} {port}: not a TCP port; choose 1-65535 (e.g. 11112)")
        if not self.allowed and not self.allow_any and not self.watch and not self.stow_port:
            raise EdgesegError(
                "no calling AE title is allowed, so every sender would be refused; name each sender"
                ' with --allow AET (or "allowed" in --config), or pass --allow-any on a trusted network'
                " (or take instances only by --watch or --stow-port)"
            )
        if self.watch and not Path(self.watch).is_dir():
            raise EdgesegError(f"--watch {self.watch}: not a folder; create it or check the path")
        if self.quiet_seconds <= 0 or self.retry_seconds <= 0:
            raise EdgesegError("--quiet-seconds and --retry-seconds must be more than 0")
        if self.destination and self.stow_url:
            raise EdgesegError("give --send-to or --stow-url, not both: results go to one destination")
        return self


def override(config: NodeConfig, **options: Any) -> NodeConfig:
    """``config`` with each option that is not None put in its place (the command line wins)."""
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(given.get("destination"), str):
        given["destination"] = parse_destination(given["destination"])
    return replace(config, **given)


def check_ae_title(title: str) -> str:
    """``title`` if it is a valid AE title, else an :class:`EdgesegError` saying why."""
    if not AE_TITLE.fullmatch(title) or not title.strip():
        raise EdgesegError(
            f"AE title {title!r}: not valid; use 1-16 printable ASCII characters without a backslash (e.g. EDGESEG)"
        )
    return title.strip()


def parse_destination(text: str) -> Destination:
    """``AET@host:port`` as a :class:`Destination`; one line saying the form otherwise."""
    match = re.fullmatch(r"(.+)@([^@:]+|\[[0-9a-fA-F:]+\]):(\d+)", text.strip())
    if not match:
        raise EdgesegError(f"destination {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    port = int(match.group(3))
    if not 0 < port < 65536:
        raise EdgesegError(f"destination {text!r}: port {port} is not a TCP port (1-65535)")
    return Destination(check_ae_title(match.group(1)), match.group(2).strip("[]"), port)


def load_config(path: Path) -> NodeConfig:
    """A :class:`NodeConfig` from a JSON file of field names (see the module docstring)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise EdgesegError(f"--config {path}: cannot read it ({exc.strerror}); check the path") from None
    except ValueError as exc:
        raise EdgesegError(f"--config {path}: not valid JSON ({exc}); fix the file") from None
    if not isinstance(raw, dict):
        raise EdgesegError(f'--config {path}: expected a JSON object of settings, e.g. {{"port": 11112}}')
    names = [f.name for f in fields(NodeConfig)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise EdgesegError(f"--config {path}: unknown setting {', '.join(unknown)}; valid: {', '.join(names)}")
    try:
        return NodeConfig(**_typed(raw))
    except (TypeError, ValueError, EdgesegError) as exc:  # a bad destination is an EdgesegError of its own
        raise EdgesegError(f"--config {path}: {exc}; fix the value") from None


def _typed(raw: dict[str, Any]) -> dict[str, Any]:
    """JSON values converted to the field types (paths, tuples, the destination)."""
    out = dict(raw)
    for key in ("state", "model", "watch"):
        if out.get(key) is not None:
            out[key] = Path(out[key])
    if "allowed" in out:
        if not isinstance(out["allowed"], list) or not all(isinstance(a, str) for a in out["allowed"]):
            raise ValueError("allowed must be a list of AE titles")
        out["allowed"] = tuple(a.strip() for a in out["allowed"])
    if isinstance(out.get("destination"), str):
        out["destination"] = parse_destination(out["destination"])
    for key in ("port", "stow_port"):
        if key in out and not isinstance(out[key], int):
            raise ValueError(f"{key} must be an integer")
    for key in ("quiet_seconds", "retry_seconds"):
        if key in out and not isinstance(out[key], (int, float)):
            raise ValueError(f"{key} must be a number of seconds")
    return out
