"""Confusion-matrix metrics: hand-worked cases, torchmetrics cross-checks, errors, merging."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.metrics import ConfusionMatrix, evaluate_arrays, format_table

NAMES = ["background", "gray_matter", "white_matter"]


def _tm() -> Any:
    """torchmetrics' classification module and torch, or skip with the reason."""
    torch = pytest.importorskip("torch")
    classification = pytest.importorskip("torchmetrics.classification")
    return torch, classification


def _random_pair(seed: int, shape: tuple[int, ...], pred_high: int, target_high: int) -> tuple[np.ndarray, np.ndarray]:
    """Random integer label maps with labels in [0, pred_high) and [0, target_high)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, pred_high, shape), rng.integers(0, target_high, shape)


# --- hand-worked cases --------------------------------------------------------------------

# (id, pred, target, num_classes, iou, miou_fg, miou_all, pixel_accuracy)
EDGE_CASES = [
    ("perfect", [[0, 1], [2, 1]], [[0, 1], [2, 1]], 3, [1.0, 1.0, 1.0], 1.0, 1.0, 1.0),
    ("all_wrong", [1, 2, 0, 2], [0, 1, 2, 1], 3, [0.0, 0.0, 0.0], 0.0, 0.0, 0.0),
    # class 2 in neither: excluded, so miou_fg is class 1 alone, not (2/3 + 0) / 2.
    ("absent_from_both", [0, 1, 1, 1], [0, 0, 1, 1], 3, [0.5, 2 / 3, None], 2 / 3, 7 / 12, 0.75),
    # class 2 only predicted: IoU 0 and it counts in the means.
    ("only_in_prediction", [0, 2, 1, 1], [0, 0, 1, 1], 3, [0.5, 1.0, 0.0], 0.5, 0.5, 0.75),
    ("single_class", [0, 0, 0], [0, 0, 0], 1, [1.0], None, 1.0, 1.0),
    ("no_foreground", [[0, 0], [0, 0]], [[0, 0], [0, 0]], 3, [1.0, None, None], None, 1.0, 1.0),
    ("empty", np.zeros(0, int), np.zeros(0, int), 3, [None] * 3, None, None, None),
    ("empty_2d", np.zeros((0, 394), int), np.zeros((0, 394), int), 3, [None] * 3, None, None, None),
]


@pytest.mark.parametrize(
    ("pred", "target", "num_classes", "iou", "miou_fg", "miou_all", "accuracy"),
    [case[1:] for case in EDGE_CASES],
    ids=[case[0] for case in EDGE_CASES],
)
def test_edge_cases(
    pred: Any,
    target: Any,
    num_classes: int,
    iou: list[float | None],
    miou_fg: float | None,
    miou_all: float | None,
    accuracy: float | None,
) -> None:
    cm = ConfusionMatrix(num_classes)
    cm.update(np.asarray(pred), np.asarray(target))
    got = cm.iou()
    assert [v is None for v in got] == [v is None for v in iou]
    assert [v for v in got if v is not None] == pytest.approx([v for v in iou if v is not None])
    for value, expected in ((cm.miou_fg(), miou_fg), (cm.miou_all(), miou_all)):
        assert value is None if expected is None else value == pytest.approx(expected)
    got_accuracy = cm.pixel_accuracy()
    assert got_accuracy is None if accuracy is None else got_accuracy == pytest.approx(accuracy)
    assert cm.matrix.sum() == np.asarray(target).size


def test_summary_is_strict_json_with_null_for_absent_classes() -> None:
    cm = ConfusionMatrix(3, NAMES)
    cm.update(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]))
    summary = cm.summary()
    text = json.dumps(summary, allow_nan=False)  # raises on any NaN/inf
    assert json.loads(text) == summary
    assert summary["iou"]["white_matter"] is None and summary["dice"]["white_matter"] is None
    assert summary["iou"]["gray_matter"] == pytest.approx(2 / 3)
    assert summary["pixels"] == 4 and type(summary["pixels"]) is int
    assert set(summary) == {"iou", "dice", "miou_fg", "miou_all", "pixel_accuracy", "pixels"}


def test_dataset_iou_is_not_the_mean_of_per_image_ious() -> None:
    # Slice A: 5 white-matter pixels, all found. Slice B: 1 white-matter pixel, missed.
    # Pooled: TP=5, FN=1 -> 5/6. Per-image mean: (1 + 0) / 2 = 0.5.
    target_a, pred_a = np.array([1] * 5 + [0] * 5), np.array([1] * 5 + [0] * 5)
    target_b, pred_b = np.array([1] + [0] * 9), np.zeros(10, int)
    pooled = ConfusionMatrix(2)
    per_image = []
    for pred, target in ((pred_a, target_a), (pred_b, target_b)):
        pooled.update(pred, target)
        single = ConfusionMatrix(2)
        single.update(pred, target)
        per_image.append(single.iou()[1])
    assert pooled.iou()[1] == pytest.approx(5 / 6)
    assert np.mean(per_image) == pytest.approx(0.5)


def test_uint8_labels_do_not_overflow_the_bin_index() -> None:
    cm = ConfusionMatrix(256)  # 255 * 256 + 255 does not fit in uint8
    cm.update(np.array([255, 0], np.uint8), np.array([255, 1], np.uint8))
    assert cm.matrix[255, 255] == 1 and cm.matrix[1, 0] == 1 and cm.matrix.sum() == 2


# --- dice, merge, evaluate_arrays -----------------------------------------------------------

# (seed, shape, pred_high, target_high, num_classes): some leave a class absent.
RANDOM_CASES = [
    (0, (32, 32), 3, 3, 3),
    (1, (4, 20, 17), 3, 3, 3),
    (2, (64,), 3, 2, 3),  # class 2 only in prediction
    (3, (16, 16), 2, 2, 3),  # class 2 absent from both
    (4, (9, 11), 5, 4, 6),  # class 4 only predicted, class 5 absent
]


@pytest.mark.parametrize(("seed", "shape", "pred_high", "target_high", "num_classes"), RANDOM_CASES)
def test_dice_is_a_function_of_iou(
    seed: int, shape: tuple[int, ...], pred_high: int, target_high: int, num_classes: int
) -> None:
    cm = ConfusionMatrix(num_classes)
    cm.update(*_random_pair(seed, shape, pred_high, target_high))
    for iou, dice in zip(cm.iou(), cm.dice(), strict=True):
        assert (iou is None) == (dice is None)
        if iou is not None:
            assert dice == pytest.approx(2 * iou / (1 + iou))
    assert (cm.iou()[num_classes - 1] is None) == (pred_high < num_classes)


@pytest.mark.parametrize("split", [1, 3, 5])
def test_merge_equals_one_big_update(split: int) -> None:
    pred, target = _random_pair(7, (6, 12, 12), 3, 3)
    whole = ConfusionMatrix(3)
    whole.update(pred, target)
    first, second = ConfusionMatrix(3), ConfusionMatrix(3)
    first.update(pred[:split], target[:split])
    second.update(pred[split:], target[split:])
    first.merge(second)
    assert np.array_equal(first.matrix, whole.matrix)
    assert first.summary() == whole.summary()


def test_evaluate_arrays_pools_all_pairs() -> None:
    pred, target = _random_pair(8, (5, 10, 10), 3, 3)
    cm = ConfusionMatrix(3, NAMES)
    cm.update(pred, target)
    assert evaluate_arrays(iter(pred), iter(target), 3, NAMES) == cm.summary()


def test_matrix_is_a_copy() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([1]), np.array([1]))
    cm.matrix[:] = 0
    assert cm.matrix[1, 1] == 1


def test_format_table_lists_classes_means_and_na() -> None:
    cm = ConfusionMatrix(3, NAMES)
    cm.update(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]))
    lines = format_table(cm.summary()).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.strip("-")}
    assert rows["background"] == ["0.5000", "0.6667"]
    assert rows["gray_matter"] == ["0.6667", "0.8000"]
    assert rows["white_matter"] == ["n/a", "n/a"]
    assert any(line.startswith("mean IoU (foreground)") and "0.6667" in line for line in lines)
    assert lines[-1].split() == ["pixels", "4"]


# --- errors ---------------------------------------------------------------------------------

# (id, pred, target, num_classes, message fragment)
UPDATE_ERRORS = [
    ("shape_mismatch", np.zeros((2, 3), int), np.zeros((3, 2), int), 3, "shape"),
    ("logits_not_labels", np.zeros((1, 3, 4, 4)), np.zeros((1, 4, 4), int), 3, "logits"),
    ("pred_too_high", np.array([0, 3]), np.array([0, 1]), 3, "pred has labels in [0, 3]"),
    ("target_negative", np.array([0, 1]), np.array([-1, 1]), 3, "target has labels in [-1, 1]"),
    ("float_labels", np.array([0.0, 1.0]), np.array([0, 1]), 3, "dtype float64"),
]


@pytest.mark.parametrize(
    ("pred", "target", "num_classes", "message"),
    [case[1:] for case in UPDATE_ERRORS],
    ids=[case[0] for case in UPDATE_ERRORS],
)
def test_update_rejects_bad_input(pred: np.ndarray, target: np.ndarray, num_classes: int, message: str) -> None:
    cm = ConfusionMatrix(num_classes)
    with pytest.raises(EdgesegError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cm.update(pred, target)
    assert cm.matrix.sum() == 0  # a rejected pair leaves no partial counts


@pytest.mark.parametrize(
    ("num_classes", "class_names", "message"),
    [
        (0, None, "num_classes"),
        (2.0, None, "num_classes"),
        (3, ["a", "b"], "one name per class"),
        (2, ["a", "a"], "unique"),
    ],
    ids=["zero", "float", "names_length", "names_duplicate"],
)
def test_constructor_rejects_bad_config(num_classes: Any, class_names: Any, message: str) -> None:
    with pytest.raises(EdgesegError, match=message):
        ConfusionMatrix(num_classes, class_names)


def test_merge_rejects_different_classes() -> None:
    with pytest.raises(EdgesegError, match="same classes"):
        ConfusionMatrix(3).merge(ConfusionMatrix(2))


def test_evaluate_arrays_names_the_bad_pair_and_length_mismatch() -> None:
    good = np.zeros((4, 4), int)
    with pytest.raises(EdgesegError, match="pair 1: pred has labels"):
        evaluate_arrays([good, good + 5], [good, good], 3)
    with pytest.raises(EdgesegError, match="targets ran out after 1"):
        evaluate_arrays([good, good], [good], 3)


def test_module_does_not_import_torch() -> None:
    code = "import sys, edgeseg.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- cross-check against torchmetrics 1.9 ---------------------------------------------------
# MulticlassJaccardIndex rules, read from torchmetrics 1.9 `_jaccard_index_reduce`:
#   average=None  -> a class with union 0 gets `zero_division` (default 0.0); ours gives None.
#   average=macro -> classes with union 0 get weight 0, i.e. excluded: the same rule as ours.
#   ignore_index  -> *drops every pixel whose target is that class* before counting, so
#                    foreground predicted on true background stops being a false positive.
#                    ignore_index=0 is therefore NOT our miou_fg (it reads optimistically).


@pytest.mark.parametrize(("seed", "shape", "pred_high", "target_high", "num_classes"), RANDOM_CASES)
def test_matches_torchmetrics_on_random_maps(
    seed: int, shape: tuple[int, ...], pred_high: int, target_high: int, num_classes: int
) -> None:
    torch, tmc = _tm()
    pred, target = _random_pair(seed, shape, pred_high, target_high)
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)

    theirs = tmc.MulticlassJaccardIndex(num_classes, average=None)(p, t).tolist()
    for ours, their in zip(cm.iou(), theirs, strict=True):
        assert their == pytest.approx(0.0 if ours is None else ours, abs=1e-6)
    assert cm.miou_all() == pytest.approx(
        tmc.MulticlassJaccardIndex(num_classes, average="macro")(p, t).item(), abs=1e-6
    )
    # With zero_division=nan, absent classes become NaN and nanmean excludes them like we do.
    per_class = tmc.MulticlassJaccardIndex(num_classes, average=None, zero_division=float("nan"))
    assert cm.miou_fg() == pytest.approx(per_class(p, t)[1:].nanmean().item(), abs=1e-6)


def test_where_torchmetrics_and_our_rule_differ() -> None:
    torch, tmc = _tm()
    pred, target = np.array([1, 0, 1, 1]), np.array([0, 0, 1, 1])  # one FP for class 1
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    assert cm.iou()[2] is None  # absent from both: undefined, excluded
    assert tmc.MulticlassJaccardIndex(3, average=None)(p, t)[2].item() == 0.0  # tm: 0.0
    assert cm.miou_fg() == pytest.approx(2 / 3)  # the FP on background counts
    ignore_bg = tmc.MulticlassJaccardIndex(3, average="macro", ignore_index=0)(p, t).item()
    assert ignore_bg == pytest.approx(1.0)  # tm dropped the background pixel, and its FP
    # Nothing present at all: tm's macro is 0/0 = NaN, ours is None.
    empty = ConfusionMatrix(3)
    empty.update(np.zeros(4, int), np.zeros(4, int))
    zeros = torch.zeros(4, dtype=torch.long)
    assert empty.miou_fg() is None
    fg_only = tmc.MulticlassJaccardIndex(3, average="macro", ignore_index=0)(zeros, zeros)
    assert torch.isnan(fg_only)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_accumulated_batches_match_stateful_torchmetrics(batch: int) -> None:
    torch, tmc = _tm()
    pred, target = _random_pair(11, (10, 24, 24), 3, 3)
    target[:3] = 0  # early slices with no brain, as at the ends of a volume
    metric = tmc.MulticlassJaccardIndex(3, average=None)
    cm = ConfusionMatrix(3)
    per_batch = []
    for start in range(0, len(pred), batch):
        p, t = pred[start : start + batch], target[start : start + batch]
        cm.update(p, t)
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
        one = ConfusionMatrix(3)
        one.update(p, t)
        per_batch.append(one.miou_fg())
    assert cm.iou() == pytest.approx(metric.compute().tolist(), abs=1e-6)
    # Averaging per-batch scores is a different number from the pooled one.
    assert abs(np.mean(per_batch) - cm.miou_fg()) > 1e-3


def test_ignored_pixels_are_not_scored() -> None:
    """IGNORE (255) truth pixels drop out: the same matrix as without those pixels."""
    from edgeseg.metrics import IGNORE

    pred = np.array([[0, 1, 2, 2], [1, 1, 0, 2]])
    truth = np.array([[0, 1, IGNORE, 2], [IGNORE, 1, 1, 2]])
    keep = truth != IGNORE
    with_ignore, without = ConfusionMatrix(3), ConfusionMatrix(3)
    with_ignore.update(pred, truth)
    without.update(pred[keep], truth[keep])
    assert np.array_equal(with_ignore.matrix, without.matrix) and with_ignore.matrix.sum() == 6


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
@pytest.mark.parametrize("classes", [1, 3, 8])
def test_class_counts_is_bincount_cut_to_the_classes(dtype: type, classes: int) -> None:
    """Labels beyond the classes (IGNORE) are not counted; an absent class counts 0; empty maps count 0."""
    from edgeseg.metrics import IGNORE, class_counts

    rng = np.random.default_rng(classes)
    labels = rng.choice([0, 1, 2, 5, IGNORE], size=(4, 37, 29), p=[0.5, 0.2, 0.1, 0.1, 0.1]).astype(dtype)
    expected = [int((labels == k).sum()) for k in range(classes)]  # by definition, class by class
    assert class_counts(labels, classes).tolist() == expected
    assert class_counts(labels[:0], classes).tolist() == [0] * classes
