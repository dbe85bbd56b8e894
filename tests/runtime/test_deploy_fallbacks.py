"""Deploy files that ``edgeseg infer`` cannot follow, and where ``edgeseg tune`` writes them (issue 21, case 11).

Everything runs through the installed console script on real files: a deploy file written by hand
beside a copy of a model, a backend made unimportable the way a missing package is (``sys.modules``
holds None for it, so ``find_spec`` and ``import`` both say it is absent), and a copy of the package
laid out as a wheel installs it (``edgeseg/_shipped/model.onnx``) for the packaged model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from edgeseg.files import sha256_file
from edgeseg.machine import fingerprint
from edgeseg.runtime.deploy import BACKENDS

EDGESEG = str(Path(sys.executable).parent / "edgeseg")  # the installed console script
REPO = Path(__file__).resolve().parents[2]
EXTRAS = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
FALLBACK = "backend: ONNX Runtime fp32 ("


def edgeseg(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "EDGESEG_DEBUG": "", "COLUMNS": "250"}
    return subprocess.run([EDGESEG, *map(str, args)], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def env_lacking(shim: Path, *modules: str) -> dict[str, str]:
    """The environment of an install without ``modules``: a sitecustomize marks them absent."""
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({modules!r}))\n")
    return {**os.environ, "PYTHONPATH": str(shim)}


def write_deploy(model: Path, pick: dict[str, object]) -> Path:
    """A deploy file beside ``model``, tuned on this machine, whose pick is ``pick`` (a candidate's fields)."""
    file = model.parent / str(pick["file"])
    candidate = {
        "threads": 1,
        "status": "ok",
        "label": f"{pick['backend']} {pick['precision']} (hand-written)",
        "sha256": sha256_file(file) if file.is_file() else "",
        "p50_ms": 1.0,
        **pick,
    }
    record = {
        "format": "edgeseg-deploy-v1",
        "model": model.name,
        "machine": fingerprint().to_json(),
        "target": "edge-x86",
        "rss_budget_mb": None,
        "pick": 0,
        "candidates": [candidate],
    }
    path = model.with_name(f"{model.stem}.deploy.json")
    path.write_text(json.dumps(record))
    return path


def fallback_line(proc: subprocess.CompletedProcess) -> str:
    """The one backend line of an infer run, checked to be a plain, balanced sentence."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("backend: ")]
    assert len(lines) == 1, proc.stdout
    line = lines[0]
    assert line.startswith(FALLBACK) and line.count("(") == line.count(")"), line
    for extra in re.findall(r"edgeseg\[(\w+)\]", line):
        assert extra in EXTRAS, f"{line!r} names edgeseg[{extra}], not an extra of pyproject.toml"
    return line


@pytest.fixture
def folder(tmp_path: Path, threshold_onnx: Path) -> Path:
    """``m/m.onnx`` (labels = round(x)) and a scan whose answer is known, in ``tmp_path``."""
    models = tmp_path / "m"
    models.mkdir()
    shutil.copy(threshold_onnx, models / "m.onnx")
    np.save(tmp_path / "scan.npy", np.tile(np.array([0, 1, 2, 2], np.float32), (32, 8)))
    return tmp_path


def infer(folder: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return edgeseg("infer", folder / "scan.npy", "--model", folder / "m" / "m.onnx", "--out", folder / "out", env=env)


def assert_segmented(folder: Path) -> None:
    """The run went on with ONNX Runtime fp32 and wrote the right labels."""
    labels = np.load(folder / "out" / "scan_seg.npy")
    assert np.array_equal(labels, np.load(folder / "scan.npy").astype(np.uint8))


@pytest.mark.parametrize(
    "pick,files,reason",
    [
        pytest.param(
            {"backend": "tensorrt", "precision": "fp16", "file": "m.engine"},
            {"m.engine": b"engine bytes"},
            "m.deploy.json picks the backend 'tensorrt', which `edgeseg infer` does not run: it runs ort and openvino",
            id="tensorrt",
        ),
        pytest.param(
            {"backend": "coreml", "precision": "fp32", "file": "m.onnx"},
            {},
            "m.deploy.json picks the backend 'coreml', which `edgeseg infer` does not run",
            id="unknown-backend",
        ),
        pytest.param(
            {"backend": "torch", "precision": "fp32", "file": "m.pt"},
            {"m.pt": b"a checkpoint"},
            "m.deploy.json picks the backend 'torch', which `edgeseg infer` does not run",
            id="torch-checkpoint",
        ),
        pytest.param(
            {"backend": "ort", "precision": "fp32", "file": "m.pt"},
            {"m.pt": b"a checkpoint"},
            "m.deploy.json picks m.pt, which is not an ONNX file beside m.onnx",
            id="ort-on-a-checkpoint",
        ),
        pytest.param(
            {"backend": "ort", "precision": "int8", "file": "m_int8.onnx"},
            {"m_int8.onnx": b"not a protobuf at all"},
            "m.deploy.json picks m_int8.onnx, which is not an edgeseg ONNX model",
            id="junk-onnx-with-its-hash",
        ),
        pytest.param(
            {"backend": "ort", "precision": "bf16", "file": "m.onnx"},
            {},
            "m.deploy.json picks ONNX Runtime bf16, a precision it does not run: it runs fp32, fp16, int8",
            id="unknown-precision",
        ),
        pytest.param(
            {"backend": "ort", "precision": "fp32", "file": "../m.onnx"},
            {},
            "m.deploy.json picks ../m.onnx, which is not an ONNX file beside m.onnx",
            id="a-path-outside",
        ),
    ],
)
def test_a_pick_infer_cannot_run_falls_back_in_one_line(
    folder: Path, pick: dict[str, str], files: dict[str, bytes], reason: str
) -> None:
    for name, data in files.items():
        (folder / "m" / name).write_bytes(data)
    write_deploy(folder / "m" / "m.onnx", pick)
    line = fallback_line(infer(folder))
    assert reason in line, line
    assert line.endswith("to pick the fastest gated backend for this machine"), line
    assert "edgeseg[" not in line  # nothing to install would help
    assert_segmented(folder)


def test_a_pick_whose_backend_is_not_installed_names_the_real_extra(folder: Path, tmp_path: Path) -> None:
    write_deploy(folder / "m" / "m.onnx", {"backend": "openvino", "precision": "fp32", "file": "m.onnx"})
    line = fallback_line(infer(folder, env_lacking(tmp_path / "shim", "openvino")))
    assert "m.deploy.json picks OpenVINO fp32, but openvino is not installed)" in line, line
    assert "; pip install 'edgeseg[openvino]' to run it, or run `edgeseg tune" in line, line
    assert_segmented(folder)


def test_every_backend_names_a_real_extra() -> None:
    assert {backend.extra for backend in BACKENDS.values()} <= EXTRAS


@pytest.mark.slow
def test_tune_hints_keep_their_extras_on_a_torch_free_install(tiny_onnx: Path, tmp_path: Path) -> None:
    """Rich markup must not eat ``[openvino]`` and ``[train]`` from the table's install hints."""
    models = tmp_path / "m"
    models.mkdir()
    model = Path(shutil.copy(tiny_onnx, models / "tiny.onnx"))
    shutil.copy(tiny_onnx.with_suffix(".pt"), models / "tiny.pt")  # so the eager peer is skipped for torch alone
    env = env_lacking(tmp_path / "shim", "openvino", "torch")
    proc = edgeseg("tune", model, "--runs", "1", "--max-seconds", "0", "--slices", "1", "--threads", "1", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pip install 'edgeseg[openvino]'" in proc.stdout and "pip install 'edgeseg[train]'" in proc.stdout
    assert "pip install 'edgeseg'" not in proc.stdout
    assert set(re.findall(r"edgeseg\[(\w+)\]", proc.stdout)) <= EXTRAS
    assert (models / "tiny.deploy.json").is_file()  # a user's model: beside it


def wheel_layout(site: Path, model: Path) -> Path:
    """The package as a wheel installs it: ``site/edgeseg`` with ``_shipped/model.onnx`` and
    ``_bench/targets.toml`` inside (the layout of pyproject.toml's package-dir)."""
    package = site / "edgeseg"
    shutil.copytree(REPO / "edgeseg", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "_shipped").mkdir()
    shutil.copy(model, package / "_shipped" / "model.onnx")
    (package / "_bench").mkdir()
    shutil.copy(REPO / "bench" / "targets.toml", package / "_bench" / "targets.toml")
    return package


@pytest.mark.slow
def test_tune_of_the_packaged_model_writes_to_the_cache_and_infer_reads_it_there(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    package = wheel_layout(tmp_path / "site", tiny_onnx)
    before = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    env = {k: v for k, v in os.environ.items() if k != "EDGESEG_HOME"}
    env.update(PYTHONPATH=str(tmp_path / "site"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    tune = edgeseg(
        "tune", "--runs", "1", "--max-seconds", "0", "--slices", "1", "--threads", "1", "--no-peers", env=env, cwd=work
    )
    assert tune.returncode == 0, tune.stderr[-2000:]
    cached = tmp_path / "cache" / "edgeseg" / "model.deploy.json"
    assert json.loads(cached.read_text())["model"] == "model.onnx"
    assert f"-> {cached}" in tune.stdout
    after = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    assert after == before  # nothing written inside the installed package
    assert not list(work.iterdir())

    np.save(work / "scan.npy", np.random.default_rng(0).normal(400, 100, (64, 64)).astype(np.float32))
    run = edgeseg("infer", work / "scan.npy", "--out", work / "out", env=env, cwd=work)
    assert run.returncode == 0, run.stderr[-2000:]
    assert str(package / "_shipped" / "model.onnx") in run.stdout  # the packaged model ran
    (line,) = [ln for ln in run.stdout.splitlines() if ln.startswith("backend: ")]
    assert f"(the tuned pick of {cached}, p50 " in line, line
    assert (work / "out" / "scan_seg.npy").is_file()
