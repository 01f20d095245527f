"""The `-f/--filename` option of commands that read manifests."""

from __future__ import annotations

import click


def filename_option(
    *, required: bool = True, help: str = "Manifest file or directory (repeatable)."
):
    """`-f/--filename PATH` (repeatable) into the command's `paths`."""
    return click.option(
        "-f", "--filename", "paths", multiple=True, required=required, type=click.Path(), help=help
    )


manifest_option = filename_option()
