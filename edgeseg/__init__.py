"""edgeseg: one MRI segmentation U-Net from PyTorch training to edge and clinical deployment."""

from __future__ import annotations

__version__ = "0.1.0"

from edgeseg.errors import EdgesegError

__all__ = ["EdgesegError", "__version__"]

from pathlib import Path

# The shipped default model (trained on the MNI152 demo set) lives in the repo's top-level export/.
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "export"
SHIPPED_MODEL = SHIPPED_MODEL_DIR / "model.onnx"
