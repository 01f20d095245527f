"""`clrk apply -f PATH`: hand manifests to a running control plane (the admin API)."""

from __future__ import annotations

import json

import click
from google.protobuf.json_format import MessageToDict

from clrk_cli import admin_client
from clrk_cli.admin_client import endpoint_options
from clrk_cli.manifests import manifest_option


@click.command()
@manifest_option
@endpoint_options()
@click.option("--dry-run", is_flag=True, help="Validate against the set in force; store nothing.")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def apply(paths: tuple[str, ...], endpoint, dry_run: bool, output: str) -> None:
    """Apply manifests to the control plane: they take effect without a restart.

    The manifests are validated together with the set in force, exactly as `clrk
    validate` does; if anything is invalid, nothing changes and the errors are printed.
    Exit 0 when applied (or valid with --dry-run), 1 otherwise.
    """
    manifests = admin_client.read_manifests(paths)
    with admin_client.connect(endpoint) as client:
        response = client.apply(manifests, dry_run=dry_run)
    ok = response.valid and (response.applied or dry_run)
    if output == "json":
        doc = MessageToDict(response, preserving_proto_field_name=True)
        for key, empty in (("applied", False), ("valid", False), ("findings", []), ("errors", [])):
            doc.setdefault(key, empty)
        click.echo(json.dumps(doc))
    else:
        for finding in response.findings:
            click.echo(finding.line, err=finding.severity == "error")
        for change in response.changes:
            click.echo(change + (" (dry run)" if dry_run else ""))
        for error in response.errors:
            click.echo(("warning: " if ok else "") + error, err=True)
    if not ok:
        if output != "json":
            errors = sum(f.severity == "error" for f in response.findings) + len(response.errors)
            click.echo(f"refused: {errors} error(s); nothing changed", err=True)
        raise click.exceptions.Exit(1)
    if output != "json":
        what = "valid" if dry_run else "applied"
        click.echo(f"{what}: version {response.version or '-'}")
