"""Tests for edgeseg/data/dataset.py and edgeseg/data/split.py: tutorial layout, validation, splits, held-out data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeseg.data.dataset import find_pairs, load_slices, one_hot
from edgeseg.data.split import SLAB_GAP, checkpoint_split, split_indices
from edgeseg.errors import EdgesegError

SIZE = 32


def write_pair(root: Path, key: str, image: np.ndarray, mask: np.ndarray, name: str = "brain") -> None:
    """Write one image/mask pair in the tutorial layout."""
    (root / "MRIs").mkdir(parents=True, exist_ok=True)
    (root / "Segmentations").mkdir(parents=True, exist_ok=True)
    np.save(root / "MRIs" / f"{name}_{key}.npy", image)
    np.save(root / "Segmentations" / f"segm_{key}.npy", mask)


def tiny_slice(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 32x32 'brain': a disc of labels 1 (rim) and 2 (core) with matching intensities."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - 15.5 - seed % 3, xx - 14.5)
    mask = np.where(r < 6, 2, np.where(r < 11, 1, 0)).astype(np.uint8)
    image = (mask * 100.0 + np.random.default_rng(seed).normal(0, 5, mask.shape)).astype(np.float64)
    return image, mask


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Six valid 32x32 slices with keys 0..5."""
    for k in range(6):
        write_pair(tmp_path, str(k), *tiny_slice(k))
    return tmp_path


# ----------------------------------------------------------------------------- loading


def test_pairs_sorted_numerically_then_by_name(tmp_path: Path) -> None:
    image, mask = tiny_slice(0)
    for key in ["10", "2", "b", "1", "a", "007"]:
        write_pair(tmp_path, key, image, mask, name="scan_t1")  # '_' inside the name is fine
    pairs = find_pairs(tmp_path)
    assert [p.key for p in pairs] == ["1", "2", "007", "10", "a", "b"]
    assert pairs[0].image.name == "scan_t1_1.npy" and pairs[0].mask.name == "segm_1.npy"


def test_load_converts_dtypes(dataset: Path) -> None:
    np.save(dataset / "Segmentations" / "segm_3.npy", tiny_slice(3)[1].astype(np.float64))
    slices = load_slices(dataset)
    assert len(slices) == 6 and slices.keys == [str(k) for k in range(6)]
    assert all(im.dtype == np.float32 and im.shape == (SIZE, SIZE) for im in slices.images)
    assert all(m.dtype == np.uint8 for m in slices.masks)
    assert set(np.unique(slices.masks[3])) == {0, 1, 2}


def test_nested_tutorial_download_is_found(tmp_path: Path) -> None:
    write_pair(tmp_path / "MRIs", "0", *tiny_slice(0))
    assert (tmp_path / "MRIs" / "MRIs").is_dir()
    slices = load_slices(tmp_path)
    assert slices.root == tmp_path / "MRIs" and slices.keys == ["0"]


def _save(path: Path, arr: np.ndarray) -> None:
    np.save(path, arr)


BAD_CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (break the dataset, file named in the message, what the message says)
    "no MRIs folder": (lambda r: shutil.rmtree(r / "MRIs"), "MRIs", "folder missing"),
    "no Segmentations folder": (lambda r: shutil.rmtree(r / "Segmentations"), "Segmentations", "folder missing"),
    "empty dataset": (lambda r: [p.unlink() for p in r.rglob("*.npy")], "MRIs", "no .npy images"),
    "images without masks": (
        lambda r: (
            [(r / "Segmentations" / f"segm_{k}.npy").unlink() for k in range(6)]
            + [_save(r / "MRIs" / f"brain_{k}.npy", tiny_slice(k)[0]) for k in range(6, 14)]
        ),
        "brain_0.npy",
        "and 4 more",
    ),
    "mask without image": (lambda r: (r / "MRIs" / "brain_4.npy").unlink(), "segm_4.npy", "without an image"),
    "duplicate slice number": (lambda r: _save(r / "MRIs" / "other_2.npy", tiny_slice(2)[0]), "other_2.npy", "unique"),
    "shape mismatch": (
        lambda r: _save(r / "Segmentations" / "segm_1.npy", np.zeros((SIZE, SIZE + 1), np.uint8)),
        "segm_1.npy",
        "differs",
    ),
    "3-D image": (
        lambda r: _save(r / "MRIs" / "brain_2.npy", np.zeros((1, SIZE, SIZE))),
        "brain_2.npy",
        "expected a 2-D",
    ),
    "labels out of range": (
        lambda r: _save(
            r / "Segmentations" / "segm_3.npy", np.pad(np.array([[3, 7]], np.int32), ((0, SIZE - 1), (0, SIZE - 2)))
        ),
        "segm_3.npy",
        "labels [3, 7] outside 0..2",
    ),
    "negative labels": (
        lambda r: _save(r / "Segmentations" / "segm_3.npy", -np.ones((SIZE, SIZE), np.int8)),
        "segm_3.npy",
        "labels [-1]",
    ),
    "non-integral float mask": (
        lambda r: _save(r / "Segmentations" / "segm_0.npy", np.full((SIZE, SIZE), 0.5)),
        "segm_0.npy",
        "non-integral",
    ),
    "NaN in image": (
        lambda r: _save(r / "MRIs" / "brain_5.npy", np.where(tiny_slice(5)[1] == 2, np.nan, 1.0)),
        "brain_5.npy",
        "NaN/Inf",
    ),
    "Inf in image": (
        lambda r: _save(r / "MRIs" / "brain_5.npy", np.full((SIZE, SIZE), np.inf, np.float32)),
        "brain_5.npy",
        "NaN/Inf",
    ),
    "truncated file": (
        lambda r: (r / "MRIs" / "brain_1.npy").write_bytes((r / "MRIs" / "brain_1.npy").read_bytes()[:300]),
        "brain_1.npy",
        "truncated",
    ),
    "not an npy file": (
        lambda r: (r / "Segmentations" / "segm_1.npy").write_text("hello"),
        "segm_1.npy",
        "cannot read",
    ),
    "pickled objects": (
        lambda r: np.save(r / "MRIs" / "brain_0.npy", np.array([{"a": 1}]), allow_pickle=True),
        "brain_0.npy",
        "never loaded",
    ),
    "text image": (
        lambda r: _save(r / "MRIs" / "brain_0.npy", np.full((SIZE, SIZE), "x")),
        "brain_0.npy",
        "not a real number type",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_dataset_names_the_file(dataset: Path, case: str) -> None:
    breaker, culprit, says = BAD_CASES[case]
    breaker(dataset)
    with pytest.raises(EdgesegError) as info:
        load_slices(dataset)
    message = str(info.value)
    assert culprit in message and says in message, message


def test_missing_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="nowhere.*not a folder.*MRIs"):
        load_slices(tmp_path / "nowhere")


@pytest.mark.parametrize("num_classes", [1, 300])
def test_num_classes_checked(dataset: Path, num_classes: int) -> None:
    with pytest.raises(EdgesegError, match="num_classes"):
        load_slices(dataset, num_classes)


def test_one_hot_numpy_and_torch() -> None:
    mask = np.array([[[0, 1], [2, 1]]], dtype=np.uint8)  # (1, 2, 2)
    expected = np.stack([mask[0] == c for c in range(3)]).astype(np.float32)[None]
    out = one_hot(mask, 3)
    assert out.dtype == np.float32 and out.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(out, expected)
    out_t = one_hot(torch.from_numpy(mask.astype(np.int64)), 3)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), expected)
    with pytest.raises(EdgesegError, match="0..1"):
        one_hot(mask, 2)


def test_import_does_not_load_torch() -> None:
    code = "import sys, edgeseg.data.dataset; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    "n, fraction, seed", [(457, 0.2, 0), (457, 0.2, 3), (120, 0.1, 1), (60, 0.25, 0), (1000, 0.3, 7)]
)
def test_slab_split_has_no_neighbour_leakage(n: int, fraction: float, seed: int) -> None:
    train, test = split_indices(n, "slabs", fraction, seed)
    assert (train, test) == split_indices(n, "slabs", fraction, seed)
    assert len(test) == round(fraction * n) and not set(train) & set(test)
    assert min(abs(a - b) for a in train for b in test) > SLAB_GAP
    assert len(train) >= n - len(test) - 2 * SLAB_GAP * 5
    runs = 1 + int(np.count_nonzero(np.diff(test) > 1))
    assert runs <= 5 and (runs == 1 or len(test) / runs >= 10)  # long slabs, not scattered slices


def test_slab_split_depends_on_seed() -> None:
    assert split_indices(457, seed=0)[1] != split_indices(457, seed=1)[1]


def test_tutorial_split_and_errors() -> None:
    train, test = split_indices(150, "tutorial")
    assert train == list(range(50)) and test == list(range(50, 150))
    with pytest.raises(EdgesegError, match="only 100.*slabs"):
        split_indices(100, "tutorial")
    with pytest.raises(EdgesegError, match="'random' unknown"):
        split_indices(100, "random")
    with pytest.raises(EdgesegError, match="too few"):
        split_indices(8, "slabs", 0.5)


# ----------------------------------------------------------------------------- held-out data


def test_checkpoint_split_uses_the_recorded_keys_or_the_split_rule(
    tiny_checkpoint: Path,
    tiny_dataset,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    root, test_keys = tiny_dataset
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    held = checkpoint_split(ckpt)
    assert [held.slices.keys[i] for i in held.test] == sorted(test_keys)
    assert set(held.train).isdisjoint(held.test) and len(held.train) + len(held.test) == len(held.slices)
    assert "the model's" in held.source
    # other data (here: the same folder passed explicitly) gets the split rule, not the keys
    other = checkpoint_split(ckpt, data=root)
    assert other.test == split_indices(len(other.slices), "slabs")[1] and "slabs split" in other.source
    # an explicit folder that does not exist is an error, never a silent fall-back to the demo set
    with pytest.raises(EdgesegError):
        checkpoint_split(ckpt, data=tmp_path / "missing")
