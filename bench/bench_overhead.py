"""Where the 120-slice `edgeseg infer` job spends the time outside the model (issue 24, item 5).

    python bench/bench_overhead.py [--slices 120] [--threads N] [--backend auto] [--json out.json]

The job of bench/bench_crop.py (a ``(120, 394, 394)`` float32 ``.npy`` of real demo slices) runs as
a user runs it, in a fresh process, after one warm-up run (the page cache, OpenVINO's model cache):

* ``python -c pass`` and ``python -c "import edgeseg.cli"``: the interpreter, and the imports every
  command pays;
* the job itself, timed end to end (the median of ``--rounds``);
* the job once more under cProfile, cut into stages by the code that ran them: each stage is the
  cumulative time of the entry points of its modules (a stage includes the imports it triggers),
  the model is the runtime's own inference call, and the rest is what no stage claims (argument
  parsing, discovery, the progress display, numpy glue in the loop). cProfile slows Python code
  (not the runtime's), so read the stages as shares, not seconds.

Seen on the 2-core AMD EPYC (AVX2), `edgeseg tune`'s pick OpenVINO int8, shared with four other
sessions (load average 13 on 2 cores: seconds are inflated several times, only shares mean
anything): the job 84 s under cProfile, of which the model 54.1 s (64 %); planning the crop 4.4 s
(its float64 tissue mask 3.5 s), the QC figures 4.1 s (max_softmax 2.4 s), OpenVINO's compile 3.2 s
(a box shape the model cache had not met), choosing the backend 2.9 s (ONNX Runtime's provider
probe 1.0 s, which built an ONNX model with the ``onnx`` package to learn that the CUDA library
does not load: now the library is tried first, and the probe is not built), the crop's paste 0.7 s,
the imports about 9 s, building the CLI's command tree twice 1 s (now once, unless an argument is
empty). On an idle machine the issue measured the job at 11.2 s with the model alone 8.9 s.

After those cuts and importing OpenVINO without its conversion tools (edgeseg.runtime.openvino_backend),
`python bench/bench_overhead.py --rounds 1 --threads 2` on the same machine (load 6-9, so again
only shares): the job 79.7 s end to end, 82.7 s under cProfile; the model 73.1 %, QC 5.3 %, the
crop plan 3.4 %, loading and compiling 3.0 %, choosing the backend 1.4 % (was 3.4 %), the crop's
cut and paste 1.1 %, imports 6.6 % (was 10.8 %), the rest 12.6 %. The crop plan (its float64
tissue mask) and the QC figures (max_softmax over the full logits) are the largest stages left;
a new box shape also costs OpenVINO a compile, which the model cache only saves the second time.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_crop import real_stack, uptime  # noqa: E402

# stage -> the functions (file:name) or modules (file) under edgeseg/ whose entry points it sums;
# a module's import (its <module>) counts under imports, not here
STAGES = {
    "choose the backend (deploy file, providers)": ("infer_config.py:choose_runner",),
    "load the runner, compile": ("runtime.py:open_runner", "runtime.py:_compiled"),
    "read the scan": ("scans.py", "scan_files.py", "scan_readers.py", "volume.py", "dicom.py"),
    "plan the crop": ("crop.py:plan_crop",),
    "cut and paste the box": ("crop.py:cut", "crop.py:paste"),
    "QC figures": ("qc.py", "qc_anatomy.py"),
    "write outputs, records, summary": ("outputs.py", "records.py", "names.py", "files.py", "mosaic.py"),
}
MODEL_CALLS = (  # the runtimes' own inference calls, as cProfile names them
    "openvino._pyopenvino.infer",
    "'run' of 'onnxruntime.capi.onnxruntime_pybind11_state.InferenceSession'",
    "'wait_all' of 'openvino._pyopenvino.AsyncInferQueue'",
)


def _matches(key: tuple[str, int, str], spec: str) -> bool:
    path, _, name = key
    file, _, func = spec.partition(":")
    return path.endswith(f"/edgeseg/{file}") and (name == func if func else name != "<module>")


def breakdown(profile: Path) -> dict[str, float]:
    """Seconds per stage of a cProfile dump of `edgeseg infer`, plus ``model``, ``imports`` and ``total``."""
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    total = max(v[3] for v in stats.values())
    model = sum(v[3] for k, v in stats.items() if k[0] == "~" and any(m in k[2] for m in MODEL_CALLS))
    out: dict[str, float] = {"total": total, "model": model}
    for stage, specs in STAGES.items():
        seconds = 0.0
        for key, (_, _, _, ct, callers) in stats.items():
            if any(_matches(key, s) for s in specs) and not any(any(_matches(c, s) for s in specs) for c in callers):
                seconds += ct  # an entry point: none of its callers is in the stage
        out[stage] = seconds
    out["imports (anywhere, also inside the stages)"] = max(
        (v[3] for k, v in stats.items() if k[2] == "_find_and_load"), default=0.0
    )
    return out


def wall(cmd: list[str], rounds: int) -> float:
    """Median seconds of ``rounds`` fresh processes."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd[:5])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of the job, after one warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backend", default="auto", help="edgeseg infer's --backend; auto: edgeseg tune's pick")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)

    result: dict = {"uptime_before": uptime(), "slices": args.slices, "backend": args.backend}
    print(result["uptime_before"], flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        stack = Path(tmp) / "stack.npy"
        np.save(stack, real_stack(args.slices)[0])
        infer = [*("-m", "edgeseg", "infer", str(stack), "--out", str(Path(tmp) / "out"), "--overwrite")]
        infer += ["--threads", str(args.threads), "--backend", args.backend]
        wall([sys.executable, *infer], 1)  # warm-up
        result["python_s"] = wall([sys.executable, "-c", "pass"], args.rounds)
        result["import_cli_s"] = wall([sys.executable, "-c", "import edgeseg.cli"], args.rounds)
        result["job_s"] = wall([sys.executable, *infer], args.rounds)
        profile = Path(tmp) / "infer.prof"
        wall([sys.executable, "-m", "cProfile", "-o", str(profile), *infer], 1)
        stages = breakdown(profile)
    result["uptime_after"] = uptime()
    claimed = stages["model"] + sum(stages[s] for s in STAGES)
    stages["the rest (parsing, discovery, progress, the loop's numpy)"] = stages["total"] - claimed
    result["profiled"] = {k: round(v, 3) for k, v in stages.items()}
    print(f"python -c pass {result['python_s']:.2f} s; import edgeseg.cli {result['import_cli_s']:.2f} s")
    print(f"the job ({args.slices} slices, --backend {args.backend}): {result['job_s']:.2f} s end to end")
    print(f"under cProfile: {stages['total']:.2f} s")
    for name, seconds in stages.items():
        if name != "total":
            print(f"  {name:<58} {seconds:7.2f} s  {100 * seconds / stages['total']:5.1f} %")
    print(result["uptime_after"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
