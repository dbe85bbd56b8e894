"""A regular install carries what the commands need: the shipped model, its example scan, the targets."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

import edgeseg

REPO = Path(__file__).resolve().parent.parent


def test_wheel_carries_the_shipped_model_example_and_targets(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("edgeseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [
        "model.onnx",
        "model_fp16.onnx",
        "model_int8.onnx",
        "model.pt",
        "parity.json",
        "README.md",
        "example/mni152_t1_axial_slab.nii.gz",
    ]
    for name in shipped:
        assert f"edgeseg/_shipped/{name}" in names, name
        packed = zipfile.ZipFile(wheel).read(f"edgeseg/_shipped/{name}")
        assert packed == (REPO / "export" / name).read_bytes(), name
    assert "edgeseg/_bench/targets.toml" in names
    cli = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "edgeseg" / "cli").glob("*.py"))
    assert "edgeseg/cli/__init__.py" in cli and not set(cli) - names, sorted(set(cli) - names)


def test_source_checkout_finds_the_repository_folders() -> None:
    assert edgeseg.SHIPPED_MODEL == REPO / "export" / "model.onnx"
    assert edgeseg.SHIPPED_TARGETS == REPO / "bench" / "targets.toml"


def test_data_example_rebuilds_the_shipped_example(tmp_path: Path) -> None:
    import nibabel as nib

    from edgeseg.data.demo import build_example

    built = nib.load(build_example(tmp_path))
    shipped = nib.load(REPO / "export" / "example" / built.get_filename().split("/")[-1])
    assert built.shape == shipped.shape == (197, 233, 5)
    assert np.array_equal(np.asarray(built.dataobj), np.asarray(shipped.dataobj))
    assert np.allclose(built.affine, shipped.affine)
    assert np.asarray(built.dataobj).max() > 0  # real anatomy, not an empty slab
