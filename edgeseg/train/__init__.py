"""Training and judging a checkpoint: the loop and its config, losses, multi-process training, evaluation, the
run report and the robustness report. May import the top level, data and runtime (the robustness report scores
ONNX files too); torch is imported where a tensor is needed.
"""

from __future__ import annotations

from edgeseg._moved import forwarder

# `edgeseg.train` was a module until issue 26 (now `edgeseg.train.loop`): its public names, for one release,
# each from the module that holds it now.
_MOVED_NAMES = {
    "ConfusionMatrix": "edgeseg.metrics",
    "EdgesegError": "edgeseg.errors",
    "EpochRecord": "edgeseg.train.config",
    "Interrupted": "edgeseg.errors",
    "ModelConfig": "edgeseg.model_contract",
    "NORM_CONTRACT": "edgeseg.model_contract",
    "RobustPatches": "edgeseg.data.augment",
    "Slices": "edgeseg.data.dataset",
    "TrainConfig": "edgeseg.train.config",
    "TrainResult": "edgeseg.train.config",
    "UNet": "edgeseg.model",
    "build_demo": "edgeseg.data.demo",
    "config_dict": "edgeseg.train.config",
    "demo_pixel_mm": "edgeseg.train.data",
    "format_metrics_table": "edgeseg.train.evaluate",
    "is_demo_set": "edgeseg.data.split",
    "load_checkpoint": "edgeseg.model",
    "load_data": "edgeseg.train.data",
    "make_config": "edgeseg.train.config",
    "make_split": "edgeseg.data.split",
    "new_run_dir": "edgeseg.train.loop",
    "resolve_device": "edgeseg.train.loop",
    "run_training": "edgeseg.train.loop",
    "save_checkpoint": "edgeseg.model",
    "segmentation_loss": "edgeseg.train.losses",
    "train": "edgeseg.train.loop",
    "training_sources": "edgeseg.train.data",
    "write_figures": "edgeseg.train.report",
    "write_history": "edgeseg.train.report",
    "write_json": "edgeseg.files",
}

__getattr__ = forwarder(__name__, _MOVED_NAMES)
