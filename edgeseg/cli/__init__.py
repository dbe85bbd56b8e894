"""The `edgeseg` command line: a thin skin over the library, one module per command group.
Each command converts its options and calls one library function; library modules are imported
inside the command bodies, so `edgeseg --help` is fast and `edgeseg infer` never imports torch.
The command groups (``train``, ``data``, ``infer``, ``bench``, ``export``, ``listen``) hold the
commands, ``options`` the options several of them share; this module wires them into one typer
app, in the order `edgeseg --help` lists them, and maps errors to one line and an exit code in
``main`` (the console script ``edgeseg``, ``python -m edgeseg`` and ``python -m edgeseg.cli``).
It sits above every stage and may import any of them, inside the command bodies.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from edgeseg import __version__
from edgeseg.cli import bench, export, infer, listen, train
from edgeseg.cli.data import data_app
from edgeseg.errors import EdgesegError, Interrupted

app = typer.Typer(
    help="Train, export, validate, run and benchmark the edgeseg MRI segmentation U-Net.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: typer's rich panels print a "<bool>" type beside every flag
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train, export, validate, run and benchmark the edgeseg MRI segmentation U-Net."""


# The commands in the pipeline's order, which is the order `edgeseg --help` lists them in.
COMMANDS = {
    "train": train.train_cmd,
    "evaluate": train.evaluate_cmd,
    "infer": infer.infer_cmd,
    "tune": bench.tune_cmd,
    "bench": bench.bench_cmd,
    "build-c": export.build_c_cmd,
    "export": export.export_cmd,
    "triton": export.triton_cmd,
    "validate": export.validate_cmd,
    "listen": listen.listen_cmd,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
app.add_typer(data_app, name="data")


# Modules the core install leaves out (pyproject.toml), and the install line a missing one names.
_TRAIN = "pip install 'edgeseg[train]' (install PyTorch first from pytorch.org for your CPU or GPU)"
EXTRA_OF = {
    **dict.fromkeys(("torch", "onnxscript", "onnxconverter_common", "onnxslim", "matplotlib", "scipy"), _TRAIN),
    "onnxruntime": "pip install 'edgeseg[cpu]', or 'edgeseg[gpu]' for CUDA (one of them: they share one import name)",
    "onnx": "pip install 'edgeseg[train]', 'edgeseg[triton]' or 'edgeseg[gpu]' (each brings onnx)",
    **dict.fromkeys(("pynetdicom", "dicomweb_client"), "pip install 'edgeseg[node]'"),
}


def _usage_error(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for a command-line usage error, else None.

    Typer 0.29 raises its vendored click's exceptions and older typers raise click's own,
    so they are recognised by their interface (``format_message``, ``exit_code``) rather
    than by importing ``click``, which a fresh install may not have.
    """
    format_message = getattr(exc, "format_message", None)
    code = getattr(exc, "exit_code", None)
    if not callable(format_message) or not isinstance(code, int):
        return None
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "edgeseg"
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `edgeseg` or `edgeseg data`: one line, not the help
        group = getattr(ctx, "command", None)
        names = ", ".join(group.list_commands(ctx)) if hasattr(group, "list_commands") else "see the help"
        return f"Missing command ({names}). See '{command} --help'.", code
    message = " ".join(str(format_message()).split()).rstrip(".") + "."
    return f"{message} See '{command} --help'.", code


def _empty_value(args: list[str]) -> tuple[str, str] | None:
    """(the option given as ``""``, or "an argument", and the command's path) if one was, else None.

    Python reads an empty path as the current folder, so ``--out "$UNSET"`` once wrote everything there.
    """
    if all(arg and not arg.endswith("=") for arg in args):  # nothing empty: skip building the command tree
        return None  # (typer's get_command: 70 ms of every command under load, issue 24)
    import typer.main

    command, path, flags, before = typer.main.get_command(app), ["edgeseg"], set(), ""
    for arg in args:
        if (sub := getattr(command, "commands", {}).get(arg)) is not None:  # a (sub)command's name
            command, path = sub, [*path, arg]
            flags = {o for p in command.params if getattr(p, "is_flag", False) for o in (*p.opts, *p.secondary_opts)}
        name, eq, value = arg.partition("=")
        if name.startswith("--") and eq and not value:  # --out=
            return name, " ".join(path)
        if not arg:
            option = before.startswith("-") and "=" not in before and before not in flags
            return (before if option else "an argument"), " ".join(path)
        before = arg
    return None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user mistakes print one line and exit 1 (usage errors 2), Ctrl-C 130.

    Set ``EDGESEG_DEBUG=1`` to see the traceback of a user mistake.
    """
    args = list(argv if argv is not None else sys.argv[1:])
    if empty := _empty_value(args):
        what, command = empty
        typer.secho(
            f"error: {what} is empty (an unset shell variable?); give it a value or leave it out,"
            f" since an empty path would mean the current folder. See '{command} --help'.",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(2)
    try:
        code = app(args=args, standalone_mode=False)
    except Interrupted as exc:  # the library says what was finished and how to resume
        typer.secho(f"{'terminated (SIGTERM)' if exc.code == 143 else 'interrupted'}: {exc}", err=True)
        sys.exit(exc.code)
    except KeyboardInterrupt:  # Ctrl-C outside a command (typer maps it inside to 130)
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except EdgesegError as exc:
        if os.environ.get("EDGESEG_DEBUG"):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in EXTRA_OF or os.environ.get("EDGESEG_DEBUG"):
            raise
        words = [arg for arg in (argv if argv is not None else sys.argv[1:]) if not arg.startswith("-")]
        command = " ".join(words[:2] if words[:1] == ["data"] else words[:1])
        typer.secho(
            f"error: `edgeseg {command}` needs {root}, which the core install leaves out: {EXTRA_OF[root]}",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(1)
    except Exception as exc:
        usage = _usage_error(exc)
        if usage is None or os.environ.get("EDGESEG_DEBUG"):
            raise
        message, code = usage
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        sys.exit(code)
    if code == 130:
        typer.secho("interrupted before finishing; rerun the same command", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)
