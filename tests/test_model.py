"""The model contract: every size, forward/backward, determinism, the dynamic pad, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeseg import EdgesegError
from edgeseg.model import (
    FusedUp,
    UNet,
    count_parameters,
    inference_form,
    load_checkpoint,
    save_checkpoint,
)
from edgeseg.model_contract import ModelConfig

SIZES = [(394, 394), (393, 395), (394, 300), (300, 394), (256, 257), (16, 16)]


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    return UNet()


def test_parameter_count_matches_the_tutorial(model: UNet) -> None:
    assert count_parameters(model) == 483_571


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_forward_backward_any_size(model: UNet, size: tuple[int, int], batch: int) -> None:
    model.train()
    x = torch.randn(batch, 1, *size) * 800 + 1200  # raw scanner-like intensities
    out = model(x)
    assert out.shape == (batch, 3, *size)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("size", SIZES[:3], ids=lambda s: f"{s[0]}x{s[1]}")
def test_eval_is_deterministic(model: UNet, size: tuple[int, int]) -> None:
    model.eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_pad_goes_left_and_top_on_each_own_axis() -> None:
    """A 1-pixel mismatch on H only must pad H only (the tutorial swaps the axes)."""
    torch.manual_seed(0)
    net = UNet(ModelConfig(widths=(4, 8))).eval()
    up_block = net.ups[0]
    seen = {}
    up_block.conv.register_forward_pre_hook(lambda m, args: seen.setdefault("cat", args[0]))
    with torch.no_grad():
        net.segment(torch.randn(1, 1, 33, 40))  # the network itself: forward frames to the grid
    cat = seen["cat"]  # (1, 8, 33, 40): skip (4 ch) + padded up-sampled map (4 ch)
    assert cat.shape == (1, 8, 33, 40)
    upsampled = cat[:, 4:]
    assert torch.count_nonzero(upsampled[:, :, 0, :]) == 0  # the padded top row
    assert torch.count_nonzero(upsampled[:, :, 1:, 0]) > 0  # no pad on the left


@pytest.fixture(scope="module")
def trained_like() -> UNet:
    """A net whose BatchNorm statistics and affine parameters are far from the identity."""
    torch.manual_seed(1)
    net = UNet()
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_inference_form_computes_the_same_function(trained_like: UNet, size: tuple[int, int]) -> None:
    fused = inference_form(trained_like)
    assert all(isinstance(up, FusedUp) for up in fused.ups) and not fused.training
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for up in fused.ups for m in up.modules())
    x = torch.randn(2, 1, *size) * 800 + 1200
    with torch.no_grad():
        ref, out = trained_like(x), fused(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9999


def test_inference_form_leaves_the_model_alone(trained_like: UNet) -> None:
    before = {k: v.clone() for k, v in trained_like.state_dict().items()}
    inference_form(trained_like)
    after = trained_like.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not isinstance(up, FusedUp) for up in trained_like.ups)


def test_normalisation_makes_raw_intensity_scale_irrelevant(model: UNet) -> None:
    # Contract 2 divides by the tissue mean: a global scale cancels; an added offset does not
    # (it would lift the zero background, which contract 1's z-score subtracted away).
    model.eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x * 3000)
    assert torch.allclose(a, b, atol=1e-3)


def test_constant_slice_stays_finite(model: UNet) -> None:
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 1, 32, 32))).all()


@pytest.mark.parametrize("shape", [(1, 1, 15, 64), (1, 1, 64, 8), (1, 2, 64, 64), (64, 64)])
def test_bad_input_shape_is_a_clear_error(model: UNet, shape: tuple[int, ...]) -> None:
    with pytest.raises(EdgesegError, match="expected|too small"):
        model(torch.zeros(shape))


def test_configurable_widths_channels_classes() -> None:
    cfg = ModelConfig(in_channels=2, num_classes=4, widths=(8, 16, 32), class_names=("bg", "a", "b", "c"))
    net = UNet(cfg)
    assert net(torch.randn(2, 2, 37, 45)).shape == (2, 4, 37, 45)


def test_checkpoint_round_trip_weights_only(tmp_path, model: UNet) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, metrics={"miou_fg": 0.5}, epoch=3)
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["metrics"]["miou_fg"] == 0.5 and ckpt["epoch"] == 3
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_checkpoint_with_code_is_refused(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "model_config": {}, "x": Evil()}, path)
    with pytest.raises(EdgesegError, match="evil.pt"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(EdgesegError, match="bad.pt"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------- normalisation contract


@pytest.fixture(scope="module")
def demo_images() -> list:
    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo

    slices = load_slices(build_demo())
    return [slices.images[i] for i in range(0, len(slices), 23)]  # all three planes, top to bottom


def _brain_box(image):  # noqa: ANN001, ANN202
    import numpy as np

    rows, cols = np.flatnonzero((image > 0).any(1)), np.flatnonzero((image > 0).any(0))
    return slice(max(rows[0] - 4, 0), rows[-1] + 5), slice(max(cols[0] - 4, 0), cols[-1] + 5)


@pytest.mark.parametrize("change", ["pad200", "pad_uneven", "crop", "x0.01", "x100"])
def test_tissue_normalisation_ignores_field_of_view_and_scale(demo_images: list, change: str) -> None:
    """The same brain normalises to the same numbers, padded, cropped or rescaled (real MNI slices)."""
    import numpy as np

    from edgeseg.model_contract import TissueNormalize

    norm = TissueNormalize()
    for image in demo_images:
        x = torch.from_numpy(image)[None, None]
        ref = norm(x)
        assert np.isclose(float(ref[x > 0].mean()), 1.0, atol=0.35)  # tissue lands near 1
        if change.startswith("pad"):
            pads = (200, 200, 200, 200) if change == "pad200" else (3, 170, 61, 0)
            out = norm(torch.nn.functional.pad(x, pads))
            out = out[..., pads[2] : out.shape[2] - pads[3], pads[0] : out.shape[3] - pads[1]]
        elif change == "crop":
            box = _brain_box(image)
            out, ref = norm(x[..., box[0], box[1]]), ref[..., box[0], box[1]]
        else:
            out = norm(x * float(change[1:]))
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5), (change, float((out - ref).abs().max()))


def test_tissue_normalisation_of_a_blank_slice_is_zero() -> None:
    from edgeseg.model_contract import TissueNormalize

    out = TissueNormalize()(torch.zeros(2, 1, 20, 24))
    assert torch.equal(out, torch.zeros_like(out))


def test_new_checkpoints_record_the_contract(tmp_path) -> None:  # noqa: ANN001
    from edgeseg.model_contract import NORM_CONTRACT, TissueNormalize

    path = tmp_path / "m.pt"
    save_checkpoint(path, UNet(ModelConfig(widths=(4, 8))))
    model, ckpt = load_checkpoint(path)
    assert ckpt["normalization_contract"] == NORM_CONTRACT == 3
    assert isinstance(model.normalize, TissueNormalize) and model.config.aligned


def test_an_old_checkpoint_runs_with_its_own_zscore(tmp_path) -> None:  # noqa: ANN001
    """A checkpoint from before the contract existed is contract 1 and keeps its z-score."""
    from edgeseg.model_contract import Normalize

    torch.manual_seed(0)
    old = UNet(ModelConfig(widths=(4, 8), normalization="zscore")).eval()
    path = tmp_path / "old.pt"
    save_checkpoint(path, old)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["normalization_contract"], ckpt["model_config"]["normalization"]  # as written before
    torch.save(ckpt, path)
    model, _ = load_checkpoint(path)
    assert isinstance(model.normalize, Normalize)
    x = torch.rand(1, 1, 40, 40) * 500
    with torch.no_grad():
        assert torch.equal(model(x), old(x))


def test_an_unknown_contract_is_refused_in_one_line(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "future.pt"
    save_checkpoint(path, UNet(ModelConfig(widths=(4, 8))))
    ckpt = torch.load(path, weights_only=True)
    ckpt["normalization_contract"] = 4
    torch.save(ckpt, path)
    with pytest.raises(EdgesegError, match="normalisation contract 4") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_a_contract_2_checkpoint_runs_unaligned_as_trained(tmp_path) -> None:  # noqa: ANN001
    """Contract 2 (tissue mean, no framing) is rebuilt as it was: forward is its plain network."""
    torch.manual_seed(0)
    path = tmp_path / "c2.pt"
    save_checkpoint(path, UNet(ModelConfig(widths=(4, 8, 16))))
    ckpt = torch.load(path, weights_only=True)
    ckpt["normalization_contract"] = 2
    del ckpt["model_config"]["aligned"]  # as written before contract 3
    torch.save(ckpt, path)
    model, _ = load_checkpoint(path)
    assert not model.config.aligned and model.config.contract == 2
    x = torch.rand(1, 1, 37, 45) * 100
    with torch.no_grad():
        assert torch.equal(model(x), model.segment(model.normalize(x)))


def _zero_background(batch: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Random 'brains' (positive blobs) at random places on exact zeros: ``(batch, 1, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, 1, *size)
    for n in range(batch):
        h, w = (int(torch.randint(10, s // 2, (1,), generator=g)) for s in size)
        top, left = (int(torch.randint(0, s - e, (1,), generator=g)) for s, e in zip(size, (h, w), strict=True))
        x[n, 0, top : top + h, left : left + w] = torch.rand(h, w, generator=g) * 400 + 50
    return x


@pytest.mark.parametrize("pad", [(1, 0, 0, 0), (0, 3, 5, 0), (7, 2, 13, 9), (31, 17, 0, 64)])  # l, r, t, b
def test_aligned_labels_do_not_move_with_zero_padding(trained_like: UNet, pad: tuple[int, ...]) -> None:
    """Any zero pad (shifts that are no multiple of 8 included) gives the same logits on the slice."""
    x = _zero_background(3, (53, 70), seed=sum(pad))
    left, right, top, bottom = pad
    with torch.no_grad():
        ref = trained_like(x)
        out = trained_like(F.pad(x, pad))[:, :, top : top + 53, left : left + 70]
        plain = trained_like.segment(trained_like.normalize(F.pad(x, pad)))[:, :, top : top + 53, left : left + 70]
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    if pad[0] % 8 or pad[2] % 8:  # the unaligned network itself moves with such shifts: the test can fail
        assert not torch.allclose(plain, ref, atol=1e-4)


def test_aligned_logits_of_an_image_do_not_depend_on_its_batch(trained_like: UNet) -> None:
    x = _zero_background(4, (48, 41), seed=5)
    with torch.no_grad():
        together = trained_like(x)
        alone = torch.cat([trained_like(x[n : n + 1]) for n in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_both_frame_forms_are_the_same_frame() -> None:
    """aligned_frame's ``floor`` (ONNX) and ``remainder`` (ExecuTorch) forms give the same logits at every size."""
    import torch

    from edgeseg.model import UNet

    torch.manual_seed(0)
    net = UNet().eval()
    for h, w in [(16, 16), (17, 23), (64, 71), (129, 96), (394, 394)]:
        x = torch.rand(2, 1, h, w) * 900
        x[1, :, : h // 3] = 0  # a second image with another shift in the same batch
        with torch.no_grad():
            net.frame_form = "floor"
            a = net(x)
            net.frame_form = "remainder"
            b = net(x)
        assert torch.equal(a, b), (h, w)
