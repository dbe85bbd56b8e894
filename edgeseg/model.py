"""The tutorial's U-Net, correct at every input size, with its checkpoint format.

The network is the one from the well-known PyTorch MRI segmentation tutorial
(widths 16-32-64-128, two 3x3 conv+BN+ReLU per level, MaxPool 2 down,
ConvTranspose 2x2/2 up, skip concatenation, 3x3 output conv: 483,571 parameters
for 1 input channel and 3 classes). Two things differ:

* the decoder pads the upsampled map left/top by ``skip - up`` on *each own*
  axis, computed from run-time sizes, so odd and non-square inputs work and an
  exported ONNX graph keeps the pad dynamic (the tutorial swaps H and W);
* per-image intensity normalisation happens inside the model, so raw scanner
  intensities go in and an exported model needs no hidden pre-processing. Since
  contract 2 (:class:`TissueNormalize`) it does not depend on the field of view
  (padding or a tight crop) nor on a global intensity scale; checkpoints record their
  contract, and one of contract 1 (:class:`Normalize`, whole-frame z-score) is rebuilt
  with its own normalisation, so it still runs as it was trained.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import EdgesegError, describe
from edgeseg.files import atomic_write, sha256_file

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


class DoubleConv(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU, spatial size kept."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """MaxPool 2 then DoubleConv: ``(N, Cin, H, W) -> (N, Cout, H//2, W//2)``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """ConvTranspose 2x2/2, left/top pad to the skip's size, concat, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.conv = DoubleConv(2 * out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = pad_to(self.up(x), skip)
        return self.conv(torch.cat([skip, up], dim=1))


def pad_to(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Pad ``up`` (N, C, 2h, 2w) left/top to the skip's (H, W), H in {2h, 2h+1}, each on its own axis."""
    # Sizes stay tensors/SymInts (never int()) so the exported pad is computed at run time.
    dh = skip.size(2) - up.size(2)
    dw = skip.size(3) - up.size(3)
    return F.pad(up, (dw, 0, dh, 0))  # F.pad takes the last axis (W) first


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv (eval-mode BatchNorm)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale[:, None, None, None], (bias - bn.running_mean) * scale + bn.bias


class FusedUp(nn.Module):
    """An eval-mode :class:`Up` with BatchNorm folded and the concat split away.

    ``conv(cat[skip, up]) == conv_skip(skip) + conv_up(up)`` with the kernel split along its
    input channels, so the concatenated tensor is never built, nor reordered in and out of
    ONNX Runtime's blocked NCHWc layout. The same function in real arithmetic; float32
    rounding differs in the last bits. Shares ``up``'s ConvTranspose (see :func:`inference_form`).
    """

    def __init__(self, up: Up) -> None:
        super().__init__()
        conv1, bn1, _, conv2, bn2, _ = up.conv.block
        ch = up.up.out_channels
        self.up = up.up
        self.conv_skip = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv_up = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.conv_out = nn.Conv2d(ch, ch, 3, padding=1)
        with torch.no_grad():
            weight, bias = _fold_bn(conv1, bn1)
            self.conv_skip.weight.copy_(weight[:, :ch])  # torch.cat put the skip first
            self.conv_skip.bias.copy_(bias)
            self.conv_up.weight.copy_(weight[:, ch:])
            weight, bias = _fold_bn(conv2, bn2)
            self.conv_out.weight.copy_(weight)
            self.conv_out.bias.copy_(bias)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = pad_to(self.up(x), skip)
        return torch.relu(self.conv_out(torch.relu(self.conv_skip(skip) + self.conv_up(up))))


class UNet(nn.Module):
    """The tutorial's U-Net: raw intensities ``(N, Cin, H, W)`` -> logits ``(N, C, H, W)``."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        w = self.config.widths
        self.normalize = make_normalize(self.config.normalization)
        self.stem = DoubleConv(self.config.in_channels, w[0])
        self.downs = nn.ModuleList(Down(a, b) for a, b in zip(w[:-1], w[1:], strict=True))
        self.ups = nn.ModuleList(Up(b, a) for a, b in zip(reversed(w[:-1]), reversed(w[1:]), strict=True))
        self.head = nn.Conv2d(w[0], self.config.num_classes, 3, padding=1)
        self.frame_form = "floor"  # how aligned_frame writes the frame's side: "remainder" for torch.export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            check_input_shape(tuple(x.shape), self.config)
        x = self.normalize(x)
        if not self.config.aligned:
            return self.segment(x)
        return aligned_frame(self.segment, x, self.config.grid, self.frame_form)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """The network after normalisation: normalised ``(N, Cin, H, W)`` -> logits.

        Training on patches feeds patches normalised with their whole frame's statistics
        here, so that they match what ``forward`` computes on whole frames at inference.
        """
        x = self.stem(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottom level is not a skip
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)


class WithLabels(nn.Module):
    """A model that also returns its labels: ``(N, 1, H, W) -> (logits (N, C, H, W), labels (N, H, W) uint8)``.

    The exported files (ONNX, ExecuTorch) carry the argmax, so a deployment needs no code of ours.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(image)
        return logits, logits.argmax(dim=1).to(torch.uint8)


def with_labels(model: nn.Module) -> WithLabels:
    """An eval-mode :class:`WithLabels` around a copy of ``model`` (the original is left as it is)."""
    return WithLabels(copy.deepcopy(model)).eval()


def inference_form(model: UNet) -> UNet:
    """A copy of ``model`` in eval mode with every decoder block a :class:`FusedUp` (for export)."""
    fused = copy.deepcopy(model).eval()
    fused.ups = nn.ModuleList(FusedUp(up) for up in fused.ups)
    return fused


def check_input_shape(shape: tuple[int, ...], config: ModelConfig) -> None:
    """Raise EdgesegError unless ``shape`` is ``(N, in_channels, H, W)`` with H, W >= min_size."""
    if len(shape) != 4 or shape[1] != config.in_channels:
        raise EdgesegError(f"model input has shape {shape}; expected (N, {config.in_channels}, H, W)")
    if min(shape[2:]) < config.min_size:
        raise EdgesegError(
            f"input of {shape[2]}x{shape[3]} is too small for this U-Net: H and W must be"
            f" >= {config.min_size}; pad or resample the slice"
        )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(path: Path, model: UNet, **extra: Any) -> None:
    """Atomically write a weights-only-loadable checkpoint (temp file + rename).

    Args:
        path: destination ``.pt`` file.
        model: the network; its state_dict and config are stored.
        **extra: plain data only (numbers, strings, lists, dicts, tensors), e.g.
            ``metrics``, ``train_config``, ``epoch``, ``optimizer``.
    """
    payload = {
        "format": "edgeseg-checkpoint-v1",
        "normalization_contract": model.config.contract,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": _config_to_dict(model.config),
        **extra,
    }
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[UNet, dict[str, Any]]:
    """Load a checkpoint with ``weights_only=True`` and rebuild its model in eval mode.

    Returns:
        ``(model, checkpoint_dict)``.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: checkpoint not found; train one with `edgeseg train`")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file at all
        raise EdgesegError(
            f"{path}: not a loadable edgeseg checkpoint ({describe(exc, 160, typed=True)});"
            " pass a .pt written by `edgeseg train`"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model_config" not in ckpt:
        raise EdgesegError(f"{path}: not an edgeseg checkpoint (no state_dict/model_config)")
    model = UNet(ModelConfig(**checkpoint_model_config(ckpt, path)))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise EdgesegError(f"{path}: weights do not fit the stored model config: {exc}") from exc
    return model.to(device).eval(), ckpt


@dataclass
class Checkpoint:
    """A checkpoint loaded once, with its file's SHA-256: what export, validation and the model
    card share instead of each loading and hashing the file again."""

    path: Path
    model: UNet
    state: dict[str, Any]
    sha256: str

    @classmethod
    def load(cls, path: Path | Checkpoint) -> Checkpoint:
        """``path`` loaded (weights only) and hashed; an already loaded one is returned as it is."""
        if isinstance(path, Checkpoint):
            return path
        model, state = load_checkpoint(Path(path))
        return cls(Path(path), model, state, sha256_file(Path(path)))


def checkpoint_model_config(ckpt: dict[str, Any], path: Path | str = "checkpoint") -> dict[str, Any]:
    """The stored model config, with the normalisation and framing of the checkpoint's contract.

    A checkpoint written before contracts were recorded is contract 1 (whole-frame z-score);
    a contract this edgeseg does not know is refused, never run with another normalisation.
    """
    config = dict(ckpt["model_config"])
    contract = int(ckpt.get("normalization_contract", 1))
    stored = config.get("normalization", CONTRACTS.get(contract, ("?",))[0])
    if contract not in CONTRACTS or CONTRACTS[contract][0] != stored:
        raise EdgesegError(
            f"{path}: normalisation contract {contract} ({config.get('normalization', '?')}) is unknown"
            f" to this edgeseg (knows {sorted(CONTRACTS)}); upgrade edgeseg or retrain with `edgeseg train`"
        )
    config["normalization"], config["aligned"] = CONTRACTS[contract]
    return config


def _config_to_dict(config: ModelConfig) -> dict[str, Any]:
    d = asdict(config)
    d["widths"] = list(d["widths"])
    d["class_names"] = list(d["class_names"])
    return d


def reference_logits(model: UNet, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """PyTorch fp32 eval-mode logits for each ``(N, 1, H, W)`` batch (the parity reference)."""
    with torch.inference_mode():
        return [model.float().eval()(torch.from_numpy(x)).numpy() for x in inputs]
