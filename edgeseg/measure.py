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

    The graph is run once on CPU with each conv's input, weight and output exposed, so the
    count comes from the model itself (any widths, any precision's float weights).
    """
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    graph = proto.graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    wanted = {name for n in convs for name in (*n.input[:2], n.output[0])} - set(shapes)
    outputs = {o.name for o in graph.output}
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in wanted - outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {"image": np.zeros((1, 1, size, size), np.float32)})
    shapes.update({n: v.shape for n, v in zip(names, values, strict=True)})
    macs = 0
    for node in convs:  # Conv: per output element; ConvTranspose: per input element
        per = math.prod(shapes[node.input[1]][1:])
        anchor = node.output[0] if node.op_type == "Conv" else node.input[0]
        macs += math.prod(shapes[anchor]) * per
    return int(macs)


def child_main(spec_json: str) -> None:
    """Entry of the helper processes: ``peak`` (sgemm GFLOP/s) or ``rss`` (inference RSS)."""
    spec = json.loads(spec_json)
    out = _peak_child(spec) if spec["mode"] == "peak" else _rss_child(spec)
    print(json.dumps(out))


def run_child(spec: dict[str, Any], threads: int, timeout: float = 300) -> dict[str, Any]:
    """Run :func:`child_main` in a fresh interpreter, BLAS/OpenMP pools sized to ``threads``."""
    env = dict(os.environ)
    if threads:
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    code = "import sys; from edgeseg.measure import child_main; child_main(sys.argv[1])"
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
    from edgeseg.runtime import RunnerSpec, open_runner

    runner = open_runner(Path(spec["path"]), RunnerSpec.from_dict(spec["runner"]))
    x = synthetic_batch(spec["batch"], spec["size"])
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
