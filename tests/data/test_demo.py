"""Tests for edgeseg/data/demo.py: the real-MRI demo set built from nilearn's MNI152 template."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nilearn
import numpy as np
import pytest

from edgeseg.data.dataset import find_pairs, load_slices
from edgeseg.data.demo import DEMO_SOURCES, DemoConfig, build_demo
from edgeseg.errors import EdgesegError


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory):
    """The real demo set (~340 MB), built once for this module and deleted afterwards."""
    parent = tmp_path_factory.mktemp("demo")
    root = build_demo(parent / "mni152")
    yield root
    shutil.rmtree(parent, ignore_errors=True)


def test_demo_set_is_real_mri_in_tutorial_layout(demo_root: Path) -> None:
    root = demo_root
    record = json.loads((root / "provenance.json").read_text())
    counts = record["counts"]
    assert set(counts) == {"axial", "coronal", "sagittal"} and min(counts.values()) > 50
    assert 300 <= sum(counts.values()) == record["total"] <= 600
    slices = load_slices(root)
    assert len(slices) == record["total"]
    planes = [p.image.name.split("_")[0] for p in find_pairs(root)]
    assert planes == sorted(planes)  # plane, then position
    for k in range(0, len(slices), 37):
        assert slices.images[k].shape == (394, 394) and slices.images[k].dtype == np.float32
        assert set(np.unique(slices.masks[k])) <= {0, 1, 2}
        assert (slices.masks[k] > 0).mean() >= 0.02
    data = Path(nilearn.__file__).parent / "datasets" / "data"
    for name, entry in record["sources"].items():
        digest = hashlib.sha256((data / DEMO_SOURCES[name]).read_bytes()).hexdigest()
        assert digest == entry["sha256"]
    assert "Louis Collins" in record["license"]["notice"]
    stamp = (root / "provenance.json").stat().st_mtime_ns
    assert build_demo(root) == root
    assert (root / "provenance.json").stat().st_mtime_ns == stamp  # cache hit: nothing rewritten


def test_demo_rebuilds_on_change_and_never_clobbers(tmp_path: Path) -> None:
    out = tmp_path / "sparse"
    build_demo(out, config=DemoConfig(step_mm=30))
    first = json.loads((out / "provenance.json").read_text())["total"]
    build_demo(out, config=DemoConfig(step_mm=20))  # other parameters: rebuilt in place
    record = json.loads((out / "provenance.json").read_text())
    assert record["parameters"]["step_mm"] == 20 and record["total"] > first
    assert len(list((out / "MRIs").glob("*.npy"))) == record["total"]
    stamp = (out / "provenance.json").stat().st_mtime_ns
    build_demo(out, force=True, config=DemoConfig(step_mm=20))
    assert (out / "provenance.json").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse"]  # no temp folders left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "provenance.json").write_text('{"format": "someone else"}')
    (tmp_path / "file").write_text("keep me")
    for target in ("mine", "file"):
        with pytest.raises(EdgesegError, match=f"{target}: exists and is not an edgeseg demo set"):
            build_demo(tmp_path / target, force=True)
    assert (tmp_path / "mine" / "provenance.json").read_text() == '{"format": "someone else"}'
    assert (tmp_path / "file").read_text() == "keep me"


def test_cli_data_demo(demo_root: Path, tmp_path: Path) -> None:
    root = demo_root
    cli = [sys.executable, "-m", "edgeseg.cli", "data", "demo"]
    done = subprocess.run([*cli, "--out", str(root)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counts = json.loads((root / "provenance.json").read_text())["counts"]
    assert str(root) in done.stdout and f"coronal {counts['coronal']}" in done.stdout
    (tmp_path / "notes.txt").write_text("not a dataset")
    bad = subprocess.run([*cli, "--out", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert str(tmp_path) in bad.stderr and "not an edgeseg demo set" in bad.stderr
