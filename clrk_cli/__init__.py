"""The `clrk` command line (kubectl-like): one module per command."""

from __future__ import annotations

import sys

import click

from clrk import __version__
from clrk_cli.apply import apply
from clrk_cli.ca import ca
from clrk_cli.check import check
from clrk_cli.crds import crds
from clrk_cli.envoy import envoy
from clrk_cli.get import get
from clrk_cli.inject import inject
from clrk_cli.records import records
from clrk_cli.run import run
from clrk_cli.suggest import suggest
from clrk_cli.up import up
from clrk_cli.validate import validate
from clrk_worker_dialer.command import dialer
from clrk_worker_dialer.sidecar import sidecar


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """clrk: an egress gateway for AI agents."""


@cli.command()
def version() -> None:
    """Print the clrk version."""
    click.echo(f"clrk {__version__}")


cli.add_command(validate)
cli.add_command(check)
cli.add_command(crds)
cli.add_command(ca)
cli.add_command(apply)
cli.add_command(get)
cli.add_command(records)
cli.add_command(suggest)
cli.add_command(up)
cli.add_command(run)
cli.add_command(dialer)
cli.add_command(sidecar)
cli.add_command(envoy)
cli.add_command(inject)


def main(argv: list[str] | None = None) -> int:
    """Entry point.  Usage errors exit 1 like any other invalid input, not click's 2."""
    try:
        # Not standalone: an Exit's code is returned rather than raised.
        code = cli.main(args=argv, prog_name="clrk", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return 1
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
