"""Metamorphic tests of the shipped model: no ground truth needed, nothing to tune away.

The same real MNI slice, padded with 0-200 px of zeros or cropped to its brain's bounding box
plus 4 px, must get the same labels on its brain pixels (>= 99 % on average, >= 97 % on the
worst slice); multiplied by 0.01 or 100 it must get the same labels (>= 99.5 %). Run on the box
``edgeseg infer`` crops to (edgeseg.infer.crop) and pasted back, it must get the uncropped labels on
>= 99.9 % of brain pixels, on demo slices and on oblique held-out planes cut to their tissue.
In PyTorch (export/model.pt) and in every shipped ONNX file (fp32, fp16, int8).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edgeseg import SHIPPED_MODEL_DIR

MODELS = ["model.pt", "model.onnx", "model_fp16.onnx", "model_int8.onnx"]
PADS = [(0, 0, 0, 0), (17, 3, 0, 41), (64, 64, 64, 64), (200, 0, 120, 200), (200, 200, 200, 200)]  # t, b, l, r
SCALES = [0.01, 100.0]
SLICES = 8  # real demo slices, evenly over axial, coronal and sagittal
MEAN_FLOOR, WORST_FLOOR, SCALE_FLOOR = 0.99, 0.97, 0.995  # issue 10, per variant
CROP_FLOOR = 0.999  # issue 24: brain pixels labelled as uncropped, pooled over the slices
OBLIQUE_SLICES = 8  # held-out slices whose tilted planes the crop case also runs on

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all((SHIPPED_MODEL_DIR / m).is_file() for m in MODELS),
        reason="the shipped model files in export/ are not built",
    ),
]


@pytest.fixture(scope="module")
def demo() -> list[tuple[np.ndarray, np.ndarray]]:
    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo

    slices = load_slices(build_demo())
    picks = [round(k * (len(slices) - 1) / (SLICES - 1)) for k in range(SLICES)]
    return [(slices.images[i], slices.masks[i] > 0) for i in picks]


def _predictor(name: str) -> Callable[[np.ndarray], np.ndarray]:
    from edgeseg.train.robustness import checkpoint_predictor, onnx_predictor

    path = SHIPPED_MODEL_DIR / name
    return (checkpoint_predictor if path.suffix == ".pt" else onnx_predictor)(path)[0]


@pytest.fixture(scope="module", params=MODELS)
def predict(request: pytest.FixtureRequest) -> Callable[[np.ndarray], np.ndarray]:
    return _predictor(request.param)


def _agreement(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float((a[where] == b[where]).mean())


def test_padding_and_cropping_keep_the_labels(predict, demo, record_property) -> None:  # noqa: ANN001
    per_slice = []
    for image, brain in demo:
        ref = predict(image)
        scores = []
        for t, b, left, r in PADS:
            out = predict(np.pad(image, ((t, b), (left, r))))
            scores.append(_agreement(out[t : out.shape[0] - b, left : out.shape[1] - r], ref, brain))
        rows, cols = np.flatnonzero((image > 0).any(1)), np.flatnonzero((image > 0).any(0))
        box = slice(max(rows[0] - 4, 0), rows[-1] + 5), slice(max(cols[0] - 4, 0), cols[-1] + 5)
        scores.append(_agreement(predict(image[box]), ref[box], brain[box]))
        per_slice.append(scores)
    scores = np.array(per_slice)  # (slices, variants)
    means, worst = scores.mean(0), scores.min(0)
    record_property("mean_per_variant", np.round(means, 5).tolist())  # pytest --junitxml shows them
    record_property("worst_per_variant", np.round(worst, 5).tolist())
    # Contract 3 frames each slice on the pooling grid; contract 2 missed these floors on the
    # uneven pad and the crop (98.0/98.2 % mean, 96.8/97.1 % worst).
    assert means.min() >= MEAN_FLOOR and worst.min() >= WORST_FLOOR, (
        f"per variant (pads {PADS}, then the crop): mean {np.round(means, 4)}, worst {np.round(worst, 4)};"
        f" floors {MEAN_FLOOR} mean, {WORST_FLOOR} worst"
    )


@pytest.mark.parametrize("factor", SCALES)
def test_a_global_intensity_scale_keeps_the_labels(predict, demo, factor: float, record_property) -> None:  # noqa: ANN001
    agree, brain_agree = [], []
    for image, brain in demo:
        out, ref = predict((image * factor).astype(np.float32)), predict(image)
        agree.append(_agreement(out, ref, np.ones_like(brain)))
        brain_agree.append(_agreement(out, ref, brain))
    record_property("worst_agreement", round(min(agree), 5))
    assert min(agree) >= SCALE_FLOOR and np.mean(brain_agree) >= SCALE_FLOOR, (agree, brain_agree)


@pytest.fixture(scope="module")
def held_out() -> dict[str, list[np.ndarray]]:
    """Held-out planes: oblique ones through the held-out balls (whole 394x394 planes), and the
    straight held-out slices cut to their tissue plus 4 px (robustness.tight_crop)."""
    from edgeseg.train.robustness import held_out_planes, tight_crop

    planes = held_out_planes(count=OBLIQUE_SLICES)
    return {
        "oblique": [image for rows in planes.oblique.values() for image, _ in rows],
        "cropped": [tight_crop(image, mask)[0] for image, mask in zip(planes.images, planes.masks, strict=True)],
    }


def _crop_scores(predict, images: list[np.ndarray], brains: list[np.ndarray] | None = None) -> tuple[float, float, int]:  # noqa: ANN001
    """(agreement, worst slice, slices cropped) of cropped-and-pasted against uncropped labels on
    brain pixels (``brains``; None: the pixels either run labels brain). A slice the crop leaves
    whole runs exactly as before and is not counted."""
    from edgeseg.infer.crop import GRIDS, plan_crop

    same = total = cropped = 0
    worst = 1.0
    for k, image in enumerate(images):
        image = np.asarray(image, np.float32)
        crop = plan_crop([image[None]], GRIDS[3], 16)
        if crop is None:
            continue
        ref, out = predict(image), np.zeros(image.shape, np.uint8)
        out[crop.top : crop.bottom, crop.left : crop.right] = predict(
            image[crop.top : crop.bottom, crop.left : crop.right]
        )
        where = brains[k] if brains is not None else (ref > 0) | (out > 0)
        agree, n = int((out[where] == ref[where]).sum()), int(where.sum())
        same, total, cropped = same + agree, total + n, cropped + 1
        worst = min(worst, agree / max(n, 1))
    return (same / total if total else 1.0), worst, cropped


def test_the_brain_box_keeps_the_labels(predict, demo, held_out, record_property) -> None:  # noqa: ANN001
    """Issue 24: what `edgeseg infer` runs (the brain's box, pasted back) against the whole slice."""
    scores = {
        "demo": _crop_scores(predict, [i for i, _ in demo], [b for _, b in demo]),
        **{name: _crop_scores(predict, images) for name, images in held_out.items()},
    }
    for name, (rate, worst, cropped) in scores.items():
        record_property(name, f"{rate:.6f} (worst slice {worst:.6f}, {cropped} slices cropped)")
    assert scores["demo"][2] >= len(demo) // 2 and scores["oblique"][2] >= len(held_out["oblique"]) // 2, scores
    assert all(rate >= CROP_FLOOR for rate, _, _ in scores.values()), (
        f"brain pixels labelled as uncropped (agreement, worst slice, slices cropped): {scores}; floor {CROP_FLOOR}"
    )
