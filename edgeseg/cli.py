"""The `edgeseg` command line: a thin skin over the library.

Each command converts its options and calls one library function. Library
modules are imported inside the commands so that `edgeseg --help` is fast and
`edgeseg infer` never imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgeseg.errors import EdgesegError

app = typer.Typer(
    help="Train, export, validate, run and benchmark the edgeseg MRI segmentation U-Net.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: build the real-MRI demo set.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Shared option aliases, defined once.
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Dataset root in the tutorial layout (MRIs/, Segmentations/)."),
]


def main() -> None:
    """Console-script entry: user mistakes print one line and exit 1, no traceback."""
    try:
        app(standalone_mode=False)
    except EdgesegError as exc:
        if os.environ.get("EDGESEG_DEBUG"):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
