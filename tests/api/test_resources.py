"""Resource models: defaults as specified and normalised values."""

from __future__ import annotations

import ipaddress

from clrk.api import load_text
from clrk.api.resources import EgressDenyPolicySpec, EgressGatewaySpec, PortSpec, RouteMatch


def test_a_gateway_defaults_to_deny_all_and_forward_dns_with_ttl_bounds():
    spec = EgressGatewaySpec.model_validate({"listeners": [{"name": "t", "protocol": "TCP"}]})
    assert spec.default_policy == "deny-all"
    assert (spec.dns.mode, spec.dns.min_ttl, spec.dns.max_ttl, spec.dns.upstream) == (
        "Forward",
        5.0,
        3600.0,
        [],
    )


def test_a_tls_listener_defaults_to_passthrough():
    spec = EgressGatewaySpec.model_validate(
        {"listeners": [{"name": "t", "protocol": "TLS"}, {"name": "u", "protocol": "UDP"}]}
    )
    assert [lst.tls_mode for lst in spec.listeners] == ["Passthrough", None]


def test_gateway_dns_settings_are_parsed():
    spec = EgressGatewaySpec.model_validate(
        {
            "listeners": [{"name": "t", "protocol": "TCP"}],
            "dns": {"upstream": ["192.0.2.53", "[2001:db8::53]:5353"], "minTTL": "1m30s"},
            "otlp": {"endpoint": "http://collector:4317"},
            "upstreamTLS": {"caBundle": "/etc/ca.pem"},
        }
    )
    assert spec.dns.upstream == [("192.0.2.53", 53), ("2001:db8::53", 5353)]
    assert spec.dns.min_ttl == 90.0 and spec.upstream_tls.ca_bundle == "/etc/ca.pem"


def test_a_match_defaults_to_tcp_any_port_and_every_agent():
    m = RouteMatch.model_validate({})
    assert (m.protocol, m.ports, m.source_agents) == ("TCP", [], None)


def test_hostnames_are_folded_and_cidrs_parsed():
    m = RouteMatch.model_validate(
        {"destinationHostnames": ["API.Example.COM."], "destinationCIDRs": ["2001:DB8::/32"]}
    )
    assert m.destination_hostnames == ["api.example.com"]
    assert m.destination_cidrs == [ipaddress.ip_network("2001:db8::/32")]


def test_a_port_entry_is_an_interval():
    assert PortSpec.model_validate({"port": 443}).interval == (443, 443)
    assert PortSpec.model_validate({"startPort": 8000, "endPort": 8099}).interval == (8000, 8099)


def test_a_deny_policy_defaults_to_403_and_accepts_both_target_forms():
    spec = EgressDenyPolicySpec.model_validate(
        {"targetRef": {"name": "a"}, "targetRefs": [{"name": "b"}]}
    )
    assert spec.deny_response.status_code == 403 and spec.deny_response.message is None
    assert [t.name for t in spec.targets] == ["a", "b"]


def test_the_namespace_defaults_to_default():
    text = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: TaskAgent
metadata: {name: job}
spec: {egressRefs: [{gatewayRef: infra/gw}], image: x}
"""
    (agent,) = load_text(text).resources
    assert agent.ref == "default/job"
    assert agent.spec.egress_refs[0].gateway_ref == "infra/gw"
    assert agent.spec.model_extra == {"image": "x"}
