"""`clrk check`: what would the gateway decide for this connection, and why.

`check_connection` is the one code path behind the command and the admin API's Check:
both give the same answer for the same policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import click

from clrk.api import grammar
from clrk.cli.manifests import filename_option, load_and_compile
from clrk.policy import Agent, Connection, Decision, PolicySet, decide
from clrk.policy.addresses import parse_ip

PROTOCOLS = ("TCP", "UDP")


class CheckInputError(ValueError):
    """A query that cannot be decided; `param` names the option at fault, if one is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class CheckQuery:
    agent: str  # [NAMESPACE/]NAME
    dst_ip: str
    port: int
    protocol: str = "TCP"
    hostnames: tuple[str, ...] = ()
    sni: str | None = None
    gateway: str | None = None  # [NAMESPACE/]NAME; None: the only or the agent's one
    agent_labels: tuple[str, ...] = ()  # K=V

    @property
    def connection(self) -> Connection:
        names = frozenset(self.hostnames)
        return Connection(self.protocol, self.dst_ip, self.port, names, self.sni)


@dataclass(frozen=True)
class CheckResult:
    decision: Decision
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return self.decision.to_json()


def _ref(text: str, what: str) -> tuple[str, str]:
    namespace, _, name = text.rpartition("/")
    try:
        return (
            grammar.check_dns_label(namespace) if namespace else "default",
            grammar.check_object_name(name),
        )
    except ValueError as exc:
        raise CheckInputError(str(exc), what) from None


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CheckInputError(f"{pair!r} is not K=V", "--agent-label")
        try:
            out[grammar.check_label_key(key)] = grammar.check_label_value(value)
        except ValueError as exc:
            raise CheckInputError(str(exc), "--agent-label") from None
    return out


def validate_query(query: CheckQuery) -> None:
    """Everything about the query that does not need the policy; CheckInputError if bad."""
    try:
        parse_ip(query.dst_ip)
    except ValueError as exc:
        raise CheckInputError(str(exc), "--dst-ip") from None
    if not 1 <= query.port <= 65535:
        raise CheckInputError(f"{query.port} is not a port (1..65535)", "--port")
    if query.protocol not in PROTOCOLS:
        raise CheckInputError(f"{query.protocol!r} is not one of TCP, UDP", "--protocol")
    _ref(query.agent, "--agent")
    _labels(query.agent_labels)


def _pick_gateway(
    policies: PolicySet, given: str | None, agent_key: tuple[str, str]
) -> tuple[str, str]:
    if given is not None:
        key = _ref(given, "--gateway")
        if key not in policies.gateways:
            known = ", ".join(f"{ns}/{n}" for ns, n in policies.gateways) or "none"
            raise CheckInputError(f"no EgressGateway {key[0]}/{key[1]} (known: {known})")
        return key
    if len(policies.gateways) == 1:
        return next(iter(policies.gateways))
    declared = [g for g in policies.agent_gateways.get(agent_key, ()) if g in policies.gateways]
    if len(declared) == 1:
        return declared[0]
    if not policies.gateways:
        raise CheckInputError("the manifests define no EgressGateway")
    raise CheckInputError("the manifests define several gateways; choose one with --gateway")


def check_connection(policies: PolicySet, query: CheckQuery) -> CheckResult:
    """Decide one connection of `query` with `policies`; CheckInputError on bad input."""
    validate_query(query)
    agent_key = _ref(query.agent, "--agent")
    gw_key = _pick_gateway(policies, query.gateway, agent_key)
    declared = policies.agents.get(agent_key)
    labels = {**(declared.labels if declared else {}), **_labels(query.agent_labels)}
    refs = policies.agent_gateways.get(agent_key, ())
    warnings = []
    if declared and refs and gw_key not in refs:
        warnings.append(
            f"warning: agent {declared.ref} does not list gateway {gw_key[0]}/{gw_key[1]}"
            " in spec.egressRefs"
        )
    decision = decide(policies.gateways[gw_key], Agent(*agent_key, labels), query.connection)
    return CheckResult(decision, tuple(warnings))


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


def _remote(server: str, query: CheckQuery) -> tuple[dict, tuple[str, ...]]:
    from clrk.cli import admin_client

    with admin_client.connect(server) as client:
        return client.check(query)


@click.command()
@filename_option(required=False, help="Manifest file or directory (repeatable); or use --server.")
@click.option(
    "--server",
    help="Ask the control plane's admin API (HOST:PORT) with the policy in force instead.",
)
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
    server: str | None,
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
    """Decide one connection with the policy in the manifests (-f) or in force (--server).

    Exit 0 when a decision was made (allow or deny), 1 on invalid input.
    """
    if bool(paths) == bool(server):
        raise click.UsageError("give the manifests with -f, or a control plane with --server")
    query = CheckQuery(
        agent_text, dst_ip, port, protocol, hostnames, sni, gateway, tuple(agent_labels)
    )
    try:
        validate_query(query)
        decision, warnings = _remote(server, query) if server else _local(paths, query)
    except CheckInputError as exc:
        raise _click_error(exc) from None
    for warning in warnings:
        click.echo(warning, err=True)
    if output == "json":
        click.echo(json.dumps(decision))
    else:
        click.echo(decision_table(decision, query.connection))
