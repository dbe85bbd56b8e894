"""The README as a front page and the documentation site that holds the manual (issue 26).

The README was 1,838 lines before issue 26 moved its manual, results and history into docs/; these
tests keep it a front page (<= 250 lines) whose three commands (install, the main job, the tests)
are the ones CI and the tests really run, and build the site the way `.ci/run` does, so a broken
link, a page left out of the nav or a CLI reference that no longer renders fails here first.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README = (REPO / "README.md").read_text()
CI_RUN = (REPO / ".ci" / "run").read_text()
SMOKE = (REPO / ".ci" / "smoke").read_text()
ARCHITECTURE_TEST = (REPO / "tests" / "test_architecture.py").read_text()


def _bash_blocks(text: str) -> list[list[str]]:
    """Each ```bash block as its command lines, comments and continuation-free."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [[line.split("#", 1)[0].strip() for line in b.splitlines() if line.split("#", 1)[0].strip()] for b in blocks]


def _block_starting(prefix: str) -> list[str]:
    (block,) = [b for b in _bash_blocks(README) if b and b[0].startswith(prefix)]
    return block


def test_readme_is_a_front_page() -> None:
    lines = README.splitlines()
    assert len(lines) <= 250, f"README.md is {len(lines)} lines; the manual belongs in docs/"
    for page in re.findall(r"\]\((docs/[\w/.-]+\.md)(?:#[\w-]+)?\)", README):
        assert (REPO / page).is_file(), page


def test_readme_test_command_is_what_ci_runs() -> None:
    assert _block_starting("python -m pytest") == ["python -m pytest -q"]
    ci = [line.strip() for line in CI_RUN.splitlines()]
    assert ci[ci.index("# The README's test command:") + 1] == "python -m pytest -q"


def test_readme_main_job_is_what_the_smoke_test_runs() -> None:
    """`edgeseg infer export/example/`: .ci/smoke runs it on the installed wheel, and checks the file
    the README's comment names."""
    (command,) = _block_starting("edgeseg infer")
    assert shlex.split(command) == ["edgeseg", "infer", "export/example/"]
    assert re.search(r'EXAMPLE="\$\(realpath "\$\(dirname "\$0"\)/\.\./export/example"\)"', SMOKE)
    assert '"$EDGESEG" infer "$EXAMPLE"\n' in SMOKE
    named = re.search(r"writes (segmentations/\S+_seg\.nii\.gz)", README).group(1)
    assert f"test -s {named}\n" in SMOKE


def test_readme_install_is_what_ci_installs() -> None:
    """The development install pins the torch CI installs and the `dev` extra; the edge-box install
    is the `cpu` extra, which CI installs from the wheel into a clean venv."""
    dev = _block_starting("git clone")
    torch = [shlex.split(c) for c in dev if c.startswith("pip install torch")]
    assert [c[:3] for c in torch] == [["pip", "install", "torch==2.13.0"]]
    assert 'pip install -e ".[dev]"' in dev
    assert "python -m pip install --quiet torch==2.13.0" in CI_RUN
    assert 'python -m pip install --quiet -e ".[dev]"' in CI_RUN
    (edge,) = _block_starting("python3 -m venv /opt/edgeseg")
    assert edge.endswith('/opt/edgeseg/bin/pip install ".[cpu]"')
    assert '"$(echo .ci-dist/edgeseg-*.whl)[cpu]"' in CI_RUN


def test_ci_builds_the_docs_strictly() -> None:
    assert re.search(r"^mkdocs build --strict\b", CI_RUN, re.M)


def test_docs_build_strict_with_the_generated_cli_reference(tmp_path: Path) -> None:
    """`mkdocs build --strict` (0 warnings: links, anchors, every page in the nav); the CLI page holds
    every command's --help, rendered from the installed console script, and the architecture page
    every stage and module of tests/test_architecture.py's ORDER."""
    pytest.importorskip("mkdocs", reason='the docs extra is not installed: pip install -e ".[docs]"')
    pytest.importorskip("material", reason='the docs extra is not installed: pip install -e ".[docs]"')
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert built.returncode == 0, built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    cli = (site / "cli" / "index.html").read_text()
    help_of_infer = subprocess.run(
        [str(Path(sys.executable).with_name("edgeseg")), "infer", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
    )
    assert help_of_infer.returncode == 0, help_of_infer.stderr
    commands = ("train", "evaluate", "export", "validate", "triton", "infer", "bench", "tune", "listen", "data demo")
    for command in commands:
        assert f"Usage: edgeseg {command} [OPTIONS]" in cli, command
    layout = (site / "architecture" / "index.html").read_text()
    order = ast.literal_eval(re.search(r"^ORDER\b[^=]*= (\{.*?^\}|\[.*?^\])", ARCHITECTURE_TEST, re.M | re.S).group(1))
    for stage, modules in order.items() if isinstance(order, dict) else [("", order)]:
        assert f"<code>edgeseg/{stage + '/' if stage else ''}" in layout, stage
        for module in modules:
            assert f"<code>{module}</code>" in layout or module == "__init__", module
    options = re.findall(r"^\s+(--[a-z][\w-]*)", help_of_infer.stdout, re.M)
    assert "--skull-strip" in options and len(options) > 20, help_of_infer.stdout
    for option in options:
        assert option in cli, option
