"""The installed `edgeseg` console script, run the way a user runs it: usage errors, help, version, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import edgeseg

# The console script that `pip install` put beside this interpreter, not `python -m`.
EDGESEG = shutil.which("edgeseg", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def no_click(tmp_path_factory: pytest.TempPathFactory, env_without) -> dict[str, str]:  # noqa: ANN001
    """An environment in which `import click` fails, as on a fresh install with typer >= 0.29."""
    return env_without(tmp_path_factory.mktemp("no_click"), "click")


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    assert EDGESEG, "the edgeseg console script is not installed beside this python"
    return subprocess.run([EDGESEG, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


USAGE_ERRORS = [
    (["bogus"], "No such command 'bogus'"),
    (["--nope"], "No such option: --nope"),
    (["infer"], "Missing argument"),
    (["infer", "x.npy", "--batch-size", "0"], "--batch-size"),
    (["infer", "x.npy", "--provider", "gpu"], "--provider"),
    (["train", "--epochs", "abc"], "--epochs"),
    (["train", "--preset", "foo"], "--preset"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["export", "--opset", "3"], "--opset"),
    (["bench", "--runs", "0"], "--runs"),
    (["data", "nope"], "No such command 'nope'"),
]


@pytest.mark.parametrize(("args", "names"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line_exit_2_without_click(args: list[str], names: str, no_click) -> None:
    r = run(*args, env=no_click)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and names in lines[0]
    assert "--help" in lines[0]  # says where to look
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize(("args", "commands"), [([], ["infer", "train", "data"]), (["data"], ["demo", "example"])])
def test_bare_group_is_a_one_line_usage_error(args: list[str], commands: list[str], no_click) -> None:
    """A bare `edgeseg` is a usage error like any other (the README's promise), naming the commands and the help."""
    r = run(*args, env=no_click)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: Missing command") and all(c in lines[0] for c in commands), lines[0]
    assert lines[0].endswith(f"See '{' '.join(['edgeseg', *args])} --help'.")
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_version(no_click) -> None:
    r = run("--version", env=no_click)
    assert r.returncode == 0
    assert r.stdout.strip() == f"edgeseg {edgeseg.__version__}"


@pytest.mark.parametrize(
    "command",
    [
        *("train", "evaluate", "export", "validate", "infer", "bench", "triton", "build-c", "listen"),
        *("data demo", "data example"),
    ],
)
def test_help_has_no_bool_metavar(command: str, no_click) -> None:
    r = run(*command.split(), "--help", env=no_click)
    assert r.returncode == 0, r.stderr
    assert "Usage: edgeseg" in r.stdout
    assert "<bool>" not in r.stdout


def test_train_help_shows_each_presets_defaults(no_click) -> None:
    from edgeseg.train.config import make_config

    text = " ".join(run("train", "--help", env=no_click).stdout.split())
    default, tutorial = make_config("default"), make_config("tutorial")
    for name, option in [
        ("epochs", "--epochs"),
        ("lr", "--lr"),
        ("patches_per_slice", "--patches-per-slice"),
        ("split", "--split"),
    ]:
        shown = f"default {getattr(default, name)}, tutorial {getattr(tutorial, name)}"
        assert re.search(re.escape(option) + r" .*?\[default: \(" + re.escape(shown) + r"\)", text), (name, shown)
    assert f"[default: ({default.batch_size})" in text and default.batch_size == tutorial.batch_size
    assert f"default {default.patch}, tutorial 0" in text and tutorial.patch is None  # 0 = whole slices
    assert f"[default: ({default.seed})" in text and f"[default: ({default.runs_dir})" in text


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, timeout: float) -> None:
    folder, pattern = path_glob
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if folder.exists() and any(folder.glob(pattern)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{pattern} never appeared in {folder} (exit {proc.poll()})")


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "tmp" in p.name]


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child, before exec: SIGINT at its default, as a terminal's foreground job has it.

    A background job of a non-interactive shell (``nohup bash -c '... &'``, one way to start
    ``.ci/run``) inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler:
    ``edgeseg train``, which relies on Python's, ran all 12 epochs through the test's Ctrl-C
    (2026-12-07). ``edgeseg infer`` installs its own (:mod:`edgeseg.signals`).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_train_exits_130_and_says_how_to_resume(tiny_dataset, tmp_path: Path) -> None:
    data, _ = tiny_dataset
    args = ["train", "--data", str(data), "--epochs", "12", "--patch", "32", "--batch-size", "4", "--name", "c"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [EDGESEG, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    run_dir = tmp_path / "runs" / "c"
    _wait_for((run_dir, "history.json"), proc, timeout=240)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "edgeseg train --resume runs/c" in last, last  # relative to cwd
    finished = int(re.search(r"(\d+) epoch\(s\) finished", last).group(1))
    assert 1 <= finished < 12
    assert not _temp_files(run_dir)
    r = run("train", "--resume", str(run_dir), cwd=tmp_path, env=env, timeout=240)
    assert r.returncode == 0, r.stderr  # the command it names finishes the run
    assert len(json.loads((run_dir / "history.json").read_text())) == 12


def test_ctrl_c_during_infer_exits_130_and_leaves_no_half_file(threshold_onnx: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        np.save(scans / f"s{i:03d}.npy", rng.random((3, 256, 256), dtype=np.float32))
    before = {p.name: p.read_bytes() for p in scans.iterdir()}
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [EDGESEG, "infer", str(scans), "--model", str(threshold_onnx), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for((out, "*_seg.npy"), proc, timeout=120)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted")
    assert not _temp_files(out)
    written = sorted(out.glob("*_seg.npy"))
    assert 0 < len(written) < 400
    for path in written:  # every output that exists is whole
        assert np.load(path).shape == (3, 256, 256)
    assert {p.name: p.read_bytes() for p in scans.iterdir()} == before


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory: pytest.TempPathFactory, env_without) -> dict[str, str]:  # noqa: ANN001
    """An environment in which `import torch` fails, as in the torch-free core install."""
    return env_without(tmp_path_factory.mktemp("no_torch"), "torch", "ModuleNotFoundError")


@pytest.mark.parametrize(
    "args", [["train", "--epochs", "1"], ["evaluate", "x.pt"], ["export", "x.pt"], ["validate", "x.onnx"]]
)
def test_torch_commands_without_torch_name_the_extra(args: list[str], no_torch, tmp_path: Path) -> None:
    r = run(*args, env=no_torch, cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"`edgeseg {args[0]}` needs torch" in lines[0] and "edgeseg[train]" in lines[0], r.stderr


def test_infer_runs_without_torch(no_torch, tmp_path: Path) -> None:
    example = Path(edgeseg.SHIPPED_MODEL_DIR) / "example"
    r = run("infer", str(example), "--out", str(tmp_path / "seg"), env=no_torch, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "seg" / "mni152_t1_axial_slab_seg.nii.gz").stat().st_size > 0
