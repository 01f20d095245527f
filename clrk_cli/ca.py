"""`clrk ca print|path`: the gateway CA certificate that agents must trust for TLS Terminate."""

from __future__ import annotations

from pathlib import Path

import click

state_dir_option = click.option(
    "--state-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The control plane's state directory (the CA lives in its ca/ subdirectory).",
)


@click.group()
def ca() -> None:
    """The gateway certificate authority."""


@ca.command("print")
@state_dir_option
@click.option("--create", is_flag=True, help="Create the CA if the state dir has none yet.")
def print_(state_dir: Path, create: bool) -> None:
    """Print the CA certificate (PEM) for agents' trust stores."""
    from clrk_xds.ca import CAError, GatewayCA

    try:
        authority = GatewayCA.load_or_create(state_dir) if create else GatewayCA.load(state_dir)
    except CAError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(authority.cert_pem.decode(), nl=False)


@ca.command()
@state_dir_option
def path(state_dir: Path) -> None:
    """Print the path of the CA certificate file (whether or not it exists yet)."""
    from clrk_xds.ca import default_cert_path

    click.echo(str(default_cert_path(state_dir)))
