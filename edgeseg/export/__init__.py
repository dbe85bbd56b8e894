"""From a checkpoint to deployable files: ONNX export, fp16/int8 quantisation, the parity checks and their model
card, ExecuTorch and the Triton model repository. May import every stage below it: the top level, io, data,
runtime and train (evaluation and robustness go into the model card).
"""

from __future__ import annotations

from edgeseg._moved import forwarder

# `edgeseg.export` was a module until issue 26 (now `edgeseg.export.onnx`): its public names, for one release,
# each from the module that holds it now.
_MOVED_NAMES = {
    "ArtifactPaths": "edgeseg.artifacts",
    "DEFAULT_OPSET": "edgeseg.export.onnx",
    "EdgesegError": "edgeseg.errors",
    "ExportConfig": "edgeseg.export.onnx",
    "ExportReport": "edgeseg.export.onnx",
    "FORMAT": "edgeseg.artifacts",
    "IR_VERSION": "edgeseg.export.onnx",
    "NORMALIZATION": "edgeseg.artifacts",
    "SplitRecord": "edgeseg.data.split",
    "check_writable_dir": "edgeseg.files",
    "export_model": "edgeseg.export.onnx",
    "export_onnx": "edgeseg.export.onnx",
    "model_metadata": "edgeseg.export.onnx",
    "next_commands": "edgeseg.export.onnx",
    "run_export": "edgeseg.export.onnx",
    "save_onnx": "edgeseg.artifacts",
    "set_metadata": "edgeseg.artifacts",
    "symbolic_dims": "edgeseg.export.onnx",
}

__getattr__ = forwarder(__name__, _MOVED_NAMES)
