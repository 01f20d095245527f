"""`clrk get KIND`: resources the control plane knows, with their status conditions."""

from __future__ import annotations

import json

import click

from clrk_cli import admin_client
from clrk_cli.admin_client import endpoint_options

KINDS = ("gateways", "routes", "policies", "credentials", "agents", "all")


def _conditions(resource) -> dict[str, dict[str, str]]:
    return {
        c.type: {"status": c.status, "reason": c.reason, "message": c.message}
        for c in resource.conditions
    }


def resource_json(resource) -> dict:
    return {
        "kind": resource.kind,
        "namespace": resource.namespace,
        "name": resource.name,
        "source": {"file": resource.source_file, "document": resource.source_document},
        "conditions": _conditions(resource),
        "lastErrors": list(resource.last_errors),
    }


def _table(response) -> str:
    rows = [("KIND", "NAMESPACE", "NAME", "ACCEPTED", "PROGRAMMED", "SOURCE")]
    for r in response.resources:
        conds = _conditions(r)

        def show(kind: str, conds=conds) -> str:
            c = conds.get(kind)
            if c is None:
                return "-"
            return c["status"] if c["status"] == "True" else f"False ({c['reason']})"

        source = f"{r.source_file}#{r.source_document}"
        rows.append(
            (r.kind, r.namespace or "-", r.name, show("Accepted"), show("Programmed"), source)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    for r in response.resources:
        lines += [f"{r.kind}/{r.namespace}/{r.name}: {e}" for e in r.last_errors]
    return "\n".join(lines)


@click.command()
@click.argument("kind", type=click.Choice(KINDS, case_sensitive=False))
@endpoint_options()
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def get(kind: str, endpoint, output: str) -> None:
    """List gateways, routes, (deny) policies, credentials or agents with their conditions.

    Exit 0 when listed; 1 when the control plane cannot be asked.
    """
    with admin_client.connect(endpoint) as client:
        response = client.list("" if kind.lower() == "all" else kind.lower())
    if output == "json":
        doc = {
            "version": response.version,
            "blocked": response.blocked,
            "errors": list(response.errors),
            "items": [resource_json(r) for r in response.resources],
        }
        click.echo(json.dumps(doc))
        return
    click.echo(_table(response))
    if response.blocked:
        click.echo("warning: the manifests are invalid; the last good set stays in force", err=True)
        for error in response.errors:
            click.echo(error, err=True)
