"""The work of `edgeseg infer`, torch-free: crop to the brain, segment a volume slice by slice with QC, the run
over a folder, and the same run spread over a Dask cluster. May import the top level, io and runtime.
"""

from __future__ import annotations

from edgeseg._moved import forwarder

# `edgeseg.infer` was a module until issue 26 (now `edgeseg.infer.run`): its public names, for one release,
# each from the module that holds it now.
_MOVED_NAMES = {
    "DiskFull": "edgeseg.errors",
    "EdgesegError": "edgeseg.errors",
    "FORMATS": "edgeseg.infer.config",
    "InferConfig": "edgeseg.infer.config",
    "InferReport": "edgeseg.infer.config",
    "Interrupted": "edgeseg.errors",
    "ModelInfo": "edgeseg.artifacts",
    "OutLock": "edgeseg.io.records",
    "SUPPORTED": "edgeseg.io.scan_files",
    "Segmenter": "edgeseg.infer.segment",
    "Stopped": "edgeseg.signals",
    "check_writable_dir": "edgeseg.files",
    "choose_runner": "edgeseg.infer.config",
    "discover_scans": "edgeseg.io.scan_files",
    "open_runner": "edgeseg.runtime.runners",
    "read_model_info": "edgeseg.artifacts",
    "run_inference": "edgeseg.infer.run",
    "seg_rel": "edgeseg.names",
    "written_by_edgeseg": "edgeseg.names",
}

__getattr__ = forwarder(__name__, _MOVED_NAMES)
