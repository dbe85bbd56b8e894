"""The contracts: what an edgeseg graph computes around the U-Net, and the config that names them.

A contract is the normalisation and framing an exported graph applies to raw intensities
before and after the network; checkpoints and ONNX metadata carry its number, and files
without one are contract 1. Three exist:

* contract 1 (:class:`Normalize`): per-image whole-frame z-score, the tutorial's;
* contract 2 (:class:`TissueNormalize`): divide by the tissue mean (:func:`tissue_scale`),
  the same at any field of view (padding or a tight crop) and any global intensity scale;
* contract 3: contract 2 with each image's foreground placed on the pooling grid
  (:func:`aligned_frame`), so a slice gets the same labels padded or cropped to its brain.

Split from :mod:`edgeseg.model` (487 lines) so that the network's blocks and its checkpoint
format read on their own; this module holds no layer with weights, so what a saved
checkpoint or ``export/model.pt`` needs (a state dict and a config dict) is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import EdgesegError

MIN_SIZE = 16  # three 2x poolings need at least 2 pixels at the bottom level
NORM_EPS = 1e-6  # keeps a constant (all-zero) slice finite after normalisation
TISSUE_THRESHOLD = 0.4  # tissue = pixels above this x the bright-tissue level (drops CSF, noise)
TINY = 1e-30  # floor of divisors: an all-zero slice normalises to zeros, not NaN
# Contracts: what the graph computes around the network (normalisation, framing). Checkpoints
# and ONNX metadata carry the number; files without one are contract 1.
NORMALIZATIONS = {"zscore": 1, "tissue-mean": 2}  # the contract that introduced each normalisation
CONTRACTS = {1: ("zscore", False), 2: ("tissue-mean", False), 3: ("tissue-mean", True)}  # (norm, aligned)
NORM_CONTRACT = 3  # the contract new models are trained with
# Zero pixels added on every side of the aligned frame. Measured on the contract-2 model, 8 demo
# slices cropped to their brain + 4 px: 99.94 % (worst 99.85 %) identical brain labels with
# no margin, 99.98 % (99.95 %) with 8 px, at 7 % and 16 % more pixels of a 394x394 slice.
ALIGN_MARGIN = 8
DEFAULT_CLASSES = ("background", "gray_matter", "white_matter")


@dataclass
class ModelConfig:
    """Architecture of the U-Net; saved in every checkpoint."""

    in_channels: int = 1  # one MRI contrast
    num_classes: int = 3  # background, gray matter, white matter
    widths: tuple[int, ...] = (16, 32, 64, 128)  # the tutorial's channel widths, top to bottom
    class_names: tuple[str, ...] = field(default=DEFAULT_CLASSES)
    normalization: str = "tissue-mean"  # in-graph normalisation (contract 2); "zscore" = contract 1
    # pooling grid anchored to the foreground (aligned_frame); None: True for tissue-mean
    # (contract 3), False for zscore (contract 1); False with tissue-mean is contract 2
    aligned: bool | None = None

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise EdgesegError(
                f"model config: normalisation {self.normalization!r} is unknown to this edgeseg;"
                f" known: {', '.join(NORMALIZATIONS)} (upgrade edgeseg to load newer models)"
            )
        self.widths = tuple(int(w) for w in self.widths)
        self.class_names = tuple(self.class_names)
        if len(self.class_names) != self.num_classes:
            raise EdgesegError(
                f"model config: {len(self.class_names)} class names for {self.num_classes} classes;"
                " give one name per class"
            )
        if len(self.widths) < 2:
            raise EdgesegError("model config: widths needs at least two levels, e.g. 16,32,64,128")
        self.aligned = self.normalization != "zscore" if self.aligned is None else bool(self.aligned)
        if (self.normalization, self.aligned) not in CONTRACTS.values():
            raise EdgesegError(
                f"model config: normalisation {self.normalization!r} with aligned={self.aligned} is no"
                f" contract; valid: {sorted(CONTRACTS.values())}"
            )

    @property
    def contract(self) -> int:
        """The contract number of this normalisation and framing (see CONTRACTS)."""
        return {v: k for k, v in CONTRACTS.items()}[(self.normalization, bool(self.aligned))]

    @property
    def grid(self) -> int:
        """The pooling grid: the stride of the bottom level (8 for four levels)."""
        return 2 ** (len(self.widths) - 1)

    @property
    def min_size(self) -> int:
        """Smallest H or W the net accepts: every pooling level needs at least 2 pixels."""
        return max(MIN_SIZE, 2 ** len(self.widths))


class Normalize(nn.Module):
    """Per-image, per-channel z-score over H and W: ``(N, C, H, W) -> (N, C, H, W)``.

    Means are taken over W, then over H: the same numbers (every row has W pixels), but
    ONNX Runtime's CPU ReduceMean sums in float32 one value after another, and a single
    mean over a 394x394 slice of raw intensities was off by 1.2e-4 relative in the
    variance (5e-4 in the logits); two means over ~400 values each are exact enough.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
        var = (x - mean).square().mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
        return (x - mean) / torch.sqrt(var + NORM_EPS)


def _sum_hw(x: torch.Tensor) -> torch.Tensor:
    """Sum over W, then over H, keeping dims: two float32 sums of ~400 values, not one of 155k."""
    return x.sum(dim=3, keepdim=True).sum(dim=2, keepdim=True)


def tissue_scale(x: torch.Tensor) -> torch.Tensor:
    """The mean intensity of tissue in each image: ``(N, C, H, W) -> (N, C, 1, 1)``.

    Tissue is every pixel above TISSUE_THRESHOLD x the bright-tissue level
    ``t = sum(x^4) / sum(x^3)``. Zero padding adds nothing to either sum, so ``t``, the mask
    and the mean are the same whether a slice is padded wide or cropped to its brain; noise
    padding adds little (its x^3 and x^4 are tiny next to tissue's), and pixels of it are
    below the threshold. Everything is computed on ``x / max(x)``: homogeneous of degree 1,
    so a global intensity scale cancels, and the powers never overflow (fp16 models keep
    this part float32). A single pixel far brighter than all tissue would dominate ``t``;
    skull-stripped MRI has none.
    """
    peak = x.amax(dim=(2, 3), keepdim=True).clamp_min(TINY)
    y = x / peak
    cube = y * y * y
    level = _sum_hw(cube * y) / _sum_hw(cube).clamp_min(TINY)
    tissue = (y > TISSUE_THRESHOLD * level).to(x.dtype)
    mean = _sum_hw(y * tissue) / _sum_hw(tissue).clamp_min(1.0)
    return (peak * mean).clamp_min(TINY)


class TissueNormalize(nn.Module):
    """Contract 2: divide each image by its tissue mean (:func:`tissue_scale`): ``(N, C, H, W)``.

    Background stays exactly 0, which is also what the convolutions pad with, so the
    normalised slice is the same at any field of view and any intensity scale.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / tissue_scale(x)


def make_normalize(name: str) -> nn.Module:
    """The normalisation module of a contract name (see NORMALIZATIONS)."""
    return Normalize() if name == "zscore" else TissueNormalize()


def _first_foreground(fg: torch.Tensor) -> torch.Tensor:
    """Index of the first True along the last axis of ``(N, L)``, as float (L when none)."""
    size = fg.size(1)
    index = torch.arange(size, device=fg.device, dtype=torch.float32)
    # a minimum over indices, not ArgMax: TensorRT's TopK does not promise the first of ties
    return torch.where(fg, index, index + size).amin(dim=1)


def _window(
    x: torch.Tensor, start: int, shift: torch.Tensor, length: torch.Tensor | int, dim: int, grid: int
) -> torch.Tensor:
    """``x[n, ..., start + shift[n] : ... + length, ...]`` along ``dim``, ``shift`` (N,) in [0, grid).

    A sum of one static slice per possible shift, each weighted by ``shift == k`` (exact: one
    weight is 1, the rest 0): plain Slice, Mul and Add in ONNX, with no data-dependent shape
    and no GatherElements (onnx.reference cannot gather along an axis longer than 64).
    """
    out = None
    for k in range(grid):
        weight = (shift == k).to(x.dtype).view(-1, 1, 1, 1)
        part = x.narrow(dim, start + k, length) * weight
        out = part if out is None else out + part
    return out


def aligned_frame(
    segment: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: int, frame_form: str = "floor"
) -> torch.Tensor:
    """Run ``segment`` with each image's foreground on the pooling grid: ``(N, C, H, W) -> logits``.

    Max pooling and the stride-2 upsampling see a shifted image differently unless the shift
    is a multiple of ``grid``, and a frame edge near the brain changes what the convolutions
    see. So each image is placed in a zero frame whose first nonzero row and column fall at
    ALIGN_MARGIN + a multiple of ``grid``, at least ALIGN_MARGIN from every edge, with sides a
    multiple of ``grid`` (no decoder padding); the logits are cut back to ``(H, W)``. A slice
    with a zero background then gets the same labels padded with zeros or cropped to its
    brain. One shift per image, so a slice's labels do not depend on its batch. Pads are
    static or computed from run-time sizes; the frame's size depends on H and W only.

    ``frame_form`` writes the same frame side two ways. ``floor`` (ONNX): ``(n + g - 1) // g * g``,
    from which the ONNX exporter proves the decoder's pads zero and drops them. ``remainder``
    (ExecuTorch): ``n + (g - n % g) % g``, from which ``torch.export`` can prove the frame's pads
    non-negative for every H, W in a bounded range (it cannot from the floor division).
    """
    m, g = ALIGN_MARGIN, grid
    fg = (x != 0).amax(dim=1)  # (N, H, W)
    rows, cols = _first_foreground(fg.amax(dim=2)), _first_foreground(fg.amax(dim=1))
    # (N,) zero rows added above the margin, 0..g-1 (float): (-rows) mod g with non-negative operands
    shift_y = torch.remainder(g - torch.remainder(rows, g), g)
    shift_x = torch.remainder(g - torch.remainder(cols, g), g)
    h, w = x.size(2), x.size(3)
    # the least multiple of g >= h + 2m + g - 1 (room for any shift), written as that bound plus a
    # remainder so that torch.export can prove every pad below non-negative (ExecuTorch's export
    # with dynamic H, W failed on the floor-division form of the same number)
    need_h, need_w = h + 2 * m + g - 1, w + 2 * m + g - 1  # room for any shift
    if frame_form == "remainder":  # non-negative operands: C's and Python's % agree
        frame_h, frame_w = need_h + (g - need_h % g) % g, need_w + (g - need_w % g) % g
    else:
        frame_h, frame_w = (need_h + g - 1) // g * g, (need_w + g - 1) // g * g
    padded = F.pad(x, (m + g - 1, frame_w - w - m, m + g - 1, frame_h - h - m))
    framed = _window(_window(padded, 0, g - 1 - shift_y, frame_h, 2, g), 0, g - 1 - shift_x, frame_w, 3, g)
    logits = segment(framed)
    return _window(_window(logits, m, shift_y, h, 2, g), m, shift_x, w, 3, g)


def check_input_shape(shape: tuple[int, ...], config: ModelConfig) -> None:
    """Raise EdgesegError unless ``shape`` is ``(N, in_channels, H, W)`` with H, W >= min_size."""
    if len(shape) != 4 or shape[1] != config.in_channels:
        raise EdgesegError(f"model input has shape {shape}; expected (N, {config.in_channels}, H, W)")
    if min(shape[2:]) < config.min_size:
        raise EdgesegError(
            f"input of {shape[2]}x{shape[3]} is too small for this U-Net: H and W must be"
            f" >= {config.min_size}; pad or resample the slice"
        )
