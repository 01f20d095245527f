"""`clrk check`: what would the gateway decide for this connection, and why."""

from __future__ import annotations

import json

import click

from clrk.api import grammar
from clrk.cli.manifests import load_and_compile, manifest_option
from clrk.policy import Agent, Connection, Decision, PolicySet, decide
from clrk.policy.addresses import parse_ip


def _ref(text: str, what: str) -> tuple[str, str]:
    namespace, _, name = text.rpartition("/")
    try:
        return (
            grammar.check_dns_label(namespace) if namespace else "default",
            grammar.check_object_name(name),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from None


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not K=V", param_hint="--agent-label")
        try:
            out[grammar.check_label_key(key)] = grammar.check_label_value(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--agent-label") from None
    return out


def _pick_gateway(
    policies: PolicySet, given: str | None, agent_key: tuple[str, str]
) -> tuple[str, str]:
    if given is not None:
        key = _ref(given, "--gateway")
        if key not in policies.gateways:
            known = ", ".join(f"{ns}/{n}" for ns, n in policies.gateways) or "none"
            raise click.UsageError(f"no EgressGateway {key[0]}/{key[1]} (known: {known})")
        return key
    if len(policies.gateways) == 1:
        return next(iter(policies.gateways))
    declared = [g for g in policies.agent_gateways.get(agent_key, ()) if g in policies.gateways]
    if len(declared) == 1:
        return declared[0]
    if not policies.gateways:
        raise click.UsageError("the manifests define no EgressGateway")
    raise click.UsageError("the manifests define several gateways; choose one with --gateway")


def _table(d: Decision, conn: Connection) -> str:
    names = ",".join(sorted(conn.names)) or "-"
    rows = [
        ("decision", f"{'allow' if d.allowed else 'deny'} ({d.reason})"),
        ("connection", f"{d.agent} -> {conn.dst_ip}:{conn.dst_port}/{conn.protocol}"),
        ("evidence", f"dns={names} sni={conn.sni or '-'}"),
        ("gateway", f"{d.gateway} (defaultPolicy {d.default_policy})"),
        ("route", "-" if d.route is None else f"{d.route} rule {d.rule}"),
        ("listener", d.listener or "-"),
        ("hostname", d.hostname or "-"),
    ]
    if d.deny_policy:
        rows.append(("denyPolicy", d.deny_policy))
    return "\n".join(f"{k:<11} {v}" for k, v in rows)


@click.command()
@manifest_option
@click.option("--agent", "agent_text", required=True, help="Agent as [NAMESPACE/]NAME.")
@click.option("--agent-label", "agent_labels", multiple=True, help="Agent label K=V (repeatable).")
@click.option("--gateway", help="Gateway as [NAMESPACE/]NAME; optional when there is one.")
@click.option("--dst-ip", required=True, help="Destination IP address.")
@click.option("--port", required=True, type=click.IntRange(1, 65535), help="Destination port.")
@click.option("--protocol", type=click.Choice(["TCP", "UDP"]), default="TCP", show_default=True)
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
    """Decide one connection with the policy in the manifests.

    Exit 0 when a decision was made (allow or deny), 1 on invalid input.
    """
    try:
        parse_ip(dst_ip)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dst-ip") from None
    agent_key = _ref(agent_text, "--agent")
    extra_labels = _labels(agent_labels)
    loaded = load_and_compile(paths)
    for finding in loaded.findings:
        click.echo(finding.line(), err=True)
    if loaded.policies is None:
        raise click.ClickException("the manifests are invalid (run `clrk validate`)")
    policies = loaded.policies
    gw_key = _pick_gateway(policies, gateway, agent_key)
    declared = policies.agents.get(agent_key)
    labels = {**(declared.labels if declared else {}), **extra_labels}
    refs = policies.agent_gateways.get(agent_key, ())
    if declared and refs and gw_key not in refs:
        click.echo(
            f"warning: agent {declared.ref} does not list gateway {gw_key[0]}/{gw_key[1]}"
            " in spec.egressRefs",
            err=True,
        )
    conn = Connection(protocol, dst_ip, port, frozenset(hostnames), sni)
    decision = decide(policies.gateways[gw_key], Agent(*agent_key, labels), conn)
    if output == "json":
        click.echo(json.dumps(decision.to_json()))
    else:
        click.echo(_table(decision, conn))
