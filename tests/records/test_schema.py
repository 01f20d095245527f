"""Record builders (SPEC 8) over decisions made by the real decide() on real manifests.

Each test is one sentence about what a record says.
"""

from __future__ import annotations

import pytest

from clrk.policy import Agent, Connection, Decision, Reason, decide
from clrk.records import schema as s
from clrk.records.schema import dial_denied, dns_denied, http_request, tcp_allowed
from tests.conftest import EXAMPLES, compile_paths, compile_yaml

BOT = Agent("default", "bot", {"team": "data", "tier": "prod"})

SPEC8_DENIAL_KEYS = {
    "clrk.egress.deny_reason",
    "clrk.egress.gateway",
    "agent.name",
    "agent.namespace",
    "clrk.dst.name",
    "network.peer.address",
    "network.peer.port",
    "network.transport",
    "clrk.egress.policy.default",
    "clrk.egress.enforced",
}

NO_LISTENER = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  defaultPolicy: deny-all
  listeners: [{name: pg, protocol: TCP, port: 5432}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: web}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{destinationHostnames: [web.example.com], ports: [{port: 443}]}]
"""


def _gateways():
    prod = compile_paths(EXAMPLES / "prod-agents").gateways[("default", "prod-agents")]
    open_ = compile_paths(EXAMPLES / "allow-all-deny-paste.yaml").gateways[
        ("default", "open-agents")
    ]
    no_listener = compile_yaml(NO_LISTENER).gateways[("default", "gw")]
    return prod, open_, no_listener


PROD, OPEN, NO_LISTENER_GW = _gateways()


def tcp(ip, port, *names, sni=None):
    return Connection("TCP", ip, port, frozenset(names), sni)


# (case, gateway, agent, connection, dst_name known to the dialer) -> expected attributes
DENIALS = [
    pytest.param(
        PROD,
        BOT,
        tcp("203.0.113.10", 444, "api.anthropic.com"),
        "api.anthropic.com",
        {
            "clrk.egress.deny_reason": "policy",
            "clrk.egress.gateway": "default/prod-agents",
            "agent.name": "bot",
            "agent.namespace": "default",
            "clrk.dst.name": "api.anthropic.com",
            "network.peer.address": "203.0.113.10",
            "network.peer.port": 444,
            "network.transport": "tcp",
            "clrk.egress.policy.default": "deny-all",
        },
        id="a policy denial names no route and keeps the best known name",
    ),
    pytest.param(
        OPEN,
        BOT,
        tcp("192.0.2.66", 443, "pastebin.com"),
        None,
        {
            "clrk.egress.deny_reason": "deny_policy",
            "clrk.egress.gateway": "default/open-agents",
            "agent.name": "bot",
            "agent.namespace": "default",
            "clrk.dst.name": "pastebin.com",
            "network.peer.address": "192.0.2.66",
            "network.peer.port": 443,
            "network.transport": "tcp",
            "clrk.egress.policy.default": "allow-all",
            "clrk.egress.route": "default/paste-sites",
            "clrk.egress.rule": 0,
            "clrk.egress.listener": "tls-out",
            "clrk.egress.deny_policy": "default/no-paste-sites",
        },
        id="a deny policy denial names its route, rule and deny policy",
    ),
    pytest.param(
        OPEN,
        BOT,
        tcp("169.254.169.254", 80),
        None,
        {
            "clrk.egress.deny_reason": "blocked_address",
            "clrk.egress.gateway": "default/open-agents",
            "agent.name": "bot",
            "agent.namespace": "default",
            "clrk.dst.name": "",
            "network.peer.address": "169.254.169.254",
            "network.peer.port": 80,
            "network.transport": "tcp",
            "clrk.egress.policy.default": "allow-all",
        },
        id="a blocked address with no name has an empty dst name",
    ),
    pytest.param(
        PROD,
        BOT,
        tcp("203.0.113.10", 443, "api.anthropic.com", sni="evil.com"),
        "api.anthropic.com",
        {
            "clrk.egress.deny_reason": "sni_mismatch",
            "clrk.egress.gateway": "default/prod-agents",
            "agent.name": "bot",
            "agent.namespace": "default",
            "clrk.dst.name": "evil.com",
            "network.peer.address": "203.0.113.10",
            "network.peer.port": 443,
            "network.transport": "tcp",
            "clrk.egress.policy.default": "deny-all",
        },
        id="an sni mismatch records the name the agent claimed",
    ),
    pytest.param(
        PROD,
        BOT,
        tcp("203.0.113.66", 443, sni="api.anthropic.com"),
        "",
        {
            "clrk.egress.deny_reason": "sni_unverified",
            "clrk.egress.gateway": "default/prod-agents",
            "agent.name": "bot",
            "agent.namespace": "default",
            "clrk.dst.name": "api.anthropic.com",
            "network.peer.address": "203.0.113.66",
            "network.peer.port": 443,
            "network.transport": "tcp",
            "clrk.egress.policy.default": "deny-all",
            "clrk.egress.route": "default/anthropic-tls",
            "clrk.egress.rule": 0,
            "clrk.egress.listener": "tls-out",
        },
        id="an unverified sni records the name and the route it would have opened",
    ),
    pytest.param(
        PROD,
        None,
        tcp("203.0.113.10", 443, "api.anthropic.com"),
        "api.anthropic.com",
        {
            "clrk.egress.deny_reason": "unknown_agent",
            "clrk.egress.gateway": "default/prod-agents",
            "agent.name": "",
            "agent.namespace": "",
            "clrk.dst.name": "api.anthropic.com",
            "network.peer.address": "203.0.113.10",
            "network.peer.port": 443,
            "network.transport": "tcp",
            "clrk.egress.policy.default": "deny-all",
        },
        id="an unknown agent has empty agent name and namespace",
    ),
    pytest.param(
        NO_LISTENER_GW,
        BOT,
        tcp("192.0.2.1", 443, "web.example.com"),
        None,
        {
            "clrk.egress.deny_reason": "no_listener",
            "clrk.egress.gateway": "default/gw",
            "agent.name": "bot",
            "agent.namespace": "default",
            "clrk.dst.name": "web.example.com",
            "network.peer.address": "192.0.2.1",
            "network.peer.port": 443,
            "network.transport": "tcp",
            "clrk.egress.policy.default": "deny-all",
            "clrk.egress.route": "default/web",
            "clrk.egress.rule": 0,
        },
        id="a route that matched without a listener is named",
    ),
]


@pytest.mark.parametrize(("policy", "agent", "conn", "dst_name", "expected"), DENIALS)
def test_each_denial_reason_gives_exactly_the_spec_attributes(
    policy, agent, conn, dst_name, expected
):
    decision = decide(policy, agent, conn)
    record = dial_denied(
        decision,
        agent=agent,
        dst_ip=conn.dst_ip,
        dst_port=conn.dst_port,
        transport="tcp",
        dst_name=dst_name,
    )
    assert record.name == "egress.dial.denied"
    assert (record.severity, record.error) == ("WARN", True)
    assert dict(record.attributes) == {**expected, "clrk.egress.enforced": True}
    assert record.attributes.keys() >= SPEC8_DENIAL_KEYS


def test_the_route_attribute_appears_only_when_a_route_decided():
    for policy, agent, conn, _name, _expected in (p.values for p in DENIALS):
        decision = decide(policy, agent, conn)
        record = dial_denied(
            decision, agent=agent, dst_ip="192.0.2.1", dst_port=1, transport="tcp", dst_name=None
        )
        assert ("clrk.egress.route" in record.attributes) == (decision.route is not None)


def test_connection_id_source_and_sni_are_added_when_known():
    decision = Decision(Reason.POLICY, "default/gw", "default/bot", "deny-all")
    record = dial_denied(
        decision,
        agent=BOT,
        dst_ip="2001:db8::1",
        dst_port=443,
        transport="TCP",
        dst_name=None,
        connection_id="c-42",
        src="198.18.0.2",
        sni="x.example",
        time_ns=123,
    )
    assert record.attributes["clrk.connection.id"] == "c-42"
    assert record.attributes["client.address"] == "198.18.0.2"
    assert record.attributes["tls.client.server_name"] == "x.example"
    assert record.attributes["network.transport"] == "tcp"
    assert (record.start_ns, record.end_ns) == (123, 123)


def test_a_udp_flow_denial_says_udp():
    decision = Decision(Reason.POLICY, "default/gw", "default/bot", "deny-all")
    record = dial_denied(
        decision, agent=BOT, dst_ip="192.0.2.5", dst_port=53, transport="udp", dst_name=None
    )
    assert record.attributes["network.transport"] == "udp"


def test_a_denial_record_refuses_an_allow_decision_and_an_unknown_transport():
    allow = Decision(Reason.ALLOWED, "default/gw", "default/bot", "deny-all", "default/r", 0)
    deny = Decision(Reason.POLICY, "default/gw", "default/bot", "deny-all")
    with pytest.raises(ValueError, match="needs a denial"):
        dial_denied(allow, agent=BOT, dst_ip="192.0.2.1", dst_port=1, transport="tcp", dst_name="")
    with pytest.raises(ValueError, match="tcp or udp"):
        dial_denied(deny, agent=BOT, dst_ip="192.0.2.1", dst_port=1, transport="sctp", dst_name="")


def test_a_filtered_dns_query_is_a_dns_denial_with_the_query_name():
    decision = Decision(Reason.DNS_FILTERED, "default/gw", "default/bot", "deny-all")
    record = dns_denied(
        decision,
        agent=BOT,
        query_name="Secret-Data.Evil.Example.",
        query_type="TXT",
        peer_address="198.18.0.1",
        peer_port=53,
    )
    assert record.name == "egress.dns.denied"
    assert (record.severity, record.error) == ("WARN", True)
    assert dict(record.attributes) == {
        "clrk.egress.deny_reason": "dns_filtered",
        "clrk.egress.enforced": True,
        "clrk.egress.gateway": "default/gw",
        "agent.name": "bot",
        "agent.namespace": "default",
        "dns.question.name": "secret-data.evil.example",
        "clrk.dns.question.type": "TXT",
        "clrk.dst.name": "secret-data.evil.example",
        "network.peer.address": "198.18.0.1",
        "network.peer.port": 53,
        "network.transport": "udp",
        "clrk.egress.policy.default": "deny-all",
    }


def test_a_dns_denial_for_an_unknown_agent_has_empty_agent_fields():
    decision = Decision(Reason.DNS_FILTERED, "default/gw", None, "deny-all")
    record = dns_denied(
        decision,
        agent=None,
        query_name="a.example",
        query_type=1,
        peer_address="198.18.0.1",
        peer_port=53,
        transport="tcp",
    )
    assert (record.attributes["agent.name"], record.attributes["agent.namespace"]) == ("", "")
    assert record.attributes["network.transport"] == "tcp"


def test_an_allowed_connection_records_bytes_duration_route_listener_name_and_peer():
    record = tcp_allowed(
        gateway="default/prod-agents",
        agent=BOT,
        route="default/anthropic-tls",
        listener="tls-out",
        dst_ip="203.0.113.10",
        dst_port=443,
        dst_name="api.anthropic.com",
        bytes_up=100,
        bytes_down=2000,
        start_ns=1_000_000_000,
        end_ns=1_250_000_000,
        connection_id="c-1",
        src="198.18.0.2",
    )
    assert record.name == "egress.tcp"
    assert (record.severity, record.error) == ("INFO", False)
    assert (record.start_ns, record.end_ns) == (1_000_000_000, 1_250_000_000)
    attrs = record.attributes
    assert attrs[s.BYTES_UP] == 100 and attrs[s.BYTES_DOWN] == 2000
    assert attrs[s.DURATION_MS] == 250
    assert attrs[s.ROUTE] == "default/anthropic-tls"
    assert attrs[s.LISTENER] == "tls-out"
    assert attrs[s.REASON] == "allowed"
    assert attrs[s.DST_NAME] == "api.anthropic.com"
    assert (attrs[s.PEER_ADDRESS], attrs[s.PEER_PORT]) == ("203.0.113.10", 443)
    assert (attrs[s.CONNECTION_ID], attrs[s.CLIENT_ADDRESS]) == ("c-1", "198.18.0.2")
    assert s.DENY_REASON not in attrs


def test_a_connection_without_a_route_was_allowed_by_default():
    record = tcp_allowed(
        gateway="default/open",
        agent=None,
        route=None,
        listener=None,
        dst_ip="192.0.2.1",
        dst_port=1,
        dst_name=None,
        bytes_up=0,
        bytes_down=0,
        start_ns=None,
        end_ns=None,
        duration_ms=7,
    )
    attrs = record.attributes
    assert attrs[s.REASON] == "allowed_default" and attrs[s.DURATION_MS] == 7
    assert (attrs[s.AGENT_NAME], attrs[s.DST_NAME]) == ("", "")
    assert s.ROUTE not in attrs and s.LISTENER not in attrs


@pytest.mark.parametrize(("status", "error"), [(200, False), (404, False), (503, True)])
def test_an_http_request_records_method_authority_path_status_and_route(status, error):
    record = http_request(
        gateway="default/gw",
        route="default/web",
        rule=1,
        listener="web",
        agent=BOT,
        method="GET",
        authority="API.Example.com:8443",
        path="/v1/x",
        status=status,
    )
    assert record.name == "egress.http"
    assert record.error is error
    assert {k: record.attributes[k] for k in (s.HTTP_METHOD, s.HTTP_AUTHORITY, s.HTTP_PATH)} == {
        s.HTTP_METHOD: "GET",
        s.HTTP_AUTHORITY: "API.Example.com:8443",
        s.HTTP_PATH: "/v1/x",
    }
    assert record.attributes[s.HTTP_STATUS] == status
    assert record.attributes[s.ROUTE] == "default/web"
    assert record.attributes[s.DST_NAME] == "api.example.com"
    assert (record.attributes[s.RULE], record.attributes[s.LISTENER]) == (1, "web")
    assert record.attributes[s.REASON] == "allowed"


def test_a_denied_http_request_names_the_deny_policy_and_warns():
    record = http_request(
        gateway="default/gw",
        route="default/paste",
        rule=0,
        listener="web",
        agent=None,
        method="POST",
        authority="[2001:DB8::1]:443",
        path="/",
        status=451,
        dst_name="paste.example.com",
        deny_policy="default/no-paste",
    )
    assert (record.severity, record.error) == ("WARN", True)
    attrs = record.attributes
    assert (attrs[s.DENY_REASON], attrs[s.DENY_POLICY]) == ("deny_policy", "default/no-paste")
    assert attrs[s.DST_NAME] == "paste.example.com" and s.REASON not in attrs


@pytest.mark.parametrize(
    ("authority", "host"),
    [("API.Example.com:8443", "api.example.com"), ("a.example.", "a.example"),
     ("[2001:DB8::1]:443", "2001:db8::1"), ("2001:db8::1", "2001:db8::1")],
)  # fmt: skip
def test_the_host_of_an_authority(authority, host):
    assert s.host_name(authority) == host
