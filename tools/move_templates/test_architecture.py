"""The import graph follows the pipeline, between modules and between subpackages, and inference never loads torch.

Every ``edgeseg`` import counts, the lazy ones inside functions too: a lazy import that runs back up
the pipeline is still a cycle, only a later one. ORDER lists the subpackages bottom-up (the top level
of ``edgeseg/`` first) and each one's modules bottom-up; a module may import only modules listed
before it, so a subpackage imports only itself and the subpackages before it. A new module goes at
its stage. ``__main__`` (``python -m edgeseg``) is the entry point, above them all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import edgeseg

PACKAGE = Path(edgeseg.__file__).parent
MAX_LINES = 450  # issue 26: no module longer than a reader holds in mind; most are 100-350
ORDER: dict[str, list[str]] = {
$ORDER
}
ENTRIES = $ENTRIES  # entry points: above everything, they may import any stage
# What `edgeseg infer` and `edgeseg bench` of ONNX files import: never torch, never training.
INFERENCE = [
$INFERENCE
]
TRAINING_LOOP = "$TRAINING_LOOP"


def ranked() -> list[str]:
    """ORDER flattened to module names below edgeseg (``io.scans``, ``errors``), then the entry point."""
    return [f"{sub}.{m}" if sub else m for sub, modules in ORDER.items() for m in modules] + ENTRIES


def subpackage(module: str) -> str:
    """``io.scans`` -> ``io``; ``errors`` and ``__init__`` -> ``""`` (the top level)."""
    return module.split(".")[0] if "." in module else ""


def module_name(path: Path) -> str:
    """``edgeseg/io/scans.py`` -> ``io.scans``; ``edgeseg/io/__init__.py`` -> ``io.__init__``."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def resolve(dotted: str) -> str | None:
    """A dotted path below edgeseg -> its module: a file, a package's ``__init__``, or None (a name)."""
    parts = dotted.split(".") if dotted else []
    if parts and PACKAGE.joinpath(*parts).with_suffix(".py").is_file():
        return dotted
    if PACKAGE.joinpath(*parts, "__init__.py").is_file():
        return ".".join([*parts, "__init__"])
    return None


def edgeseg_imports(path: Path, name: str | None = None) -> set[str]:
    """The edgeseg modules ``path`` imports anywhere in its body (lazy and relative imports included)."""
    here = name or module_name(path)
    package = here.rsplit(".", 1)[0].split(".") if "." in here else []
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from .options import X: relative to this module's package
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module == "edgeseg" or (node.module or "").startswith("edgeseg."):
                target = node.module.removeprefix("edgeseg").lstrip(".")
            else:
                continue
            for alias in node.names:  # from edgeseg.io import scans: the module; import X: X's module
                found.add(resolve(f"{target}.{alias.name}" if target else alias.name) or resolve(target))
        elif isinstance(node, ast.Import):
            found.update(resolve(a.name.removeprefix("edgeseg.")) for a in node.names if a.name.startswith("edgeseg."))
    return {m for m in found if m} - {here}


def graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if not any(part.startswith("_") for part in p.relative_to(PACKAGE).parts[:-1])]
    return {module_name(p): edgeseg_imports(p) for p in sorted(files) if "__pycache__" not in p.parts}


def test_every_module_has_a_place_in_the_pipeline() -> None:
    modules, placed = set(graph()), set(ranked())
    assert not sorted(modules - placed), f"add {sorted(modules - placed)} to ORDER at their stage of the pipeline"
    assert not sorted(placed - modules), f"ORDER names modules that are gone: {sorted(placed - modules)}"


def test_imports_only_point_down_the_pipeline() -> None:
    rank = {name: i for i, name in enumerate(ranked())}
    upward = [
        f"{module} -> {dep}"
        for module, deps in graph().items()
        for dep in sorted(deps)
        if module in rank and dep in rank and rank[dep] >= rank[module]
    ]
    assert not upward, "imports that run up the pipeline (or a cycle): " + ", ".join(upward)


def test_subpackages_import_only_themselves_and_those_below() -> None:
    """0 cycles and 0 upward imports between subpackages: each one's imports point at or below it."""
    level = {sub: i for i, sub in enumerate(ORDER)}
    upward = sorted(
        {
            f"{subpackage(module) or 'edgeseg'} -> {subpackage(dep) or 'edgeseg'} ({module} -> {dep})"
            for module, deps in graph().items()
            if module not in ENTRIES
            for dep in deps
            if level[subpackage(dep)] > level[subpackage(module)]
        }
    )
    assert not upward, "subpackages that import one above them: " + ", ".join(upward)


@pytest.mark.parametrize("sub", [s for s in ORDER if s])
def test_each_subpackage_says_what_it_holds_and_what_it_may_import(sub: str) -> None:
    docstring = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text())) or ""
    assert docstring, f"edgeseg/{sub}/__init__.py has no docstring"
    assert "\n\n" not in docstring.strip(), f"edgeseg/{sub}/__init__.py: one paragraph, not {docstring.count(chr(10) * 2) + 1}"
    assert "may import" in docstring.lower(), f"edgeseg/{sub}/__init__.py does not say what it may import"


def test_no_module_is_over_the_line_limit() -> None:
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_lazy_subpackage_and_relative_imports(tmp_path: Path) -> None:
    """The graph reader itself: a lazy import inside a function counts, so do `from edgeseg.sub import mod`,
    `from edgeseg import x`, `import edgeseg.sub.mod` and a relative import inside a subpackage."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from edgeseg import SHIPPED_MODEL, files\n"
        "from edgeseg.io import scans\n"
        "from .triage import skip_reason\n"
        "def f():\n    from edgeseg.train import loop\n    import edgeseg.model\n"
        "    from edgeseg.runtime.runners import x\n"
    )
    assert edgeseg_imports(source, name="io.probe") == {
        *("__init__", "files", "io.scans", "io.triage", "train.loop", "model", "runtime.runners")
    }


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_modules_import_without_torch(module: str) -> None:
    code = (
        "import sys, importlib\n"
        f"importlib.import_module('edgeseg.{module}')\n"
        f"bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m == '{TRAINING_LOOP}')\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"importing edgeseg.{module} loaded {proc.stdout.strip()}"
