"""`clrk check`: what would the gateway decide for this connection, and why (the
decision itself is `clrk.policy.check.check_connection`, as in the admin API)."""

from __future__ import annotations

import json

import click

from clrk.policy.check import (
    PROTOCOLS,
    CheckInputError,
    CheckQuery,
    check_connection,
    validate_query,
)
from clrk.policy.loaded import load_and_compile
from clrk.policy.model import Connection
from clrk_cli.admin_client import endpoint_options
from clrk_cli.manifests import filename_option


def decision_table(d: dict, conn: Connection) -> str:
    """The table for people, from the decision's JSON form (local or from a server)."""
    names = ",".join(sorted(conn.names)) or "-"
    route = "-" if d.get("route") is None else f"{d['route']} rule {d.get('rule')}"
    rows = [
        ("decision", f"{d['decision']} ({d['reason']})"),
        ("connection", f"{d['agent']} -> {conn.dst_ip}:{conn.dst_port}/{conn.protocol}"),
        ("evidence", f"dns={names} sni={conn.sni or '-'}"),
        ("gateway", f"{d['gateway']} (defaultPolicy {d['defaultPolicy']})"),
        ("route", route),
        ("listener", d.get("listener") or "-"),
        ("hostname", d.get("hostname") or "-"),
    ]
    if d.get("denyPolicy"):
        rows.append(("denyPolicy", d["denyPolicy"]))
    through = d.get("through")
    if through:  # Report mode: recorded as this denial, carried as `through` says
        route = through.get("route") or "-"
        rows[0] = ("decision", f"{d['decision']} ({d['reason']}), reported, not enforced")
        rows.append(("report", f"goes through on listener {through['listener']} (route {route})"))
    return "\n".join(f"{k:<11} {v}" for k, v in rows)


def _click_error(exc: CheckInputError) -> click.ClickException:
    if exc.param is not None:
        return click.BadParameter(str(exc), param_hint=exc.param)
    return click.UsageError(str(exc))


def _local(paths: tuple[str, ...], query: CheckQuery) -> tuple[dict, tuple[str, ...]]:
    loaded = load_and_compile(paths)
    for finding in loaded.findings:
        click.echo(finding.line(), err=True)
    if loaded.policies is None:
        raise click.ClickException("the manifests are invalid (run `clrk validate`)")
    result = check_connection(loaded.policies, query)
    return result.to_json(), result.warnings


def _remote(endpoint, query: CheckQuery) -> tuple[dict, tuple[str, ...]]:
    from clrk_cli import admin_client

    with admin_client.connect(endpoint) as client:
        return client.check(query)


@click.command()
@filename_option(
    required=False,
    help="Manifest file or directory (repeatable); without it, the control plane is asked.",
)
@endpoint_options()
@click.option("--agent", "agent_text", required=True, help="Agent as [NAMESPACE/]NAME.")
@click.option("--agent-label", "agent_labels", multiple=True, help="Agent label K=V (repeatable).")
@click.option("--gateway", help="Gateway as [NAMESPACE/]NAME; optional when there is one.")
@click.option("--dst-ip", required=True, help="Destination IP address.")
@click.option("--port", required=True, type=click.IntRange(1, 65535), help="Destination port.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="TCP", show_default=True)
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    help="A name the agent's DNS bound to the destination IP (repeatable).",
)
@click.option("--sni", help="TLS server name the agent sent.")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def check(
    paths: tuple[str, ...],
    endpoint,
    agent_text: str,
    agent_labels: tuple[str, ...],
    gateway: str | None,
    dst_ip: str,
    port: int,
    protocol: str,
    hostnames: tuple[str, ...],
    sni: str | None,
    output: str,
) -> None:
    """Decide one connection with the policy in the manifests (-f) or in force (the
    control plane of --state-dir, or --server).

    Exit 0 when a decision was made (allow or deny), 1 on invalid input.
    """
    if paths and endpoint.server:
        raise click.UsageError("give the manifests with -f, or a control plane with --server")
    query = CheckQuery(
        agent_text, dst_ip, port, protocol, hostnames, sni, gateway, tuple(agent_labels)
    )
    try:
        validate_query(query)
        decision, warnings = _local(paths, query) if paths else _remote(endpoint, query)
    except CheckInputError as exc:
        raise _click_error(exc) from None
    for warning in warnings:
        click.echo(warning, err=True)
    if output == "json":
        click.echo(json.dumps(decision))
    else:
        click.echo(decision_table(decision, query.connection))
