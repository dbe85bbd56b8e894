"""Is what the model labelled brain shaped like a brain? Cheap figures of the label maps and the
input, numpy only (no scipy, no torch: they run on every slice of every scan in `edgeseg infer`).

The QC ranges (:mod:`edgeseg.io.qc`) judge the model's own confidence and how much it labelled. A
model trained on one brain is often confident on an abdomen or a shoulder, and labels a fraction
of it in range. What it cannot fake is the shape of a brain in a slice:

* ``rim_gm``: a brain's outline is cortex. Along every row and column that crosses the brain
  mask (gray | white matter), the first and the last brain pixel are gray matter; this is the
  share of those ends that are. It measures how much of the white matter is enclosed by gray.
* ``fill``: a brain slice is one compact region. Along every row and column, the brain pixels
  over the span from the first to the last: scattered labels on an abdomen leave gaps.
* ``edge``: 4-neighbour pairs that cross the brain mask's outline per square root of its area
  (a disk: about 4.5). Speckled labels on noise or bowel have long outlines for their area.
* ``signed``: share of input pixels below -0.1 x their slice's peak. MR magnitudes are not
  negative; a CT in Hounsfield units is (air at -1000).

Each is pooled over the slices that :class:`edgeseg.io.qc.QCCounter` keeps (at least 2 % brain), as
ratios of sums. :data:`LIMITS` are fixed thresholds from measurement, with the shipped
``export/model.onnx`` (ONNX Runtime CPU, 2-core AMD EPYC, 2026-12-07):

* ``python bench/qc_flags.py --slices 32``: 32 held-out slices under every robustness family,
  single slices. The 610 with mIoU(GM, WM) >= 0.7 had ``fill`` >= 0.789 (1st percentile 0.889)
  and ``edge`` <= 19.8 (99th percentile 14.9), ``rim_gm`` >= 0.93, ``signed`` 0. The limits sit
  at ``fill`` 0.85 and ``edge`` 15: about 1 % of good slices each. The slices the model got wrong
  under a generated scalp ("head on", mIoU 0.16-0.69) had ``fill`` 0.66-0.82 and ``edge`` 16-27.
* whole scans through `edgeseg infer --force`: the MNI152 example slab fill 0.944, edge 10.6; 12
  demo slices 0.927 / 11.0; pydicom's abdomen (``MR-SIEMENS-DICOM-WithOverlays``) 0.552 / 55.4;
  the shoulder (``MR2_UNCR``) 0.474 / 28.1; ``CT_small`` forced through rim_gm 0.319, fill 0.265,
  signed 0.25; tests/io/test_qc.py's CT-like head rim_gm 0.032, signed 0.49 and ultrasound-like fan
  fill 0.461 / edge 66.5; Rayleigh noise 0.488 / 136; a raw head built by :mod:`edgeseg.data.synth`
  (10 slices 10 mm apart), whose scalp the model labelled brain, fill 0.748 / edge 27.7.

``rim_gm`` is held at 0.5 and ``signed`` at 0.05, far from every brain slice, since they speak
to what no slice of the robustness families shows (a CT).
"""

from __future__ import annotations

import numpy as np

ANATOMY = ("rim_gm", "fill", "edge", "signed")
SIGNED_SHARE = 0.1  # edgeseg.infer.crop.SIGNED_SHARE: a pixel below -this x its slice's peak is signed
# figure -> (low, high): outside it the scan is "not brain anatomy"; see the module docstring
LIMITS: dict[str, tuple[float, float]] = {
    "rim_gm": (0.5, 1.0),
    "fill": (0.85, 1.0),
    "edge": (0.0, 15.0),
    "signed": (0.0, 0.05),
}


def _ends(brain: np.ndarray, gray: np.ndarray, axis: int) -> tuple[int, int, int, int]:
    """Along ``axis`` (1: down columns, 2: along rows) of ``(n, H, W)`` masks: ends that are gray,
    ends, brain pixels inside spans, span pixels."""
    length = brain.shape[axis]
    any_ = brain.any(axis=axis)
    first = brain.argmax(axis=axis)
    last = length - 1 - np.flip(brain, axis=axis).argmax(axis=axis)
    g_first = np.take_along_axis(gray, np.expand_dims(first, axis), axis).squeeze(axis)
    g_last = np.take_along_axis(gray, np.expand_dims(last, axis), axis).squeeze(axis)
    ends_gray = int(np.count_nonzero(g_first & any_) + np.count_nonzero(g_last & any_))
    spans = int((last - first + 1)[any_].sum())
    return ends_gray, 2 * int(np.count_nonzero(any_)), int(np.count_nonzero(brain)), spans


def anatomy_counts(labels: np.ndarray, image: np.ndarray | None, gray: int | None) -> np.ndarray:
    """``(n, H, W)`` labels (and ``(n, H, W)`` input) -> the sums the figures are ratios of.

    Returns ``[gray ends, ends, brain in spans, span pixels, outline pairs, sum sqrt(area),
    signed pixels, pixels]`` as float64.
    """
    brain = labels > 0
    is_gray = labels == gray if gray is not None else np.zeros_like(brain)
    rows = _ends(brain, is_gray, 2)
    cols = _ends(brain, is_gray, 1)
    outline = np.count_nonzero(brain[:, 1:] != brain[:, :-1]) + np.count_nonzero(brain[:, :, 1:] != brain[:, :, :-1])
    root = float(np.sqrt(np.count_nonzero(brain.reshape(len(brain), -1), axis=1)).sum())
    signed = pixels = 0
    if image is not None:
        x = np.asarray(image, np.float32).reshape(len(labels), -1)
        peak = np.maximum(x.max(axis=1, keepdims=True), 0)
        signed, pixels = int(np.count_nonzero(x < -SIGNED_SHARE * peak)), x.size
    return np.array(
        [rows[0] + cols[0], rows[1] + cols[1], rows[2] + cols[2], rows[3] + cols[3], outline, root, signed, pixels],
        np.float64,
    )


def anatomy_figures(sums: np.ndarray) -> dict[str, float]:
    """The figures from :func:`anatomy_counts` summed over slices; empty where nothing was counted."""
    g_ends, ends, inside, spans, outline, root, signed, pixels = sums
    out = {}
    if ends:
        out["rim_gm"] = g_ends / ends
    if spans:
        out["fill"] = inside / spans
    if root:
        out["edge"] = outline / root
    if pixels:
        out["signed"] = signed / pixels
    return out


def anatomy_reasons(figures: dict[str, float], limits: dict[str, tuple[float, float]] = LIMITS) -> tuple[str, ...]:
    """Each anatomy figure outside its limits, as ``"rim_gm 0.31 below 0.5"``."""
    out = []
    for key, (lo, hi) in limits.items():
        if key in figures and not lo <= figures[key] <= hi:
            side = "below" if figures[key] < lo else "above"
            out.append(f"{key} {figures[key]:.3g} {side} {lo if side == 'below' else hi:g}")
    return tuple(out)
