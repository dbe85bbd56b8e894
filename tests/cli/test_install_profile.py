"""The install profiles (pyproject.toml): a lean edge install runs inference without what it leaves out,
and every missing extra is one line naming it.

The edge install itself (a fresh venv, its size, the quickstart on it) is built and smoke-tested by
`.ci/run` and `.ci/smoke`; here the real console script runs with the left-out packages made
unimportable, which is how a module that still imports one of them is caught.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from test_cli import run

import edgeseg
from edgeseg.cli import EXTRA_OF
from edgeseg.io.scan_readers import resample

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXAMPLE = Path(edgeseg.SHIPPED_MODEL_DIR) / "example"
ORT_WHEELS = {"onnxruntime", "onnxruntime-gpu"}  # one import name: never both in one environment
# What the edge install (core + `cpu`) leaves out; inference and bench of ONNX files need none of it.
LEFT_OUT = ("torch", "onnx", "scipy", "nilearn", "sklearn", "pandas")
DISTRIBUTION = {"onnxconverter_common": "onnxconverter-common", "dicomweb_client": "dicomweb-client"}  # import -> dist


def requirements(extra: str | None, platform: dict[str, str]) -> set[str]:
    """Distribution names that ``edgeseg[extra]`` (None: the core) installs on ``platform``, extras followed."""
    names = set()
    for line in PYPROJECT["dependencies"] if extra is None else PYPROJECT["optional-dependencies"][extra]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(platform):
            continue
        if req.name == "edgeseg":
            for inner in req.extras:
                names |= requirements(inner, platform)
        else:
            names.add(req.name.lower())
    return names


LINUX = {**default_environment(), "platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux"}
MAC = {**default_environment(), "platform_system": "Darwin", "platform_machine": "arm64", "sys_platform": "darwin"}


@pytest.mark.parametrize("platform", [LINUX, MAC], ids=["linux-x86_64", "macos-arm64"])
def test_exactly_one_onnx_runtime_per_profile(platform: dict[str, str]) -> None:
    assert not requirements(None, platform) & ORT_WHEELS, "the core must leave the choice of runtime to an extra"
    assert requirements("cpu", platform) & ORT_WHEELS == {"onnxruntime"}
    for extra in ("gpu", "dev"):
        assert len(requirements(extra, platform) & ORT_WHEELS) == 1, extra
    want_gpu = platform is LINUX
    assert ("onnxruntime-gpu" in requirements("dev", platform)) == want_gpu  # tests drive the CUDA paths on CPU


def test_the_edge_profile_leaves_out_what_inference_does_not_need() -> None:
    edge = requirements(None, LINUX) | requirements("cpu", LINUX)
    assert not edge & {"torch", "onnx", "scipy", "nilearn", "scikit-learn", "pandas"}, edge


@pytest.mark.parametrize("module", sorted(EXTRA_OF))
def test_each_hint_names_extras_that_install_the_module(module: str) -> None:
    """The one-line hint for a missing module names extras that really bring it (both runtimes for onnxruntime)."""
    named = re.findall(r"edgeseg\[(\w+)\]", EXTRA_OF[module])
    assert named, EXTRA_OF[module]
    wanted = {DISTRIBUTION.get(module, module)} | ({"onnxruntime-gpu"} if module == "onnxruntime" else set())
    for extra in named:
        assert requirements(extra, LINUX) & wanted, f"edgeseg[{extra}] does not install {module}"


@pytest.fixture(scope="module")
def edge_env(tmp_path_factory: pytest.TempPathFactory, env_without) -> dict[str, str]:  # noqa: ANN001
    """The environment of an edge install: every package it leaves out unimportable, a fresh cache."""
    shim = tmp_path_factory.mktemp("edge")
    for module in LEFT_OUT:
        env = env_without(shim, module, "ModuleNotFoundError")
    return {**env, "EDGESEG_HOME": str(shim / "home")}


def test_quickstart_runs_on_the_edge_profile(edge_env: dict[str, str], tmp_path: Path) -> None:
    """The README's main command, its example resampled to the model's spacing, with none of LEFT_OUT.

    ``--provider cpu`` as the `cpu` extra's runtime lists no CUDA provider; this venv's
    onnxruntime-gpu would otherwise probe CUDA, which builds its probe model with `onnx` (the
    `gpu` extra brings it).
    """
    r = run("infer", str(EXAMPLE), "--out", str(tmp_path / "seg"), "--provider", "cpu", env=edge_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "seg" / "mni152_t1_axial_slab_seg.nii.gz").stat().st_size > 0
    (row,) = csv.DictReader((tmp_path / "seg" / "summary.csv").open())
    assert row["status"] == "done" and row["resampled"] == "yes" and row["qc"] == "ok", row


def test_bench_of_onnx_files_runs_on_the_edge_profile(edge_env: dict[str, str], tmp_path: Path) -> None:
    """`edgeseg bench` counts the model's MACs through ONNX Runtime alone (no `onnx`)."""
    json_path = tmp_path / "bench.json"
    args = ("bench", "--target", "edge-x86-fp32", "--runs", "3", "--max-seconds", "2", "--no-miou", "--no-rss")
    r = run(*args, "--json", str(json_path), env=edge_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    (row,) = json.loads(json_path.read_text())["results"]
    assert row["status"] == "ok", row["reason"]  # no held-out slices for a brain box here: no crop column, no failure


@pytest.mark.parametrize(
    "args",
    [
        ["infer", str(EXAMPLE), "--out", "seg"],
        ["bench", "--target", "edge-x86-fp32", "--no-miou", "--no-rss"],
        ["tune", "--runs", "1"],
    ],
    ids=["infer", "bench", "tune"],
)
def test_no_onnx_runtime_is_one_line_naming_both_extras(args: list[str], env_without, tmp_path: Path) -> None:  # noqa: ANN001
    env = {**env_without(tmp_path / "shim", "onnxruntime", "ModuleNotFoundError"), "EDGESEG_HOME": str(tmp_path)}
    if args[0] == "infer":  # the shipped model in a folder of its own: no `edgeseg tune` pick (a
        # model.deploy.json of this checkout naming OpenVINO) lets infer run without onnxruntime
        model = tmp_path / "model" / "model.onnx"
        model.parent.mkdir()
        model.write_bytes(edgeseg.SHIPPED_MODEL.read_bytes())
        args = [*args, "--model", str(model)]
    r = run(*args, env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: `edgeseg {args[0]}` needs onnxruntime"), lines[0]
    assert "pip install 'edgeseg[cpu]'" in lines[0] and "'edgeseg[gpu]'" in lines[0]
    assert not (tmp_path / "seg").exists()  # refused before anything was written


def test_demo_set_without_nilearn_names_the_demo_extra(env_without, tmp_path: Path) -> None:  # noqa: ANN001
    env = {**env_without(tmp_path / "shim", "nilearn", "ModuleNotFoundError"), "EDGESEG_HOME": str(tmp_path)}
    r = run("data", "demo", "--out", str(tmp_path / "demo"), env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'edgeseg[demo]'" in lines[0], r.stderr
    assert not (tmp_path / "demo").exists()


RESAMPLE_CASES = [
    ((1, 7), (3, 2)),
    ((5, 5), (10, 10)),
    ((33, 20), (7, 64)),
    ((197, 233), (394, 466)),
    ((64, 9), (1, 1)),
]


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize(("shape", "size"), RESAMPLE_CASES, ids=[f"{a}->{b}" for a, b in RESAMPLE_CASES])
def test_resample_gives_scipy_zoom_values(shape: tuple[int, int], size: tuple[int, int], order: int) -> None:
    """The numpy resampler the edge install uses against scipy.ndimage.zoom (in `train`/`dev` only)."""
    from scipy import ndimage

    x = np.random.default_rng(sum(shape) + order).normal(100.0, 50.0, (2, *shape)).astype(np.float32)
    want = np.stack([ndimage.zoom(p, np.divide(size, shape), order=order, mode="nearest", grid_mode=True) for p in x])
    got = resample(x, size, order)
    assert got.shape == (2, *size) and got.dtype == np.float32
    if order == 0:
        assert np.array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


def test_inference_modules_do_not_import_left_out_packages() -> None:
    """Import-time check of the whole inference path, faster and more specific than a run."""
    code = (
        "import sys, importlib\n"
        "for m in ('edgeseg.cli', 'edgeseg.infer.run', 'edgeseg.bench.suite', 'edgeseg.infer.segment',"
        " 'edgeseg.io.scans'):\n"
        "    importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {LEFT_OUT!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
