"""The old import paths of the modules that issue 26 moved into subpackages, for one release.

``import edgeseg.scans`` still works: a finder at the front of ``sys.meta_path`` answers each old name
with the moved module itself (``edgeseg.io.scans``), so ``sys.modules`` holds one module object under
both names and monkeypatching either name patches that one module. The first import of an old name
gives a DeprecationWarning that names the new path, pointed at the line that imported it. The seven
old modules whose name a subpackage now has (``edgeseg.train`` ...) forward their public names through
that subpackage's ``__getattr__`` (:func:`forwarder`). Standard library only, and nothing is imported
until an old name is asked for: the torch-free half stays torch-free through an old path too.
The whole table: :func:`table`. The script that made the move (``tools/move_layout.py``)
is in the history at commit b7e4e8b; MOVED here is the one copy of the mapping.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

# old module -> where it lives now
MOVED = {
    "edgeseg.scan_files": "edgeseg.io.scan_files",
    "edgeseg.scan_readers": "edgeseg.io.scan_readers",
    "edgeseg.scans": "edgeseg.io.scans",
    "edgeseg.scan_rows": "edgeseg.io.scan_rows",
    "edgeseg.dicom": "edgeseg.io.dicom",
    "edgeseg.dicom_seg": "edgeseg.io.dicom_seg",
    "edgeseg.dicom_sr": "edgeseg.io.dicom_sr",
    "edgeseg.dicom_results": "edgeseg.io.dicom_results",
    "edgeseg.mosaic": "edgeseg.io.mosaic",
    "edgeseg.outputs": "edgeseg.io.outputs",
    "edgeseg.records": "edgeseg.io.records",
    "edgeseg.triage": "edgeseg.io.triage",
    "edgeseg.qc": "edgeseg.io.qc",
    "edgeseg.qc_anatomy": "edgeseg.io.qc_anatomy",
    "edgeseg.skullstrip": "edgeseg.io.skullstrip",
    "edgeseg.demo": "edgeseg.data.demo",
    "edgeseg.volume": "edgeseg.data.volume",
    "edgeseg.split": "edgeseg.data.split",
    "edgeseg.augment": "edgeseg.data.augment",
    "edgeseg.synth": "edgeseg.data.synth",
    "edgeseg.raw_head": "edgeseg.data.raw_head",
    "edgeseg.synth_planes": "edgeseg.data.synth_planes",
    "edgeseg.ort_session": "edgeseg.runtime.ort_session",
    "edgeseg.openvino_backend": "edgeseg.runtime.openvino_backend",
    "edgeseg.openvino_blobs": "edgeseg.runtime.openvino_blobs",
    "edgeseg.cbackend": "edgeseg.runtime.cbackend",
    "edgeseg.cbuild": "edgeseg.runtime.cbuild",
    "edgeseg.tensorrt": "edgeseg.runtime.tensorrt",
    "edgeseg.deploy": "edgeseg.runtime.deploy",
    "edgeseg.measure": "edgeseg.runtime.measure",
    "edgeseg.crop": "edgeseg.infer.crop",
    "edgeseg.infer_config": "edgeseg.infer.config",
    "edgeseg.scan_writer": "edgeseg.infer.scan_writer",
    "edgeseg.segment": "edgeseg.infer.segment",
    "edgeseg.cluster_connect": "edgeseg.infer.cluster_connect",
    "edgeseg.cluster_tasks": "edgeseg.infer.cluster_tasks",
    "edgeseg.cluster": "edgeseg.infer.cluster",
    "edgeseg.node_config": "edgeseg.node.config",
    "edgeseg.node_queue": "edgeseg.node.queue",
    "edgeseg.node_send": "edgeseg.node.send",
    "edgeseg.node_watch": "edgeseg.node.watch",
    "edgeseg.node_stow": "edgeseg.node.stow",
    "edgeseg.train_config": "edgeseg.train.config",
    "edgeseg.losses": "edgeseg.train.losses",
    "edgeseg.evaluate": "edgeseg.train.evaluate",
    "edgeseg.train_report": "edgeseg.train.report",
    "edgeseg.distributed": "edgeseg.train.distributed",
    "edgeseg.train_data": "edgeseg.train.data",
    "edgeseg.robustness": "edgeseg.train.robustness",
    "edgeseg.robustness_heads": "edgeseg.train.robustness_heads",
    "edgeseg.quantize_nodes": "edgeseg.export.quantize_nodes",
    "edgeseg.quantize_fp16": "edgeseg.export.quantize_fp16",
    "edgeseg.quantize": "edgeseg.export.quantize",
    "edgeseg.parity": "edgeseg.export.parity",
    "edgeseg.parity_report": "edgeseg.export.parity_report",
    "edgeseg.executorch_export": "edgeseg.export.executorch",
    "edgeseg.triton": "edgeseg.export.triton",
    "edgeseg.bench_targets": "edgeseg.bench.targets",
    "edgeseg.bench_report": "edgeseg.bench.report",
    "edgeseg.crop_bench": "edgeseg.bench.crop_bench",
    "edgeseg.tune": "edgeseg.bench.tune",
    "edgeseg.tune_report": "edgeseg.bench.tune_report",
}


def _warn(old: str, new: str) -> None:
    # The frame to blame is the user's import: past this module, a subpackage's __getattr__,
    # importlib.import_module and the import system's frames (warnings itself skips the last, so they
    # are not counted).
    frame, level = sys._getframe(0), 1
    while frame.f_back is not None:
        frame = frame.f_back
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:
            continue
        level += 1
        if name != __file__ and "importlib" not in name and frame.f_code.co_name != "__getattr__":
            break
    message = f"{old} moved to {new} (issue 26); the old path goes in the next release"
    warnings.warn(message, DeprecationWarning, stacklevel=level)


class _OldPaths:
    """A meta-path finder and loader for exactly the names in MOVED."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder module; exec_module swaps the real one in

    def exec_module(self, module: ModuleType) -> None:
        # The import system returns whatever sys.modules holds under the name after exec_module: the
        # moved module, untouched (its own __spec__ and __name__ stay the new path's).
        new = MOVED[module.__name__]
        real = importlib.import_module(new)
        _warn(module.__name__, new)
        sys.modules[module.__name__] = real


def forward(package: str, name: str, module: str) -> Any:
    """``edgeseg.train.train`` (once the module edgeseg.train) -> ``edgeseg.train.loop.train``, warning."""
    value = getattr(importlib.import_module(module), name)
    # `from edgeseg.train import train` asks twice: the import system's hasattr, then the import's
    # own getattr. Only the second warns, so the line gets one warning, not two.
    if sys._getframe(2).f_code.co_name != "_handle_fromlist":
        _warn(f"{package}.{name}", f"{module}.{name}")
    return value


def forwarder(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of a subpackage that took an old module's name: ``names`` forwarded."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return forward(package, name, names[name])

    return __getattr__


def install() -> None:
    """Put the finder first on sys.meta_path, once per process."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldPaths())


def table() -> str:
    """What moved where, as a Markdown table: ``python -c "from edgeseg._moved import table; print(table())"``."""
    return "\n".join(["| old | new |", "|---|---|", *(f"| `{old}` | `{new}` |" for old, new in MOVED.items())])
