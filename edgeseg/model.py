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

The contracts (normalisation, the aligned frame) and :class:`ModelConfig` live in
:mod:`edgeseg.model_contract`; this module holds the network's blocks, its inference form
and the checkpoint format, and re-exports ``ModelConfig`` beside ``UNet``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import EdgesegError, describe
from edgeseg.files import atomic_write, sha256_file
from edgeseg.model_contract import CONTRACTS, ModelConfig, aligned_frame, check_input_shape, make_normalize


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
