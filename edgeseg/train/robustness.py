"""Robustness report: mIoU(GM, WM) on the held-out 3-D regions under the perturbations real scans have.

    edgeseg evaluate --robustness [CKPT.pt | MODEL.onnx] [--robustness-slices N]

One row per perturbation family (clean, tight crop, wide pad, oblique planes, bias field,
gamma, noise, intensity scale, lower resolution, and the raw-scan families of
:mod:`edgeseg.train.robustness_heads`: head on, contrast, deformed, empty), each pooled over a few
strengths, with the drop from clean and the worst strength; "empty" (no brain) reports the
share of pixels labelled background instead. Only pixels of the held-out balls of the default
3-D split are scored (:func:`edgeseg.data.volume.region_split`), on demo slices that cut through
them; oblique planes are resampled from the template through the same balls. It runs a
checkpoint with PyTorch, or an exported file with ONNX Runtime only (no torch imported).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.metrics import IGNORE, ConfusionMatrix

Predict = Callable[[np.ndarray], np.ndarray]  # (H, W) float32 raw image -> (H, W) labels
Perturb = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

PAD_FAMILY_PX = (100, 200)  # wide zero padding on every side
OBLIQUE_DEG = (-25.0, 25.0)  # tilt of the plane about its row axis, then its column axis
BIAS_STRENGTHS = (0.2, 0.4)  # log-amplitude of a linear bias across the brain (x0.67..x1.5 at 0.4)
GAMMAS = (0.7, 1.5)
NOISE_SIGMAS = (0.02, 0.05)  # Rician sigma / the slice's peak intensity
SCALES = (0.01, 100.0)
RESOLUTIONS_MM = (1.0, 2.0, 3.0)  # in-plane pixel size of the simulated acquisition
PIXEL_MM = 0.5  # the demo slices' pixel size
CROP_MARGIN = 4  # pixels kept around the brain's bounding box by the tight crop


@dataclass
class RobustnessRow:
    """One perturbation family."""

    family: str
    strengths: str  # what was applied, e.g. "x0.01, x100"
    miou_fg: float | None  # pooled over its strengths
    drop: float | None  # clean minus this
    worst: float | None  # its lowest strength's mIoU (empty: its lowest background %)
    slices: int  # scored slice variants
    background_pct: float | None = None  # "empty" only: % of the pixels labelled background


# ----------------------------------------------------------------------------- perturbations


def tight_crop(image: np.ndarray, mask: np.ndarray, margin: int = CROP_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """The slice cropped to its tissue's bounding box plus ``margin`` pixels."""
    rows, cols = np.flatnonzero((image > 0).any(1)), np.flatnonzero((image > 0).any(0))
    if rows.size == 0:
        return image, mask
    window = (
        slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
        slice(max(cols[0] - margin, 0), cols[-1] + margin + 1),
    )
    return image[window], mask[window]


def zero_pad(px: int) -> Perturb:
    return lambda im, m: (np.pad(im, px), np.pad(m, px, constant_values=IGNORE))


def bias_field(strength: float) -> Perturb:
    """A smooth multiplicative field: exp(strength x a diagonal ramp from -1 to 1 over the slice)."""

    def apply(im: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = im.shape
        ramp = (np.linspace(-1, 1, h)[:, None] + np.linspace(-1, 1, w)[None, :]) / 2
        return (im * np.exp(strength * ramp)).astype(np.float32), m

    return apply


def gamma(g: float) -> Perturb:
    return lambda im, m: ((im.max() * (im / max(float(im.max()), 1e-30)) ** g).astype(np.float32), m)


def rician(sigma: float, seed: int = 0) -> Perturb:
    """Rician noise on every pixel (the background becomes Rayleigh noise), sigma x the peak."""

    def apply(im: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, im.shape[0], im.shape[1]])
        s = sigma * float(im.max())
        n1, n2 = rng.standard_normal(im.shape), rng.standard_normal(im.shape)
        return np.sqrt((im + s * n1) ** 2 + (s * n2) ** 2).astype(np.float32), m

    return apply


def scale(factor: float) -> Perturb:
    return lambda im, m: ((im * factor).astype(np.float32), m)


def resolution(mm: float) -> Perturb:
    """Acquired at ``mm`` pixels (area average), shown at the model's 0.5 mm (linear)."""
    from scipy.ndimage import zoom

    f = mm / PIXEL_MM

    def apply(im: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if f <= 1:
            return im, m
        h, w = im.shape
        k = int(round(f))
        hh, ww = h // k * k, w // k * k
        low = im[:hh, :ww].reshape(hh // k, k, ww // k, k).mean((1, 3))
        up = zoom(low, (h / low.shape[0], w / low.shape[1]), order=1, grid_mode=True, mode="nearest")
        return up[:h, :w].astype(np.float32), m

    return apply


# ----------------------------------------------------------------------------- the data


@dataclass
class HeldOutPlanes:
    """Demo slices through the held-out balls (test masks: IGNORE outside them) and their planes."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    oblique: dict[float, list[tuple[np.ndarray, np.ndarray]]]  # tilt -> resampled (image, mask)


def held_out_planes(root: Path | None = None, seed: int = 0, count: int = 32) -> HeldOutPlanes:
    """``count`` of the regions split's test slices (evenly spread), and oblique versions of them."""
    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo
    from edgeseg.data.split import make_split
    from edgeseg.data.volume import (
        demo_planes,
        held_out_regions,
        load_template,
        plane_through,
        region_masks,
        rotate,
        sample_plane,
    )

    root = Path(root) if root else build_demo()
    slices = load_slices(root)
    split = make_split(slices, "regions", seed=seed)
    test = (
        split.test
        if count >= len(split.test)
        else [split.test[round(k * (len(split.test) - 1) / max(count - 1, 1))] for k in range(count)]
    )
    planes, template, regions = demo_planes(root), load_template(), held_out_regions(seed)
    oblique: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {}
    for k, deg in enumerate(OBLIQUE_DEG):
        rows = []
        for i in test:
            p = planes[i]
            row, col = p.drow / np.linalg.norm(p.drow), p.dcol / np.linalg.norm(p.dcol)
            normal = np.cross(row, col)
            middle = p.origin + (p.shape[0] // 2) * p.drow + (p.shape[1] // 2) * p.dcol
            centre = regions.centres[np.argmin(((regions.centres - middle) ** 2).sum(1))]
            foot = centre - normal * float(np.dot(centre - p.origin, normal))  # ball centre on the plane
            angle = np.deg2rad(deg)
            axis = (row, col)[k % 2]  # tilt about the row axis for -25, the column axis for +25
            row2, col2 = (rotate(v, axis, angle) for v in (row, col))
            tilted = plane_through(foot, row2, col2, p.shape[0])
            image, labels = sample_plane(template, tilted)
            rows.append((image, region_masks([labels], [tilted], regions)[1][0]))
        oblique[deg] = rows
    return HeldOutPlanes([slices.images[i] for i in test], [split.test_masks[i] for i in test], oblique)


# ----------------------------------------------------------------------------- the report


def families() -> list[tuple[str, list[tuple[str, Perturb]]]]:
    """(family, [(strength, perturbation)]) in report order; 'oblique' is resampled, not perturbed,
    and 'empty' is slices with no brain (:mod:`edgeseg.train.robustness_heads`)."""
    from edgeseg.train import robustness_heads as heads

    return [
        ("clean", [("as stored", lambda im, m: (im, m))]),
        ("tight crop", [(f"brain box + {CROP_MARGIN} px", tight_crop)]),
        ("wide pad", [(f"{p} px zeros", zero_pad(p)) for p in PAD_FAMILY_PX]),
        ("oblique", []),
        ("bias field", [(f"exp({s:g} ramp)", bias_field(s)) for s in BIAS_STRENGTHS]),
        ("gamma", [(f"{g:g}", gamma(g)) for g in GAMMAS]),
        ("noise", [(f"Rician {s:.0%}", rician(s)) for s in NOISE_SIGMAS]),
        ("intensity scale", [(f"x{s:g}", scale(s)) for s in SCALES]),
        ("resolution", [(f"{mm:g} mm", resolution(mm)) for mm in RESOLUTIONS_MM]),
        ("head on", [(f"{name} scalp", heads.head_on(name)) for name, _ in heads.HEADS]),
        ("contrast", [(name, heads.contrast(name)) for name in heads.CONTRASTS]),
        ("deformed", [(f"elastic {mm:g} mm", heads.deformed(mm)) for mm in heads.DEFORM_MM]),
        ("empty", []),
    ]


def robustness_report(predict: Predict, data: HeldOutPlanes, num_classes: int = 3) -> list[RobustnessRow]:
    """Score ``predict`` on every family; see the module docstring."""
    rows: list[RobustnessRow] = []
    clean: float | None = None
    for family, variants in families():
        if family == "empty":
            rows.append(_empty_row(predict, len(data.images)))
            continue
        scored = family_slices(family, variants, data)
        pooled, worst, n = ConfusionMatrix(num_classes), None, 0
        for _, pairs in scored:
            cm = ConfusionMatrix(num_classes)
            for image, mask in pairs:
                cm.update(predict(image), mask)
                n += 1
            pooled.merge(cm)
            value = cm.miou_fg()
            worst = value if worst is None or (value is not None and value < worst) else worst
        miou = pooled.miou_fg()
        clean = miou if family == "clean" else clean
        drop = None if miou is None or clean is None else clean - miou
        rows.append(RobustnessRow(family, ", ".join(name for name, _ in scored), miou, drop, worst, n))
    return rows


def family_slices(
    family: str, variants: list[tuple[str, Perturb]], data: HeldOutPlanes
) -> list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """``[(strength, [(image, mask), ...])]`` of one family of :func:`families` (not "empty"):
    the oblique planes, or every held-out slice under each perturbation."""
    if family == "oblique":
        return [(f"{deg:+g} deg", data.oblique[deg]) for deg in OBLIQUE_DEG]
    return [(name, [fn(im, m) for im, m in zip(data.images, data.masks, strict=True)]) for name, fn in variants]


def _empty_row(predict: Predict, count: int) -> RobustnessRow:
    """The 'empty' family: ``count`` slices of each kind with no brain; % of pixels labelled background."""
    from edgeseg.train.robustness_heads import EMPTY_KINDS, empty_slices

    shares, total, background = [], 0, 0
    for kind in EMPTY_KINDS:
        labels = [predict(image) for image in empty_slices(kind, count)]
        kept = sum(int((lab == 0).sum()) for lab in labels)
        pixels = sum(lab.size for lab in labels)
        shares.append(100.0 * kept / pixels)
        total, background = total + pixels, background + kept
    return RobustnessRow(
        "empty", ", ".join(EMPTY_KINDS), None, None, min(shares), count * len(EMPTY_KINDS), 100.0 * background / total
    )


def format_robustness(rows: list[RobustnessRow]) -> str:
    """A markdown table of the report."""

    def fmt(v: float | None, sign: bool = False) -> str:
        return "—" if v is None else (f"{-v:+.4f}" if sign else f"{v:.4f}")

    lines = [
        "| perturbation | strengths | mIoU (GM, WM) | vs clean | worst strength | slices |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.family} | {r.strengths} | background {r.background_pct:.3f} % | — | {r.worst:.3f} % | {r.slices} |"
        if r.background_pct is not None and r.worst is not None
        else f"| {r.family} | {r.strengths} | {fmt(r.miou_fg)} | {fmt(r.drop, True)} | {fmt(r.worst)} | {r.slices} |"
        for r in rows
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- models


def onnx_predictor(path: Path) -> tuple[Predict, int]:
    """Labels from an exported file with ONNX Runtime (CPU), and its class count. Torch-free."""
    from edgeseg.artifacts import read_model_info
    from edgeseg.runtime.runners import RunnerSpec, open_runner

    info = read_model_info(path)
    runner = open_runner(path, RunnerSpec("ort", "cpu"))

    def predict(image: np.ndarray) -> np.ndarray:
        return runner.labels(np.ascontiguousarray(image, np.float32)[None, None])[0].astype(np.int64)

    return predict, len(info.class_names)


def checkpoint_predictor(path: Path) -> tuple[Predict, int]:
    """Labels from a checkpoint's PyTorch model (eval, CPU), and its class count."""
    import torch

    from edgeseg.model import load_checkpoint

    model, _ = load_checkpoint(path)

    def predict(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
            return model(x).argmax(1)[0].numpy()

    return predict, model.config.num_classes


def run_robustness(
    model: Path, data: Path | None = None, slices: int = 32, json_out: Path | None = None
) -> list[RobustnessRow]:
    """``edgeseg evaluate --robustness``: print the table for a checkpoint or an ONNX file."""
    model = Path(model)
    if not model.is_file():
        raise EdgesegError(f"{model}: not found; pass a checkpoint (.pt) or an exported model (.onnx)")
    if model.suffix == ".onnx":
        predict, num_classes = onnx_predictor(model)
    elif model.suffix == ".pt":
        predict, num_classes = checkpoint_predictor(model)
    else:
        raise EdgesegError(f"{model}: --robustness runs a .pt checkpoint or an .onnx file, not {model.suffix!r}")
    rows = robustness_report(predict, held_out_planes(data, count=slices), num_classes)
    print(f"{model}: robustness on the held-out 3-D regions ({slices} demo slices and their oblique planes)")
    print(format_robustness(rows))
    if json_out is not None:
        from edgeseg.files import atomic_write

        text = json.dumps([asdict(r) for r in rows], indent=2) + "\n"
        atomic_write(Path(json_out), lambda tmp: tmp.write_text(text))
    return rows
