"""Timing and choosing: the benchmark suites and their report, the crop benchmark, and edgeseg tune with its
table. May import the top level, data, runtime, infer and export (parity's gates); benchmarking ONNX files
imports no torch.
"""

from __future__ import annotations

from edgeseg._moved import forwarder

# `edgeseg.bench` was a module until issue 26 (now `edgeseg.bench.suite`): its public names, for one release,
# each from the module that holds it now.
_MOVED_NAMES = {
    "BenchConfig": "edgeseg.bench.suite",
    "BenchReport": "edgeseg.bench.report",
    "CropShape": "edgeseg.bench.crop_bench",
    "DEFAULT_TARGETS": "edgeseg.bench.targets",
    "EdgesegError": "edgeseg.errors",
    "HeldOut": "edgeseg.data.split",
    "Result": "edgeseg.bench.report",
    "SplitRecord": "edgeseg.data.split",
    "Target": "edgeseg.bench.report",
    "VOLUME_SLICES": "edgeseg.bench.suite",
    "bench": "edgeseg.bench.suite",
    "bench_target": "edgeseg.bench.suite",
    "check_budget": "edgeseg.bench.suite",
    "compute_ratios": "edgeseg.bench.report",
    "count_macs": "edgeseg.runtime.measure",
    "describe": "edgeseg.errors",
    "held_out": "edgeseg.data.split",
    "jsonable": "edgeseg.bench.report",
    "latency_stats": "edgeseg.runtime.measure",
    "load_targets": "edgeseg.bench.targets",
    "machine_info": "edgeseg.bench.report",
    "model_file": "edgeseg.bench.targets",
    "noise_warnings": "edgeseg.bench.report",
    "open_runner": "edgeseg.runtime.runners",
    "run_bench": "edgeseg.bench.suite",
    "run_child": "edgeseg.runtime.measure",
    "runner_spec": "edgeseg.bench.targets",
    "score": "edgeseg.metrics",
    "select_targets": "edgeseg.bench.targets",
    "synthetic_batch": "edgeseg.runtime.measure",
    "time_runs": "edgeseg.runtime.measure",
    "tuned_targets": "edgeseg.bench.targets",
    "typical_crop": "edgeseg.bench.crop_bench",
    "why_not_here": "edgeseg.bench.targets",
    "write_text": "edgeseg.files",
}

__getattr__ = forwarder(__name__, _MOVED_NAMES)
