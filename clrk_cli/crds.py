"""`clrk crds [-o DIR]`: the CustomResourceDefinitions of every kind, from the models."""

from __future__ import annotations

from pathlib import Path

import click

from clrk.api.crds import render_files, render_stream


@click.command()
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write one file per CRD and a kustomization.yaml here (default: print them all)",
)
def crds(output_dir: Path | None) -> None:
    """Print (or write) the CRDs generated from the models.

    Files in DIR that these CRDs replace are overwritten; others are left alone.
    """
    if output_dir is None:
        click.echo(render_stream(), nl=False)
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render_files().items():
        (output_dir / name).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output_dir / name}")
