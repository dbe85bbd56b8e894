"""Crop to the brain before the model, paste back after: compute only where the brain is (torch-free).

Most of a slice is background. A contract-3 model frames each image in zeros with its first
nonzero row and column on the pooling grid (:func:`edgeseg.model_contract.aligned_frame`), so its labels
do not depend on how much zero background surrounds the brain. :func:`plan_crop` picks one box
per volume, the union over its slices of the tissue's bounding box plus :data:`MARGIN`, aligned to
the grid so that one static shape serves the whole volume; :meth:`Crop.cut` takes that box out of
each batch and :meth:`Crop.paste` puts the model's outputs back into the full frame.

The box keeps what the graph itself measures the same:

* tissue is found as the graph's normalisation finds it (:func:`tissue_mask`, the numpy twin of
  :func:`edgeseg.model_contract.tissue_scale`), and the brightest pixel of every slice stays inside;
* the pooling phase follows each slice's first nonzero row and column, so the box grows until the
  first nonzero row/column inside it has the same phase (mod the grid) as in the whole slice.

Outside the box the model does not run. There the labels are background (0), what the uncropped
model gives a zero background, and the logits are :func:`outside_logits`: background, certain.
The QC confidence figures count pixels labelled brain only, so these logits never enter them;
``brain_fraction`` still divides by the whole frame. A volume whose box would cover nearly the
whole frame (:data:`MIN_SAVING`), or a model of an older contract, is not cropped.

Two guards keep QC identical with and without the crop. The invariance holds for *zero*
framing; outside the box a scan need not be zero, and there only the model can say that it is
background. They were found when the crop was on by default and tests/io/test_qc.py's CT-like
head (air -1000, bone 1000) ran cropped: the normalisation's tissue level, ``sum(y^4)/sum(y^3)``,
means nothing on signed intensities (that scan's box held no tissue, only the peaks: 24 x 40 px
of 394 x 466), and the uncropped model labelled 26 % of the air outside the box brain, so the
cropped run had no figures at all (``no brain``) where the uncropped one had
``brain_fraction`` 0.26 at confidence 0.999. Hence:

* a volume with a pixel below -:data:`SIGNED_SHARE` x its slice's peak (a CT in HU, a
  zero-mean image) is not cropped (:func:`plan_crop`): pydicom's ``CT_small.dcm`` has 22 % of
  its pixels below -0.25 x its peak; Rician noise, the robustness report's, is never negative;
* where the cropped model labels brain within :data:`RING` px of a box edge that is not the
  frame's edge (:meth:`Crop.touches`), the model may see brain beyond the box, and the batch is
  run again on whole slices (edgeseg.infer.segment); on the demo slices that never happens, as the
  box holds all tissue plus :data:`MARGIN`.

Measured with the shipped model (ONNX Runtime fp32) on the 457 demo slices: per-slice boxes cover
a median 53 % of the frame and give the uncropped labels on 99.989 % of brain pixels (worst slice
99.92 %); 120-slice unions cover 74 % at 99.997 % (worst 99.98 %). The uncropped model labelled
no pixel outside any box brain. tests/export/test_metamorphic.py holds every shipped file to 99.9 %.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

MARGIN = 8  # px of frame kept around the tissue (before aligning outwards to the grid)
TISSUE_THRESHOLD = 0.4  # edgeseg.model_contract.TISSUE_THRESHOLD: tissue = above this x the bright-tissue level
TINY = 1e-30  # edgeseg.model_contract.TINY
GRIDS = {3: 8}  # pooling grid of each contract whose labels are invariant to zero framing
MIN_SAVING = 0.1  # crop only when it drops at least this fraction of the frame's pixels
OUTSIDE_BACKGROUND_LOGIT = 20.0  # background's lead over every other class outside the box
SIGNED_SHARE = 0.1  # a pixel below -this x its slice's peak: signed intensities (a CT), no crop
RING = 2  # px inside a box edge where brain labels send the batch back to whole slices


@dataclass(frozen=True)
class Crop:
    """One volume's box on the model's grid: rows ``top:bottom``, columns ``left:right``."""

    top: int
    bottom: int
    left: int
    right: int
    frame: tuple[int, int]  # (H, W) of the whole slice on the model's grid

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    @property
    def fraction(self) -> float:
        """The box's share of the frame's pixels."""
        return self.shape[0] * self.shape[1] / (self.frame[0] * self.frame[1])

    def cut(self, batch: np.ndarray) -> np.ndarray:
        """``(n, 1, H, W)`` -> contiguous ``(n, 1, h, w)`` of the box."""
        return np.ascontiguousarray(batch[..., self.top : self.bottom, self.left : self.right])

    def paste(self, logits: np.ndarray | None, labels: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """The box's ``(n, C, h, w)`` logits and ``(n, h, w)`` labels in the full frame.

        Outside the box: label 0 and :func:`outside_logits` (background, certain).
        """
        rows, cols = slice(self.top, self.bottom), slice(self.left, self.right)
        full = np.zeros((len(labels), *self.frame), labels.dtype)
        full[:, rows, cols] = labels
        if logits is None:
            return None, full
        out = np.empty((*logits.shape[:2], *self.frame), logits.dtype)
        out[...] = outside_logits(logits.shape[1], logits.dtype)[:, None, None]
        out[:, :, rows, cols] = logits
        return out, full

    def touches(self, labels: np.ndarray) -> bool:
        """Whether ``(n, h, w)`` labels of the box hold brain within :data:`RING` px of an edge
        that is not the frame's own: the model may see brain beyond the box there."""
        h, w = self.shape
        edges = (
            (self.top > 0, labels[:, :RING]),
            (self.bottom < self.frame[0], labels[:, h - RING :]),
            (self.left > 0, labels[:, :, :RING]),
            (self.right < self.frame[1], labels[:, :, w - RING :]),
        )
        return any(inner and bool(band.any()) for inner, band in edges)


def outside_logits(classes: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """``(C,)`` logits written outside the box: 0 for background, -OUTSIDE_BACKGROUND_LOGIT for the rest."""
    out = np.full(classes, -OUTSIDE_BACKGROUND_LOGIT, dtype)
    out[0] = 0
    return out


def tissue_mask(x: np.ndarray) -> np.ndarray:
    """``(n, H, W)`` raw intensities -> ``(n, H, W)`` bool tissue, as the graph's normalisation finds it.

    Tissue is every pixel above TISSUE_THRESHOLD x ``t = sum(y^4) / sum(y^3)``, ``y = x / max(x)``
    (:func:`edgeseg.model_contract.tissue_scale`), in float64 here: a pixel at the threshold may fall on
    either side of the graph's float32 test, which the margin absorbs.
    """
    x = np.asarray(x, np.float64)
    peak = np.maximum(x.max(axis=(1, 2), keepdims=True), TINY)
    y = x / peak
    cube = y * y * y
    level = (cube * y).sum(axis=(1, 2), keepdims=True) / np.maximum(cube.sum(axis=(1, 2), keepdims=True), TINY)
    return y > TISSUE_THRESHOLD * level


def _span(any_: np.ndarray) -> tuple[int, int] | None:
    """First and one-past-last True of a 1-d bool array; None when none."""
    hits = np.flatnonzero(any_)
    return (int(hits[0]), int(hits[-1]) + 1) if len(hits) else None


def _first(mask: np.ndarray, axis: int) -> np.ndarray:
    """``(n, H, W)`` bool -> ``(n,)`` first row (axis 1) or column (axis 2) holding a True; -1 when none."""
    line = mask.any(axis=3 - axis)
    return np.where(line.any(1), line.argmax(1), -1)


@dataclass
class _Extent:
    """What :func:`plan_crop` needs of every slice, gathered chunk by chunk."""

    first_row: np.ndarray  # (n,) first nonzero row of each slice (-1: an empty slice)
    first_col: np.ndarray
    nonzero: list[np.ndarray]  # (n, H, ceil(W / 8)) np.packbits of the nonzero pixels: to check the phase in a box
    width: int = 0  # W, to unpack them
    signed: bool = False  # some slice has a pixel below -SIGNED_SHARE x its peak


def _extent(chunks: Iterable[np.ndarray]) -> tuple[tuple[int, int, int, int] | None, _Extent]:
    """The union box of tissue and peaks over ``chunks`` of ``(n, H, W)`` slices, and the per-slice facts."""
    rows_any = cols_any = None
    firsts_r, firsts_c, nonzero, signed = [], [], [], False
    for x in chunks:
        low, high = x.min(axis=(1, 2)), x.max(axis=(1, 2))
        signed = signed or bool(np.any(low < -SIGNED_SHARE * np.maximum(high, 0)))
        keep = tissue_mask(x)
        flat = x.reshape(len(x), -1)
        peak = np.zeros_like(keep).reshape(len(x), -1)
        peak[np.arange(len(x)), flat.argmax(1)] = flat.max(1) > 0  # the normalisation's max stays in the box
        keep |= peak.reshape(keep.shape)
        r, c = keep.any(axis=(0, 2)), keep.any(axis=(0, 1))
        rows_any = r if rows_any is None else rows_any | r
        cols_any = c if cols_any is None else cols_any | c
        nz = x != 0
        firsts_r.append(_first(nz, 1))
        firsts_c.append(_first(nz, 2))
        nonzero.append(np.packbits(nz, axis=-1))  # 1 bit a pixel: a long volume's masks stay small
    if rows_any is None or cols_any is None:  # no slices
        return None, _Extent(np.zeros(0, int), np.zeros(0, int), [])
    facts = _Extent(np.concatenate(firsts_r), np.concatenate(firsts_c), nonzero, x.shape[2], signed)
    rows, cols = _span(rows_any), _span(cols_any)
    return (None if rows is None or cols is None else (*rows, *cols)), facts


def _aligned(start: int, stop: int, size: int, grid: int, least: int) -> tuple[int, int]:
    """``[start - MARGIN, stop + MARGIN)`` grown outwards to the grid, at least ``least`` long, within ``[0, size)``."""
    lo = max(0, (start - MARGIN) // grid * grid)
    hi = min(size, -(-(stop + MARGIN) // grid) * grid)
    while hi - lo < least and (lo > 0 or hi < size):
        lo, hi = max(0, lo - grid), min(size, hi + grid)
    return lo, hi


def _phase_ok(box: list[int], facts: _Extent, grid: int) -> tuple[bool, bool]:
    """Whether every slice's first nonzero row (and column) inside ``box`` has its whole-slice phase."""
    top, bottom, left, right = box
    rows_ok = cols_ok = True
    for chunk, first_r, first_c in _chunks_with(facts):
        inner = chunk[:, top:bottom, left:right]
        r, c = _first(inner, 1), _first(inner, 2)
        have = first_r >= 0
        rows_ok &= bool(np.all(~have | ((r >= 0) & ((r + top - first_r) % grid == 0))))
        cols_ok &= bool(np.all(~have | ((c >= 0) & ((c + left - first_c) % grid == 0))))
    return rows_ok, cols_ok


def _chunks_with(facts: _Extent) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each chunk's nonzero mask, unpacked one at a time, with its slices' first nonzero rows and columns."""
    at = 0
    for packed in facts.nonzero:
        chunk = np.unpackbits(packed, axis=-1, count=facts.width).view(bool)
        yield chunk, facts.first_row[at : at + len(chunk)], facts.first_col[at : at + len(chunk)]
        at += len(chunk)


def plan_crop(chunks: Iterable[np.ndarray], grid: int, min_size: int) -> Crop | None:
    """One box for a volume given as ``chunks`` of ``(n, H, W)`` slices on the model's grid; None: no crop.

    Args:
        chunks: the volume's slices (raw intensities, as the model gets them), in chunks; read
            once (a generator keeps one chunk of floats in memory, plus a bool mask of the volume).
        grid: the model's pooling grid (:data:`GRIDS`).
        min_size: smallest H and W the model accepts.

    Returns:
        The :class:`Crop`, or None when no slice has tissue, a slice holds signed intensities
        (:data:`SIGNED_SHARE`) or the box saves less than :data:`MIN_SAVING` of the frame (then
        the volume runs uncropped, exactly as before).
    """
    found, facts = _extent(chunks)
    if found is None or facts.signed:
        return None
    h, w = facts.nonzero[0].shape[1], facts.width
    top, bottom = _aligned(found[0], found[1], h, grid, min_size)
    left, right = _aligned(found[2], found[3], w, grid, min_size)
    box = [top, bottom, left, right]
    while True:  # grow each side by a grid step until the phase holds; the whole frame always does
        rows_ok, cols_ok = _phase_ok(box, facts, grid)
        if rows_ok and cols_ok:
            break
        before = list(box)
        if not rows_ok:
            box[0], box[1] = max(0, box[0] - grid), min(h, box[1] + grid)
        if not cols_ok:
            box[2], box[3] = max(0, box[2] - grid), min(w, box[3] + grid)
        if box == before:  # the failing axis is whole: its first nonzero lies in columns (rows) left out
            box = [max(0, box[0] - grid), min(h, box[1] + grid), max(0, box[2] - grid), min(w, box[3] + grid)]
    crop = Crop(*box, frame=(h, w))
    return crop if crop.fraction <= 1 - MIN_SAVING else None
