"""Measurements behind ``edgeseg bench``: latency statistics, graph FLOPs, the matmul peak,
the peak RSS of a fresh inference process, and mIoU on held-out slices.

The matmul peak and the RSS are measured in child interpreters (:func:`run_child`), so the
peak's BLAS threads never compete with a timed session and the RSS is that of a process
that loaded only what inference needs (torch-free for ONNX targets). Imports numpy only.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_batch(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """MRI-like raw intensities ``(batch, 1, size, size)`` float32 (speed is value-blind)."""
    rng = np.random.default_rng(seed)
    return rng.normal(500.0, 300.0, (batch, 1, size, size)).astype(np.float32)


def latency_stats(seconds: list[float]) -> dict[str, float]:
    """min/mean/p50/p90/p95/p99/max in milliseconds (linear-interpolated percentiles)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    stats = {"min": ms.min(), "mean": ms.mean()}
    stats.update({f"p{q}": np.percentile(ms, q) for q in (50, 90, 95, 99)})
    stats["max"] = ms.max()
    return {k: float(v) for k, v in stats.items()}


def time_runs(
    predict: Callable[[np.ndarray], Any],
    x: np.ndarray,
    warmup: int = 3,
    runs: int = 50,
    min_runs: int = 5,
    max_seconds: float = 10.0,
) -> list[float]:
    """Seconds per inference of ``predict(x)`` after ``warmup`` untimed calls.

    Stops after ``runs`` calls, or after ``max_seconds`` once ``min_runs`` are in.
    """
    for _ in range(warmup):
        predict(x)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - start)
    return times


def count_macs(path: Path, size: int = 394) -> int:
    """Multiply-accumulates of every Conv and ConvTranspose for one ``size``² slice.

    The graph is run once on CPU, unoptimised, under ONNX Runtime's profiler, whose event for
    each conv records its input, weight and output shapes: the count comes from the model
    itself (any widths, any precision's float weights) without the ``onnx`` package, which
    the edge install leaves out.
    """
    import tempfile

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")  # a pre-packed weight's shape is not recorded
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "macs")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, {"image": np.zeros((1, 1, size, size), np.float32)})
        events = json.loads(Path(session.end_profiling()).read_text())
    macs = 0
    for event in events:
        args = event.get("args", {})
        if args.get("op_name") not in ("Conv", "ConvTranspose") or not event["name"].endswith("_kernel_time"):
            continue
        inputs = [next(iter(shape.values())) for shape in args["input_type_shape"]]
        output = next(iter(args["output_type_shape"][0].values()))
        anchor = output if args["op_name"] == "Conv" else inputs[0]  # Conv: per output element; ConvTranspose: input
        macs += math.prod(anchor) * math.prod(inputs[1][1:])
    return int(macs)


def child_main(spec_json: str) -> None:
    """Entry of the helper processes: ``peak`` (sgemm GFLOP/s) or ``rss`` (inference RSS)."""
    spec = json.loads(spec_json)
    out = _peak_child(spec) if spec["mode"] == "peak" else _rss_child(spec)
    print(json.dumps(out))


def run_child(
    spec: dict[str, Any], threads: int, timeout: float = 300, module: str = "edgeseg.runtime.measure"
) -> dict[str, Any]:
    """Run ``module``'s ``child_main`` (default :func:`child_main`) in a fresh interpreter, BLAS/OpenMP
    pools sized to ``threads``; it prints one JSON line, returned as a dict. A stage above this one
    (``edgeseg.bench.tune``) passes its own module, so that this module never imports up the pipeline."""
    env = dict(os.environ)
    if threads:
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    code = f"import sys; from {module} import child_main; child_main(sys.argv[1])"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise RuntimeError(f"{spec['mode']} helper failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peak_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Best float32 matmul GFLOP/s of numpy's BLAS and (if installed) torch."""
    n, threads = spec["size"], spec["threads"]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    candidates: dict[str, Callable[[], Any]] = {"numpy": lambda: a @ b}
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        candidates["torch"] = lambda: torch.mm(ta, tb)
    except ImportError:
        pass
    best = {}
    for lib, matmul in candidates.items():
        matmul()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            matmul()
            times.append(time.perf_counter() - start)
        best[lib] = 2 * n**3 / min(times) / 1e9
    lib = max(best, key=best.get)
    return {"gflops": best[lib], "lib": lib, "all": best}


def _rss_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Load and run one target in this fresh process; report its peak RSS."""
    from edgeseg.runtime.runners import RunnerSpec, open_runner

    runner = open_runner(Path(spec["path"]), RunnerSpec.from_dict(spec["runner"]))
    x = synthetic_batch(spec["batch"], spec["size"])
    if spec.get("shape"):  # a brain box (edgeseg.bench.crop_bench): the model sees only that part of the frame
        x = np.ascontiguousarray(x[..., : spec["shape"][0], : spec["shape"][1]])
    for _ in range(spec["runs"]):
        runner.labels(x)
    return {"rss_mb": peak_rss_mb(), "torch_loaded": "torch" in sys.modules}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
