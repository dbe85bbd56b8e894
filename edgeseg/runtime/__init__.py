"""Running an exported model, torch-free: the runners (ONNX Runtime, OpenVINO, the C library and its build,
TensorRT engines), the deploy file that edgeseg tune writes, and the timed child processes. May import the top
level of edgeseg only; the eager PyTorch runner imports torch lazily.
"""

from __future__ import annotations

from edgeseg._moved import forwarder

# `edgeseg.runtime` was a module until issue 26 (now `edgeseg.runtime.runners`): its public names, for one release,
# each from the module that holds it now.
_MOVED_NAMES = {
    "BACKENDS": "edgeseg.runtime.runners",
    "CRunner": "edgeseg.runtime.runners",
    "EdgesegError": "edgeseg.errors",
    "EngineRunner": "edgeseg.runtime.runners",
    "ExecuTorchRunner": "edgeseg.runtime.runners",
    "INPUT_NAME": "edgeseg.artifacts",
    "OV_SHAPES": "edgeseg.runtime.runners",
    "OpenVinoRunner": "edgeseg.runtime.runners",
    "OrtRunner": "edgeseg.runtime.runners",
    "PROBE_SHAPE": "edgeseg.runtime.runners",
    "Runner": "edgeseg.runtime.runners",
    "RunnerSpec": "edgeseg.runtime.runners",
    "SessionLevers": "edgeseg.runtime.ort_session",
    "TorchRunner": "edgeseg.runtime.runners",
    "create_session": "edgeseg.runtime.ort_session",
    "default_trt_options": "edgeseg.runtime.ort_session",
    "describe": "edgeseg.errors",
    "engine_info": "edgeseg.artifacts",
    "open_runner": "edgeseg.runtime.runners",
    "read_model_info": "edgeseg.artifacts",
    "run_batches": "edgeseg.runtime.runners",
}

__getattr__ = forwarder(__name__, _MOVED_NAMES)
