"""edgeseg: one MRI segmentation U-Net from PyTorch training to edge and clinical deployment."""

from __future__ import annotations

__version__ = "0.1.0"

from edgeseg.errors import EdgesegError

__all__ = ["EdgesegError", "__version__"]
