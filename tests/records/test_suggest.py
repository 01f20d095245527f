"""`clrk suggest`'s core: which routes the denial records of real decisions suggest."""

from __future__ import annotations

import yaml

from clrk.api import load_text
from clrk.policy import Connection, decide
from clrk.policy.loaded import compile_loaded
from clrk.records.schema import dial_denied, dns_denied
from clrk.records.suggest import suggest
from tests.conftest import compile_yaml

GATEWAY = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  mode: Report
  listeners:
  - {name: tcp-out, protocol: TCP}
  - {name: tls-term, protocol: TLS, port: 443, tls: {mode: Terminate}}
  - {name: tls-out, protocol: TLS, port: 443}
  - {name: dns-out, protocol: UDP, port: 53}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: bot, labels: {app: bot}}
spec: {egressRefs: [{gatewayRef: gw}]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: plain}
spec: {egressRefs: [{gatewayRef: gw}]}
"""
POLICY = compile_yaml(GATEWAY).gateways[("default", "gw")]
BOT, PLAIN = POLICY.agent_index[("default", "bot")], POLICY.agent_index[("default", "plain")]


def flat(record) -> dict:
    return {"signal": "log", "name": record.name, "time": 1, "attributes": dict(record.attributes)}


def denied(agent, ip, port, *names, protocol="TCP", own=None):
    conn = Connection(protocol, ip, port, frozenset(names))
    decision = decide(POLICY, agent, conn)
    record = dial_denied(
        decision,
        agent=agent,
        dst_ip=ip,
        dst_port=port,
        transport=protocol.lower(),
        dst_name=min(names) if names else None,
    )
    return flat(record)


def run(*records, wildcards=0):
    return suggest(records, {"default/gw": POLICY}, wildcards)


def test_exact_names_ports_and_protocol_on_the_least_intrusive_listener_fitting_the_port():
    out = run(
        denied(BOT, "192.0.2.1", 443, "api.example.com"),
        denied(BOT, "192.0.2.2", 5432, "db.example.com"),
        denied(BOT, "192.0.2.3", 53, "ns.example.com", protocol="UDP"),
    )
    by_listener = {r["spec"]["parentRefs"][0]["sectionName"]: r for r in out.routes}
    assert set(by_listener) == {"tls-out", "tcp-out", "dns-out"}  # never tls-term
    [match] = by_listener["tls-out"]["spec"]["rules"][0]["matches"]
    assert match == {
        "destinationHostnames": ["api.example.com"],
        "ports": [{"port": 443}],
        "protocol": "TCP",
        "sourceAgents": {"matchLabels": {"app": "bot"}},
    }
    assert by_listener["dns-out"]["spec"]["rules"][0]["matches"][0]["protocol"] == "UDP"


def test_a_cidr_only_for_a_connection_without_any_name():
    out = run(denied(BOT, "198.51.100.7", 8080), denied(BOT, "2001:db8::7", 8080))
    [match] = [m for r in out.routes for m in r["spec"]["rules"][0]["matches"]]
    assert match["destinationCIDRs"] == ["198.51.100.7/32", "2001:db8::7/128"]
    assert "destinationHostnames" not in match


def test_wildcards_only_when_asked_and_only_for_enough_siblings():
    records = [denied(BOT, "192.0.2.1", 443, f"{n}.cdn.example.com") for n in ("a", "b", "c")]
    records.append(denied(BOT, "192.0.2.9", 443, "other.example.net"))

    def names(out):
        return out.routes[0]["spec"]["rules"][0]["matches"][0]["destinationHostnames"]

    assert names(run(*records)) == [f"{n}.cdn.example.com" for n in "abc"] + ["other.example.net"]
    assert names(run(*records, wildcards=3)) == ["*.cdn.example.com", "other.example.net"]
    assert len(names(run(*records, wildcards=4))) == 4


def test_never_a_blocked_address_an_unknown_agent_or_a_credential_misuse():
    misuse = {
        "signal": "log",
        "name": "egress.http",
        "time": 1,
        "attributes": {"clrk.egress.deny_reason": "credential_misuse", "agent.name": "bot"},
    }
    out = run(
        denied(BOT, "169.254.169.254", 80, "metadata.example.com"),
        denied(None, "192.0.2.1", 443, "api.example.com"),
        misuse,
    )
    assert out.routes == [] and out.rows == []


def test_a_dns_denial_alone_suggests_nothing():
    decision = decide(POLICY, BOT, Connection("TCP", "192.0.2.1", 1))._replace(through=None)
    record = dns_denied(
        decision, agent=BOT, query_name="x.example.com", query_type=1, peer_address="1.1.1.1",
        peer_port=53,
    )  # fmt: skip
    assert run(flat(record)).routes == []


def test_an_agent_without_labels_is_flagged_and_gets_no_selector():
    out = run(denied(PLAIN, "192.0.2.1", 443, "api.example.com"))
    [route] = out.routes
    assert "sourceAgents" not in route["spec"]["rules"][0]["matches"][0]
    assert out.rows[0][1] == "default/plain (no labels: every agent)"


def test_the_suggested_routes_load_and_allow_what_was_denied_in_enforce_mode():
    records = [
        denied(BOT, "192.0.2.1", 443, "api.example.com"),
        denied(BOT, "198.51.100.7", 8080),
    ]
    routes = yaml.safe_dump_all(run(*records).routes)
    text = GATEWAY.replace("mode: Report", "mode: Enforce") + "\n---\n" + routes
    loaded = compile_loaded(load_text(text, "suggested.yaml"))
    assert not loaded.blocked, [f.line() for f in loaded.findings]
    enforce = loaded.compiled.gateways[("default", "gw")]
    for ip, port, names in (("192.0.2.1", 443, {"api.example.com"}), ("198.51.100.7", 8080, ())):
        assert decide(enforce, BOT, Connection("TCP", ip, port, frozenset(names))).allowed
    assert not decide(
        enforce, BOT, Connection("TCP", "192.0.2.1", 443, frozenset({"x.org"}))
    ).passes
    assert not decide(
        enforce, PLAIN, Connection("TCP", "192.0.2.1", 443, frozenset({"api.example.com"}))
    ).passes
