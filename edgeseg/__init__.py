"""edgeseg: one MRI segmentation U-Net from PyTorch training to edge and clinical deployment."""

from __future__ import annotations

__version__ = "0.1.0"

from edgeseg import _moved
from edgeseg.errors import EdgesegError

__all__ = ["EdgesegError", "__version__"]

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _shipped(packaged: str, repository: str) -> Path:
    """A shipped folder: inside an installed wheel, else in the repository checkout (editable install)."""
    inside = _PACKAGE / packaged
    return inside if inside.is_dir() else _PACKAGE.parent / repository


# The shipped default model (trained on the MNI152 demo set), its card and an example scan.
SHIPPED_MODEL_DIR = _shipped("_shipped", "export")
SHIPPED_MODEL = SHIPPED_MODEL_DIR / "model.onnx"
# Deployment targets of `edgeseg bench`.
SHIPPED_TARGETS = _shipped("_bench", "bench") / "targets.toml"

_moved.install()  # the old module paths (issue 26's move), for one release
