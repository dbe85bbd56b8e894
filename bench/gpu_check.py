"""GPU check: what PyTorch can measure of the edgeseg U-Net on a lent GPU, in one run under 8 minutes.

    python bench/gpu_check.py --out gpu-check/               # on the GPU machine, from the repo root
    python bench/gpu_check.py --device cpu --out DIR         # the same code up to the CUDA calls (tests)

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (rewritten after every section, so a
run cut short still leaves what it measured). Each section runs in its own process with a
hard time budget (the process group is killed when it runs over; what it had measured is
kept), so one slow ``torch.compile`` cannot eat the GPU window:

* ``environment``: torch, CUDA, GPU, cuDNN, onnxruntime; why ORT CUDA, TensorRT, nilearn are absent.
* ``parity``: the shipped checkpoint on CUDA (fp32 with TF32 off, and fp16 autocast) against
  the CPU in fp32, on real slices: the demo test slices (needs nilearn), else the shipped example
  NIfTI (``export/example``, read with nibabel, or from its raw header when nibabel is absent).
  The numbers and gates are :func:`edgeseg.export.parity.compare` / ``GATES``.
* ``infer_eager``: latency at batch 1 and throughput at batch 32, 394x394, the exported
  inference form (BatchNorm folded), channels_last: eager fp32, eager fp16 autocast, CUDA graph.
* ``infer_compiled``: ``torch.compile`` (default mode, then ``reduce-overhead``: compiled + CUDA graphs).
* ``train_eager`` / ``train_compiled``: img/s of the default recipe's step (AdamW, CE + Dice,
  GradScaler) at 394x394 whole slices, AMP fp16 and channels_last; synthetic inputs (speed is
  value-blind).
* ``ort_cuda``: ONNX Runtime's CUDA provider on the shipped model, where it really works.

The goals (``GOALS``) are judged on the best variant measured. ``--device cpu`` runs the same
sections at 32x32 with small batches and budgets: its figures say nothing about a GPU. Its
``torch.compile`` sections use the ``aot_eager`` backend (:data:`CPU_COMPILE`): Dynamo's capture
and AOTAutograd of the real model and step, within a minute, where inductor's C++ build took
75 s for one CPU compile on 2 shared cores (``--compile-backend inductor`` runs that, with budgets
that fit it). The GPU check always compiles with inductor.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if (REPO / "edgeseg").is_dir() and str(REPO) not in sys.path:  # `python bench/gpu_check.py`, not installed
    sys.path.insert(0, str(REPO))

FORMAT = "edgeseg-gpu-check-v1"
SECTIONS = ("environment", "parity", "infer_eager", "infer_compiled", "train_eager", "train_compiled", "ort_cuda")
GOALS = {  # name -> (target, unit, better): judged on the best variant measured
    "latency_b1_ms": (1.0, "ms p50 at batch 1", "lower"),
    "throughput_b32": (10_000.0, "slices/s at batch 32", "higher"),
    "train_img_s": (500.0, "img/s training", "higher"),
}
# The CPU rehearsal's torch.compile backend and its budgets: aot_eager compiles in seconds; inductor
# on CPU (C++, not the GPU's Triton kernels) took 143 s (infer, 2 compiles) and 101 s (train) cold.
CPU_COMPILE = "aot_eager"
CPU_COMPILE_BUDGET_S = {"aot_eager": 90, "inductor": 300}


@dataclass
class CheckConfig:
    """Sizes and budgets of one check; saved in the JSON."""

    device: str = "cuda"  # cuda | cpu (cpu: small sizes and budgets, to test the script itself)
    size: int = 394  # H = W of every timed input (the tutorial's slice)
    infer_batch: int = 32  # the throughput batch (the goal's)
    train_batch: int = 32  # slices per training step
    parity_slices: int = 16  # demo test slices compared (the example NIfTI has 5)
    warmup: int = 5  # untimed calls before each timing
    runs: int = 200  # timed calls per measurement at most
    seconds: float = 4.0  # ... or until this many seconds (after 5 calls)
    data: str = "auto"  # parity slices: auto (demo if nilearn, else example) | demo | example
    compile_backend: str = "inductor"  # torch.compile's backend (the CPU rehearsal: CPU_COMPILE)
    budgets: dict[str, float] = field(
        default_factory=lambda: {  # hard seconds per section process
            "environment": 30,
            "parity": 60,
            "infer_eager": 60,
            "infer_compiled": 110,
            "train_eager": 45,
            "train_compiled": 100,
            "ort_cuda": 40,
        }
    )
    max_total: float = 470.0  # a section that would end past this is not started


def make_config(device: str, data: str = "auto", compile_backend: str | None = None) -> CheckConfig:
    """The GPU check (``cuda``, inductor unless told), or its small CPU rehearsal (``cpu``, :data:`CPU_COMPILE`)."""
    if device == "cuda":
        return CheckConfig(data=data, compile_backend=compile_backend or "inductor")
    backend = compile_backend or CPU_COMPILE
    compile_budget = CPU_COMPILE_BUDGET_S[backend]
    budgets = {
        "environment": 60,
        "parity": 90,
        "infer_eager": 60,
        "infer_compiled": compile_budget,
        "train_eager": 60,
        "train_compiled": compile_budget,
        "ort_cuda": 60,
    }
    return CheckConfig(
        device="cpu",
        size=32,
        infer_batch=2,
        train_batch=2,
        parity_slices=2,
        warmup=3,
        runs=3,
        seconds=0.5,
        data=data,
        compile_backend=backend,
        budgets=budgets,
        max_total=1200.0 if backend == "inductor" else 600.0,
    )


class Skip(Exception):
    """A section or measurement that cannot run here; the message is the reason."""


# ----------------------------------------------------------------------------- child side


class Recorder:
    """A section's results, rewritten to its JSON file after every change (survives a kill)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"info": {}, "measurements": [], "skipped": {}}

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)

    def add(self, row: dict[str, Any]) -> None:
        self.data["measurements"].append(row)
        self.save()

    def skip(self, what: str, reason: str) -> None:
        self.data["skipped"][what] = reason
        self.save()


def _torch(cfg: CheckConfig) -> Any:
    """torch, after checking the device; cuDNN may pick its fastest algorithm per (fixed) shape."""
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"PyTorch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
    torch.backends.cudnn.benchmark = True
    return torch


def _sync(cfg: CheckConfig) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if cfg.device == "cuda" else (lambda: None)


def timed(rec: Recorder, cfg: CheckConfig, name: str, batch: int, fn: Callable[[], Any], **extra: Any) -> None:
    """Time ``fn()`` (synchronised) after warm-up, bounded by count and time; record one row."""
    from edgeseg.runtime.measure import latency_stats, time_runs

    sync = _sync(cfg)

    def call(_: Any) -> None:
        fn()
        sync()

    seconds = time_runs(
        call, None, warmup=cfg.warmup, runs=cfg.runs, min_runs=min(5, cfg.runs), max_seconds=cfg.seconds
    )
    stats = latency_stats(seconds)
    rec.add(
        {
            "name": name,
            "batch": batch,
            "size": cfg.size,
            "runs": len(seconds),
            "latency_ms": stats,
            "items_per_s": batch * 1e3 / stats["p50"],
            **extra,
        }
    )


def _autocast(fp16: bool) -> Any:
    """fp16 autocast on CUDA, or nothing."""
    import torch

    if not fp16:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16)


def _shipped_model(cfg: CheckConfig, fused: bool) -> tuple[Any, dict[str, Any]]:
    from edgeseg import SHIPPED_MODEL_DIR
    from edgeseg.model import inference_form, load_checkpoint

    model, ckpt = load_checkpoint(SHIPPED_MODEL_DIR / "model.pt")
    return (inference_form(model) if fused else model), ckpt


def section_environment(rec: Recorder, cfg: CheckConfig) -> None:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
        )
    rec.data["info"].update(info)
    rec.save()
    _absent(rec)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"PyTorch {torch.__version__} sees no CUDA device; every CUDA section will skip")


def _absent(rec: Recorder) -> None:
    """Record why ORT CUDA, TensorRT and nilearn cannot be used here (each probed for real)."""
    from edgeseg.errors import EdgesegError

    try:
        import onnxruntime as ort

        rec.data["info"]["onnxruntime"] = f"{ort.__version__} ({', '.join(ort.get_available_providers())})"
        from edgeseg.runtime.ort_session import resolve_providers

        resolve_providers("cuda")
    except (ImportError, EdgesegError) as exc:
        rec.skip("onnxruntime CUDA", str(exc))
    from edgeseg.runtime.tensorrt import gpu_problem

    problem = gpu_problem()
    rec.skip("TensorRT", problem or "present, but an engine build is not part of this check (edgeseg export --trt)")
    try:
        import nilearn  # noqa: F401
    except ImportError as exc:
        rec.skip("nilearn (demo slices)", f"not importable ({exc}); parity uses the shipped example NIfTI")


def read_nifti_raw(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A gzipped little-endian NIfTI-1 volume ``(X, Y, Z)`` and its voxel mm, without nibabel.

    The fallback for a machine without nibabel; scaling is applied, the orientation is the file's.
    """
    raw = gzip.decompress(path.read_bytes())
    if int(np.frombuffer(raw, "<i4", 1)[0]) != 348:
        raise Skip(f"{path}: not a little-endian NIfTI-1 file")
    dims = np.frombuffer(raw, "<i2", 8, 40)
    dtype = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 512: np.uint16}
    kind = int(np.frombuffer(raw, "<i2", 1, 70)[0])
    pixdim = np.frombuffer(raw, "<f4", 8, 76)
    offset, slope, inter = np.frombuffer(raw, "<f4", 3, 108)
    shape = tuple(int(d) for d in dims[1 : 1 + int(dims[0])])
    data = np.frombuffer(raw, np.dtype(dtype[kind]).newbyteorder("<"), int(np.prod(shape)), int(offset))
    volume = data.reshape(shape, order="F").astype(np.float32)
    if slope not in (0.0, 1.0) or inter != 0.0:
        volume = volume * (slope or 1.0) + inter
    return volume, tuple(float(z) for z in pixdim[1:4])  # type: ignore[return-value]


def real_slices(cfg: CheckConfig, model_mm: float | None) -> tuple[list[np.ndarray], list[np.ndarray] | None, str]:
    """``(images, masks or None, what they are)`` for the parity section (see the module doc)."""
    why = ""
    if cfg.data in ("auto", "demo"):
        try:
            import nilearn  # noqa: F401
        except ImportError as exc:
            if cfg.data == "demo":
                raise Skip(f"--data demo: nilearn is not importable ({exc})") from None
            why = f"; the demo set needs nilearn ({exc})"
        else:
            from edgeseg.data.split import held_out

            held = held_out(None).limited(cfg.parity_slices)
            return held.images, held.masks, f"demo held-out slices with ground truth ({held.source})"
    from edgeseg import SHIPPED_MODEL_DIR

    path = next(iter(sorted((SHIPPED_MODEL_DIR / "example").glob("*.nii.gz"))))
    try:  # asked first: read_scan reports a missing nibabel as an unreadable file
        import nibabel  # noqa: F401
    except ImportError as exc:
        x, how = _example_without_nibabel(path, model_mm), f"read from its raw header ({exc}); RAS assumed"
    else:
        from edgeseg.io.scans import read_scan

        dec = read_scan(path, "nifti", model_mm=model_mm)
        x = dec.batch(0, len(dec.stack), path, dec.model_size)[:, 0]
        how = "read with nibabel, resampled to the model's pixel spacing as edgeseg infer does"
    x = x[: cfg.parity_slices]
    return list(x), None, f"shipped example {path.name}: {len(x)} slices {x.shape[1]}x{x.shape[2]}, {how}{why}"


def _example_without_nibabel(path: Path, model_mm: float | None) -> np.ndarray:
    """Axial slices of the (RAS) example in edgeseg's model orientation, at the model's spacing."""
    import torch
    import torch.nn.functional as F

    volume, zooms = read_nifti_raw(path)
    stack = np.ascontiguousarray(volume.transpose(2, 1, 0)[:, ::-1, :])  # (S, rows: anterior down, cols)
    if model_mm:
        size = (round(stack.shape[1] * zooms[1] / model_mm), round(stack.shape[2] * zooms[0] / model_mm))
        stack = F.interpolate(torch.from_numpy(stack)[:, None], size=size, mode="bilinear", align_corners=False)[
            :, 0
        ].numpy()
    return stack.astype(np.float32)


def section_parity(rec: Recorder, cfg: CheckConfig) -> None:
    torch = _torch(cfg)
    from edgeseg.export.parity import GATES, gate_failures
    from edgeseg.metrics import compare

    model, ckpt = _shipped_model(cfg, fused=False)
    model_mm = (ckpt.get("data") or {}).get("pixel_spacing_mm")
    images, masks, source = real_slices(cfg, model_mm)
    rec.data["info"].update(data=source, slices=len(images), compared=f"{cfg.device} vs cpu, PyTorch")
    rec.save()
    batches = [np.stack(images[i : i + 4])[:, None] for i in range(0, len(images), 4)]
    with torch.inference_mode():
        ref = [model(torch.from_numpy(x)).numpy() for x in batches]
    device_model = copy.deepcopy(model).to(cfg.device)
    torch.backends.cudnn.allow_tf32 = False  # else fp32 convolutions run with a 10-bit mantissa
    torch.backends.cuda.matmul.allow_tf32 = False
    names = tuple(model.config.class_names)
    for precision in ("fp32", "fp16"):
        if precision == "fp16" and cfg.device != "cuda":
            rec.skip("parity fp16", "fp16 autocast is checked on CUDA only")
            continue
        with torch.inference_mode(), _autocast(precision == "fp16"):
            logits = [device_model(torch.from_numpy(x).to(cfg.device)).float().cpu().numpy() for x in batches]
        labels = [lg.argmax(axis=1).astype(np.uint8) for lg in logits]
        truth = masks if masks is not None else [lab for r in ref for lab in r.argmax(axis=1)]
        row = compare(ref, logits, labels, [np.stack(truth[i : i + 4]) for i in range(0, len(truth), 4)], names)
        if masks is None:  # no ground truth: only logits and labels are compared
            row.update(miou_ref=None, miou_cand=None, d_miou=None)
        rec.add(
            {
                "name": f"parity {precision}",
                "precision": precision,
                **row,
                "failures": gate_failures(row, GATES[precision]),
            }
        )


def section_infer_eager(rec: Recorder, cfg: CheckConfig) -> None:
    torch = _torch(cfg)
    model = _shipped_model(cfg, fused=True)[0].to(cfg.device).to(memory_format=torch.channels_last)
    for batch in (1, cfg.infer_batch):
        x = _input(cfg, batch)
        for precision in ("fp32", "fp16"):
            if precision == "fp16" and cfg.device != "cuda":
                rec.skip(f"eager fp16 b{batch}", "fp16 autocast is timed on CUDA only")
                continue
            with torch.inference_mode(), _autocast(precision == "fp16"):  # fp32: TF32 allowed (the default)
                timed(rec, cfg, f"eager {precision}", batch, lambda m=model, x=x: m(x))
        if cfg.device != "cuda":
            rec.skip(f"CUDA graph b{batch}", "CUDA graphs need a CUDA device")
            continue
        replay = _cuda_graph(torch, model, x)
        timed(rec, cfg, "CUDA graph fp16", batch, replay)


def _input(cfg: CheckConfig, batch: int) -> Any:
    import torch

    from edgeseg.runtime.measure import synthetic_batch

    x = torch.from_numpy(synthetic_batch(batch, cfg.size)).to(cfg.device)
    return x.contiguous(memory_format=torch.channels_last)


def _cuda_graph(torch: Any, model: Any, x: Any) -> Callable[[], None]:
    """Capture one fp16-autocast forward on the static input ``x``; returns its replay."""

    def autocast() -> Any:  # cast cache off, as torch.cuda.make_graphed_callables requires
        return torch.autocast("cuda", dtype=torch.float16, cache_enabled=False)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(stream), autocast():
        for _ in range(3):  # warm-up on a side stream, as capture requires
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph), autocast():
        model(x)
    return graph.replay


def section_infer_compiled(rec: Recorder, cfg: CheckConfig) -> None:
    torch = _torch(cfg)
    model = _shipped_model(cfg, fused=True)[0].to(cfg.device).to(memory_format=torch.channels_last)
    fp16 = cfg.device == "cuda"
    for mode in ("default", "reduce-overhead"):  # reduce-overhead = compiled + CUDA graphs
        if mode == "reduce-overhead" and cfg.device != "cuda":
            rec.skip("compiled reduce-overhead", "CUDA graphs need a CUDA device")
            continue
        # mode "default" is no mode at all, which every backend takes; the others are inductor's
        modes = {} if mode == "default" else {"mode": mode}
        compiled = torch.compile(model, backend=cfg.compile_backend, dynamic=False, **modes)
        for batch in (1, cfg.infer_batch):
            x = _input(cfg, batch)
            with torch.inference_mode(), _autocast(fp16):
                start = time.perf_counter()
                compiled(x)
                _sync(cfg)()
                compile_s = time.perf_counter() - start
                timed(
                    rec,
                    cfg,
                    f"compiled {mode} {'fp16' if fp16 else 'fp32'}",
                    batch,
                    lambda c=compiled, x=x: c(x),
                    compile_s=round(compile_s, 1),
                    backend=cfg.compile_backend,
                )


def _train_step(cfg: CheckConfig, compiled: bool) -> Callable[[], None]:
    """One step of the default recipe on whole ``size``² slices: AMP on CUDA, channels_last."""
    import torch

    from edgeseg.model import UNet
    from edgeseg.train.config import make_config
    from edgeseg.train.losses import segmentation_loss

    recipe = make_config("default")
    torch.manual_seed(0)
    model = UNet().to(cfg.device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scaler = torch.amp.GradScaler(cfg.device, enabled=cfg.device == "cuda")
    loss_fn = segmentation_loss(recipe.loss, 3)
    x = torch.randn(cfg.train_batch, 1, cfg.size, cfg.size, device=cfg.device)  # already z-scored, as in train
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (cfg.train_batch, cfg.size, cfg.size), device=cfg.device)
    segment = torch.compile(model.segment, backend=cfg.compile_backend) if compiled else model.segment

    def step() -> None:
        with _autocast(cfg.device == "cuda"):
            loss = loss_fn(segment(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _section_train(rec: Recorder, cfg: CheckConfig, compiled: bool) -> None:
    _torch(cfg)
    step = _train_step(cfg, compiled)
    start = time.perf_counter()
    step()  # the first step compiles (compiled) or picks cuDNN algorithms (eager)
    _sync(cfg)()
    first_s = round(time.perf_counter() - start, 1)
    amp = "AMP fp16" if cfg.device == "cuda" else "fp32"
    timed(
        rec,
        cfg,
        f"train {'compiled' if compiled else 'eager'} {amp} channels_last",
        cfg.train_batch,
        step,
        first_step_s=first_s,
        **({"backend": cfg.compile_backend} if compiled else {}),
    )


def section_train_eager(rec: Recorder, cfg: CheckConfig) -> None:
    _section_train(rec, cfg, compiled=False)


def section_train_compiled(rec: Recorder, cfg: CheckConfig) -> None:
    _section_train(rec, cfg, compiled=True)


def section_ort_cuda(rec: Recorder, cfg: CheckConfig) -> None:
    from edgeseg import SHIPPED_MODEL
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.measure import synthetic_batch
    from edgeseg.runtime.ort_session import create_session

    try:
        session, provider = create_session(SHIPPED_MODEL, "cuda")
    except EdgesegError as exc:
        raise Skip(str(exc)) from None
    for batch in (1, cfg.infer_batch):
        x = synthetic_batch(batch, cfg.size)
        timed(rec, cfg, f"onnxruntime {provider} fp32", batch, lambda x=x: session.run(["labels"], {"image": x}))


def child_main(name: str, cfg: CheckConfig, result: Path) -> int:
    """Run one section in this process; its Recorder file is the result."""
    rec = Recorder(result)
    rec.save()
    try:
        globals()[f"section_{name}"](rec, cfg)
    except Skip as exc:
        rec.data["skip_reason"] = str(exc)
        rec.save()
    return 0


# ----------------------------------------------------------------------------- parent side


def run_section(name: str, cfg: CheckConfig, out: Path) -> dict[str, Any]:
    """Run a section in a child process group, killed at its budget; returns its record."""
    result = out / f".{name}.json"
    result.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--section",
        name,
        "--device",
        cfg.device,
        "--data",
        cfg.data,
        "--compile-backend",
        cfg.compile_backend,
        "--result",
        str(result),
    ]
    budget = cfg.budgets[name]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )  # its own group: inductor's compile workers die with it
    try:
        log, _ = proc.communicate(timeout=budget)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        timed_out = True
    record = json.loads(result.read_text()) if result.is_file() else {"info": {}, "measurements": [], "skipped": {}}
    result.unlink(missing_ok=True)
    record.update(seconds=round(time.perf_counter() - start, 1), budget_s=budget)
    if timed_out:
        record.update(status="timeout", reason=f"stopped at its {budget:g} s budget; kept what it had measured")
    elif proc.returncode != 0:
        tail = [line for line in (log or "").strip().splitlines() if line.strip()][-1:] or ["no output"]
        record.update(status="failed", reason=f"exit {proc.returncode}: {tail[0][:300]}")
    elif "skip_reason" in record:
        record.update(status="skipped", reason=record.pop("skip_reason"))
    else:
        record.update(status="ok", reason="")
    return record


def judge_goals(sections: dict[str, dict[str, Any]], cfg: CheckConfig) -> dict[str, dict[str, Any]]:
    """Each goal against the best measurement that speaks to it."""
    infer = [
        r
        for n, sec in sections.items()
        if n.startswith("infer") or n == "ort_cuda"
        for r in sec.get("measurements", [])
    ]
    train = [r for n, sec in sections.items() if n.startswith("train") for r in sec.get("measurements", [])]
    candidates = {
        "latency_b1_ms": [(r["latency_ms"]["p50"], r["name"]) for r in infer if r["batch"] == 1],
        "throughput_b32": [(r["items_per_s"], r["name"]) for r in infer if r["batch"] == cfg.infer_batch],
        "train_img_s": [(r["items_per_s"], r["name"]) for r in train],
    }
    goals = {}
    for goal, (target, unit, better) in GOALS.items():
        found = candidates[goal]
        best = (min if better == "lower" else max)(found) if found else None
        met = None if best is None else (best[0] <= target if better == "lower" else best[0] >= target)
        goals[goal] = {
            "target": target,
            "unit": unit,
            "best": None if best is None else best[0],
            "by": None if best is None else best[1],
            "met": met,
        }
    return goals


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: environment line, measurements, goals, parity, skips, sections."""
    cfg, sections = report["config"], report["sections"]
    env = sections.get("environment", {}).get("info", {})
    lines = [
        f"# edgeseg GPU check: {env.get('gpu', 'no GPU')} ({cfg['device']} mode)",
        "",
        f"torch {env.get('torch', '?')}, CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')},"
        f" onnxruntime {env.get('onnxruntime', '?')}; inputs {cfg['size']}x{cfg['size']};"
        f" {report['started']}; {report['total_seconds']:.0f} s in all.",
        "",
    ]
    if cfg["device"] != "cuda":
        lines += [
            "CPU rehearsal of the script: small sizes and budgets, the figures say nothing about a GPU;"
            f" torch.compile with the {cfg.get('compile_backend', 'inductor')} backend.",
            "",
        ]
    lines += [
        "| section | measurement | batch | p50 ms | mean ms | items/s | first call / compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sec in sections.items():
        for r in sec.get("measurements", []):
            if "latency_ms" in r:
                first = r.get("compile_s", r.get("first_step_s", ""))
                lines.append(
                    f"| {name} | {r['name']} | {r['batch']} | {r['latency_ms']['p50']:.3f} |"
                    f" {r['latency_ms']['mean']:.3f} | {r['items_per_s']:,.0f} | {first} |"
                )
    lines += ["", "| goal | target | best measured | by | met |", "|---|---|---|---|---|"]
    for goal, g in report["goals"].items():
        best = "not measured" if g["best"] is None else f"{g['best']:,.3f}"
        met = {True: "yes", False: "no", None: "—"}[g["met"]]
        lines.append(f"| {goal} | {g['target']:,g} {g['unit']} | {best} | {g['by'] or '—'} | {met} |")
    parity = sections.get("parity", {})
    what = parity.get("info", {})
    lines += [
        "",
        f"Parity ({what.get('compared', '?')}) on {what.get('data', '?')}:",
        "",
        "| precision | max abs Δlogit | mean abs Δlogit | label agreement | ΔmIoU | gate |",
        "|---|---|---|---|---|---|",
    ]
    for r in parity.get("measurements", []):
        d = "n/a (no ground truth)" if r["d_miou"] is None else f"{r['d_miou']:+.5f}"
        gate = "pass" if not r["failures"] else "FAIL: " + "; ".join(r["failures"])
        lines.append(
            f"| {r['precision']} | {r['max_abs']:.2e} | {r['mean_abs']:.2e} |"
            f" {100 * r['agreement']:.4f} % | {d} | {gate} |"
        )
    lines += ["", "Skipped:", ""]
    lines += [f"- {what}: {why}" for sec in sections.values() for what, why in sec.get("skipped", {}).items()]
    lines += ["", "| section | status | seconds | budget s | reason |", "|---|---|---|---|---|"]
    lines += [
        f"| {n} | {s['status']} | {s['seconds']} | {s['budget_s']:g} | {s['reason']} |" for n, s in sections.items()
    ]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    for name, text in (
        ("gpu_check.json", json.dumps(report, indent=2, default=str) + "\n"),
        ("gpu_check.md", render_markdown(report)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def run_check(cfg: CheckConfig, out: Path, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """Every section in turn, within the total budget; the report is rewritten after each."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "format": FORMAT,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "config": asdict(cfg),
        "sections": {},
        "goals": {},
        "total_seconds": 0.0,
    }
    for name in sections:
        elapsed = time.perf_counter() - start
        if elapsed + cfg.budgets[name] > cfg.max_total:
            report["sections"][name] = {
                "status": "skipped",
                "seconds": 0,
                "budget_s": cfg.budgets[name],
                "reason": f"not started: {elapsed:.0f} s used of {cfg.max_total:g} s",
                "info": {},
                "measurements": [],
                "skipped": {},
            }
        else:
            report["sections"][name] = run_section(name, cfg, out)
        report["goals"] = judge_goals(report["sections"], cfg)
        report["total_seconds"] = round(time.perf_counter() - start, 1)
        write_report(out, report)
        print(
            f"{name}: {report['sections'][name]['status']} ({report['sections'][name]['seconds']} s)"
            f" {report['sections'][name]['reason']}",
            flush=True,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for gpu_check.json/.md")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: the same sections, small sizes and budgets (tests the script)",
    )
    parser.add_argument(
        "--data",
        choices=("auto", "demo", "example"),
        default="auto",
        help="parity slices: demo test slices (nilearn), the shipped example NIfTI, or auto",
    )
    parser.add_argument(
        "--compile-backend",
        choices=("inductor", CPU_COMPILE),
        help=f"torch.compile's backend; default inductor on cuda, {CPU_COMPILE} on cpu (inductor there: minutes)",
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in order")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # child mode: run one section
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = make_config(args.device, args.data, args.compile_backend)
    if args.section:
        return child_main(args.section, cfg, args.result)
    chosen = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    report = run_check(cfg, args.out, chosen)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if all(s["status"] != "failed" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
