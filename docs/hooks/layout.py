"""MkDocs hook: the package layout on docs/architecture.md, read from the code at build time.

Why generated: the order of the stages is policy that `tests/test_architecture.py` enforces (its
`ORDER`), and each subpackage says what it holds and may import in its own `__init__.py`; a table
copied into the docs by hand would drift from both. Both are read with `ast`, nothing is imported.

The page holds the marker `<!-- layout -->`; it becomes one row per stage, bottom-up.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

MARKER = "<!-- layout -->"
CORE = (
    "The core that every stage may import (the one exception type, files, the ONNX contract, metrics, the model); "
    "it imports no stage."
)


def _literal(tree: ast.Module, name: str) -> Any:
    """The value of a top-level ``NAME = <literal>`` or ``NAME: type = <literal>``."""
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            return ast.literal_eval(node.value)
    raise LookupError(f"layout hook: tests/test_architecture.py has no {name}")


def _summary(init: Path) -> str:
    """A package docstring as one line (its first paragraph), or '' when there is none."""
    if not init.is_file():
        return ""
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split())


def render(repo: Path) -> str:
    """The stages bottom-up: folder, modules bottom-up, what it holds and may import."""
    order = _literal(ast.parse((repo / "tests" / "test_architecture.py").read_text()), "ORDER")
    if isinstance(order, list):  # the flat tree before issue 26's move: one stage
        order = {"": order}
    rows = ["| stage (bottom-up) | modules, bottom-up | what it holds, what it may import |", "|---|---|---|"]
    for sub, modules in order.items():
        folder = f"`edgeseg/{sub}/`" if sub else "`edgeseg/` (top level)"
        names = ", ".join(f"`{m}`" for m in modules if m != "__init__")
        init = repo / "edgeseg" / sub / "__init__.py"
        about = _summary(init) if sub else CORE
        rows.append(f"| {folder} | {names} | {about.replace('|', '&#124;')} |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, **kwargs: Any) -> str:
    """Replace the marker on the architecture page; every other page passes through unchanged."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render(Path(config["config_file_path"]).parent))
