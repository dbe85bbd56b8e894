"""Shared pytest fixtures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest


# --- runtime / infer: a hand-built edgeseg-onnx-v1 model with known answers -------------
def make_threshold_onnx(path: Path, min_size: int = 16, metadata: dict[str, str | None] | None = None) -> Path:
    """Write a contract-conforming ONNX whose labels are ``clip(round(intensity), 0, 2)``.

    A 1x1 Conv gives class c the logit ``c * x + b_c`` with thresholds 0.5 and 1.5, then
    ArgMax -> Cast(uint8) is ``labels``. Feeding class indices as intensities must give
    them back exactly, which checks slicing, orientation and geometry of every reader and
    writer. ``metadata`` overrides ``edgeseg.*`` entries (None drops one).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([0, 1, 2], np.float32).reshape(3, 1, 1, 1), "w")
    bias = numpy_helper.from_array(np.array([0.0, -0.5, -2.0], np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["argmax"], axis=1, keepdims=0),
        helper.make_node("Cast", ["argmax"], ["labels"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "threshold",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"]),
            helper.make_tensor_value_info("labels", TensorProto.UINT8, ["N", "H", "W"]),
        ],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx 1.23 writes IR 14 by default; onnxruntime 1.31 reads <= 13
    meta: dict[str, str | None] = {
        "edgeseg.format": "edgeseg-onnx-v1",
        "edgeseg.version": "test",
        "edgeseg.precision": "fp32",
        "edgeseg.class_names": json.dumps(["background", "gray_matter", "white_matter"]),
        "edgeseg.num_classes": "3",
        "edgeseg.in_channels": "1",
        "edgeseg.min_size": str(min_size),
        "edgeseg.input": json.dumps(
            {"name": "image", "dtype": "float32", "shape": ["N", 1, "H", "W"], "units": "raw intensities"}
        ),
        "edgeseg.normalization": "none (test model: thresholds at 0.5 and 1.5)",
        "edgeseg.train_miou_fg": "1.0",
        "edgeseg.checkpoint_sha256": "0" * 64,
        "edgeseg.opset": "17",
        **(metadata or {}),
    }
    helper.set_model_props(model, {k: v for k, v in meta.items() if v is not None})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


@pytest.fixture(scope="session")
def threshold_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to :func:`make_threshold_onnx`'s model (labels = clip(round(x), 0, 2))."""
    return make_threshold_onnx(tmp_path_factory.mktemp("models") / "threshold.onnx")


@pytest.fixture
def threshold_onnx_factory():  # noqa: ANN201
    """:func:`make_threshold_onnx` itself, for tests that need altered metadata."""
    return make_threshold_onnx


AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def make_dicom_series(
    folder: Path,
    iop=AXIAL_IOP,
    gap: float = 2.0,
    n: int = 4,
    slopes=None,
    positions=None,
    uid: str | None = None,
    instances=None,
) -> list[Path]:
    """Copies of pydicom's real MR_small.dcm as an n-slice series, written shuffled.

    Slice k (in position order along the IOP normal) stores ``pixels // 100 + 100 * k``,
    InstanceNumber ``n - k`` (reversed, so position must win), and RescaleSlope/Intercept
    ``slopes[k]``. ``positions``/``instances``/``uid`` override geometry and identity.
    """
    import copy

    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    pixels = base.pixel_array // 100
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([-20.0, 30.0, 10.0])
    paths = []
    for write_index, k in enumerate(sorted(range(n), key=lambda k: (k * 7) % n)):
        ds = copy.deepcopy(base)
        ds.PixelData = (pixels + k * 100).astype(np.int16).tobytes()
        pos = positions[k] if positions is not None else origin + k * gap * normal
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.InstanceNumber = instances[k] if instances else n - k
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{base.SOPInstanceUID}.{k + 1}"
        ds.RescaleSlope, ds.RescaleIntercept = slopes[k] if slopes else (1.0, 0.0)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]  # an acquisition (MR_small says DERIVED\SECONDARY)
        if uid and k == 0:
            ds.SeriesInstanceUID = uid
        paths.append(folder / f"IM{write_index:03d}.dcm")
        ds.save_as(paths[-1])
    return paths


@pytest.fixture
def dicom_series_factory():  # noqa: ANN201
    """:func:`make_dicom_series` itself."""
    return make_dicom_series


def make_mni_dicom(
    folder: Path,
    z: range = range(86, 92),
    series_number: int = 1,
    description: str = "T1 MNI152",
    uid: str | None = None,
    names: str = "IM{:03d}.dcm",
    modality: str = "MR",
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
) -> list[Path]:
    """Axial slices ``z`` of nilearn's MNI152 T1 (1 mm) as a real single-frame MR series.

    IOP (1,0,0,0,1,0) as scanners write axial slices, so columns run to the patient's left
    and rows to posterior: the slice is the template's RAS plane flipped on both axes.
    Stored as int16 with RescaleSlope 0.01; ``names`` formats each file's write index
    (two series written with disjoint indices interleave in one folder). Returns the files.
    """
    import copy

    import nibabel as nib
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from edgeseg.data.demo import _demo_sources

    img = nib.load(_demo_sources()["t1"])
    t1, affine = np.asarray(img.dataobj, dtype=np.float64), img.affine
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    uid = uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, k in enumerate(z):
        ds = copy.deepcopy(base)
        plane = t1[::-1, ::-1, k].T  # (rows: posterior, cols: left)
        corner = affine @ np.array([t1.shape[0] - 1, t1.shape[1] - 1, k, 1.0])  # RAS of pixel (0, 0)
        ds.Rows, ds.Columns = plane.shape
        ds.PixelData = np.round(plane * 100).astype(np.int16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = 0.01, 0.0
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 1.0
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [float(-corner[0]), float(-corner[1]), float(corner[2])]
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, series_number, description
        ds.StudyInstanceUID, ds.Modality = study_uid, modality
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]  # as a scanner writes an acquisition
        for tag in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue", "LargestImagePixelValue"):
            if tag in ds:
                delattr(ds, tag)
        paths.append(folder / names.format(n))
        ds.save_as(paths[-1])
    return paths


@pytest.fixture(scope="session")
def mni_dicom_factory():  # noqa: ANN201
    """:func:`make_mni_dicom` itself."""
    return make_mni_dicom


# --- end runtime / infer ------------------------------------------------------------------


# --- export / parity: a real exported model from a small, briefly trained U-Net ---------
TINY_WIDTHS = (4, 8, 16)  # 3 levels: min_size 16, ~7k parameters, fast on 2 shared cores
TINY_SLICES = 24  # real demo slices copied into the tiny dataset (8 per plane)
TINY_TEST = 6  # of which the last few of each plane are the held-out test keys


def make_tiny_dataset(root: Path, n: int = TINY_SLICES) -> tuple[Path, list[str]]:
    """Copy ``n`` real MNI152 demo slices (394x394, evenly spread) into ``root``.

    Returns ``(root, test_keys)``: every 4th slice is held out, like a (tiny) slab split.
    """
    import shutil

    from edgeseg.data.dataset import find_pairs
    from edgeseg.data.demo import build_demo

    pairs = find_pairs(build_demo())
    picks = [pairs[round(i * (len(pairs) - 1) / (n - 1))] for i in range(n)]
    for sub in ("MRIs", "Segmentations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for pair in picks:
        shutil.copy(pair.image, root / "MRIs" / pair.image.name)
        shutil.copy(pair.mask, root / "Segmentations" / pair.mask.name)
    return root, [p.key for p in picks[3::4]][:TINY_TEST]


def make_tiny_checkpoint(path: Path, data_root: Path, test_keys: list[str], steps: int = 80) -> Path:
    """Train a (4, 8, 16) U-Net for ``steps`` Adam steps on 160x160 crops; save it.

    A few seconds on one thread; enough for a non-trivial segmentation, so mIoU-based
    checks (int8 ΔmIoU, parity gates) test something real.
    """
    import numpy as np
    import torch

    from edgeseg.data.dataset import load_slices
    from edgeseg.metrics import evaluate_arrays
    from edgeseg.model import UNet, save_checkpoint
    from edgeseg.model_contract import ModelConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    slices = load_slices(data_root)
    train = [i for i, k in enumerate(slices.keys) if k not in set(test_keys)]
    test = [i for i, k in enumerate(slices.keys) if k in set(test_keys)]
    model = UNet(ModelConfig(widths=TINY_WIDTHS))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = rng.choice(train, 4)
        y0, x0 = rng.integers(0, 394 - 160 + 1, 2)  # anywhere: background too, as at test time
        x = torch.from_numpy(np.stack([slices.images[i][y0 : y0 + 160, x0 : x0 + 160] for i in batch]))
        y = torch.from_numpy(np.stack([slices.masks[i][y0 : y0 + 160, x0 : x0 + 160] for i in batch]))
        loss = torch.nn.functional.cross_entropy(model(x[:, None]), y.long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.inference_mode():
        preds = [model(torch.from_numpy(slices.images[i][None, None])).argmax(1)[0].numpy() for i in test]
    metrics = evaluate_arrays(preds, [slices.masks[i] for i in test], 3, ModelConfig().class_names)
    save_checkpoint(
        path,
        model,
        metrics=metrics,
        epoch=1,
        train_config={"steps": steps},
        data={"root": str(data_root), "split": "slabs", "test_keys": test_keys},
    )
    return Path(path)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """``(root, test_keys)``: 24 real 394x394 demo slices in the tutorial layout."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_dataset) -> Path:  # noqa: ANN001
    """A briefly trained (4, 8, 16) U-Net checkpoint whose ``data`` points at tiny_dataset."""
    root, test_keys = tiny_dataset
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "tiny.pt", root, test_keys)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path) -> Path:
    """The fp32 edgeseg-onnx-v1 file written by the real ``export_onnx`` (tiny.onnx beside it)."""
    from edgeseg.export.onnx import export_onnx

    return export_onnx(tiny_checkpoint)


# --- end export / parity ------------------------------------------------------------------


def make_env_without(shim: Path, module: str, error: str = "ImportError") -> dict[str, str]:
    """The environment with a PYTHONPATH package ``module`` whose import raises ``error``.

    For running the real CLI in a subprocess as on an install that lacks an optional extra.
    """
    import os

    (shim / module).mkdir(parents=True, exist_ok=True)
    (shim / module / "__init__.py").write_text(
        f"raise {error}('{module} is not installed (test shim)', name='{module}')\n"
    )
    return {**os.environ, "PYTHONPATH": str(shim), "COLUMNS": "200"}


@pytest.fixture(scope="session")
def env_without():  # noqa: ANN201
    """:func:`make_env_without` itself."""
    return make_env_without


def sha256_files(*paths: Path, relative: bool = False) -> dict[str, str]:
    """SHA-256 of each file in ``paths`` and of every file under each folder in it (FIFOs and
    links to nowhere left out), keyed by path, or with ``relative`` by the path inside its folder."""
    sums = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else [f for f in sorted(root.rglob("*")) if f.is_file()]
        for f in files:
            key = f.relative_to(root) if relative and f != root else f
            sums[str(key)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return sums


@pytest.fixture(scope="session")
def checksums():  # noqa: ANN201
    """:func:`sha256_files` itself: snapshot inputs before a run, compare after."""
    return sha256_files


@pytest.fixture(scope="session")
def gpu_here() -> bool:
    """Whether this machine has an NVIDIA GPU, found without edgeseg or onnxruntime: the
    driver lists a GPU under /proc, or nvidia-smi names one. Tests of provider selection
    take their expectation from here, never from the code under test."""
    import shutil
    import subprocess

    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and "GPU" in proc.stdout


DCIODVFY = Path("/usr/bin/dciodvfy")  # dicom3tools' IOD checker (Debian dicom3tools)


def dciodvfy_ours(path: Path, *sources: Path) -> list[str]:
    """dciodvfy's errors and warnings for ``path`` that none of ``sources`` has itself.

    A SEG or SR copies its source's patient and study attributes, so what dciodvfy says of those
    (a zero Patient's Weight, a retired PN form: ../shared/CLINICAL_NOTES.md) is inherited, not
    ours; the comparison is of whole message lines.
    """
    import subprocess

    def messages(file: Path) -> set[str]:
        proc = subprocess.run([str(DCIODVFY), str(file)], capture_output=True, text=True, timeout=120)
        return {line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("Error", "Warn"))}

    inherited = set().union(*(messages(s) for s in sources)) if sources else set()
    return sorted(messages(path) - inherited)


@pytest.fixture(scope="session")
def dciodvfy():  # noqa: ANN201
    """:func:`dciodvfy_ours` itself; skips where dicom3tools is not installed."""
    if not DCIODVFY.exists():
        pytest.skip("needs dciodvfy: apt-get install dicom3tools")
    return dciodvfy_ours
