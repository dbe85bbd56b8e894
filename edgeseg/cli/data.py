"""`edgeseg data`: the real-MRI demo set and an example scan, both built offline from nilearn's MNI152."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeseg.cli.options import out_option

data_app = typer.Typer(
    help="Datasets: the real-MRI demo set and an example scan.", no_args_is_help=True, rich_markup_mode=None
)


@data_app.command("demo")
def data_demo_cmd(
    out: Annotated[Path | None, out_option("Dataset folder; default ~/.cache/edgeseg/demo-mni152.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a matching set is cached.")] = False,
) -> None:
    """Build the real-MRI demo set (MNI152 template from nilearn, offline) in the tutorial layout."""
    from rich.console import Console

    from edgeseg.data.demo import build_demo, read_demo_provenance

    root = build_demo(out, force=force)
    counts = read_demo_provenance(root)["counts"]
    per_plane = ", ".join(f"{plane} {n}" for plane, n in counts.items())
    Console().print(f"{root}\n{sum(counts.values())} slices: {per_plane}")


@data_app.command("example")
def data_example_cmd(
    out: Annotated[Path, out_option("Folder to write the example scan into.")] = Path("example-scans"),
) -> None:
    """Write a small real scan (5 axial slices of the MNI152 T1, NIfTI) to try edgeseg infer on."""
    from edgeseg.data.demo import build_example

    typer.echo(build_example(out))
