"""MkDocs hook: the CLI reference, rendered from the installed `edgeseg` command at build time.

Why a hook and not a hand-written page: the README's hand-kept synopsis of every option (40 lines)
drifted from the code more than once; a page generated from the typer app cannot. The app is found
through the console-script entry point (what `pip install` wires to `edgeseg`), not a module path,
so moving the CLI between modules (edgeseg/cli.py -> edgeseg/cli/) does not break the docs.

The page `docs/cli.md` holds the marker `<!-- cli-reference -->`; every command and sub-command
(the click tree of `typer.main.get_command(app)`) replaces it with its `--help` text, 100 columns
wide so the page is the same on every machine.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

MARKER = "<!-- cli-reference -->"
WIDTH = 100  # click wraps help to the terminal otherwise: a page that changes with the builder's window


def _app() -> Any:
    """The typer app behind the `edgeseg` console script (the script is `main`, which runs it)."""
    import typer

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "edgeseg"]
    target = script.load()
    if isinstance(target, typer.Typer):
        return target
    # The app lives in the script's module, or elsewhere in its package (edgeseg.cli.*): look in
    # the module first, then widen, and take the one app that no other app was added to.
    module = target.__module__
    scopes = [module, module.rsplit(".", 1)[0]] if "." in module else [module]
    for scope in scopes:
        found = [m for name, m in list(sys.modules.items()) if name == scope or name.startswith(scope + ".")]
        apps = {id(v): v for m in found for v in vars(m).values() if isinstance(v, typer.Typer)}
        children = {id(g.typer_instance) for a in apps.values() for g in a.registered_groups}
        roots = [a for key, a in apps.items() if key not in children]
        if len(roots) == 1:
            return roots[0]
    raise RuntimeError(f"cli_reference: no single root typer app beside {script.value}")


def _commands() -> Iterator[tuple[str, str]]:
    """(`edgeseg data demo`, its help text) for the root and every command, depth first, in the app's order."""
    import typer

    # typer >= 0.29 carries its own copy of click (typer._click): use its Context, and tell a group
    # by its list_commands rather than by isinstance against a click that may not be installed.
    def walk(command: Any, path: list[str], parent: Any) -> Iterator[tuple[str, str]]:
        ctx = typer.Context(command, info_name=path[-1], parent=parent, terminal_width=WIDTH, max_content_width=WIDTH)
        yield " ".join(path), command.get_help(ctx)
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    yield from walk(sub, [*path, name], ctx)

    yield from walk(typer.main.get_command(_app()), ["edgeseg"], None)


def render() -> str:
    """The reference as Markdown: one section per command, its help as a text block."""
    parts = []
    for name, text in _commands():
        level = "##" if name.count(" ") <= 1 else "###"
        parts.append(f"{level} `{name}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace the marker on the CLI page; every other page passes through unchanged."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
