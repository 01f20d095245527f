"""Compiling resources into per-gateway policies."""

from __future__ import annotations

from clrk.api import Severity
from clrk.policy.index import merge_intervals
from tests.conftest import EXAMPLES, compile_paths, compile_yaml

GW = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners:
  - {name: tcp, protocol: TCP}
  - {name: term, protocol: TLS, tls: {mode: Terminate}}
  - {name: pass, protocol: TLS}
  - {name: web, protocol: HTTP, port: 80}
"""


def test_every_gateway_compiles_with_its_listeners_in_order():
    policies = compile_paths(EXAMPLES)
    assert sorted(policies.gateways) == [
        ("default", n)
        for n in sorted(
            [
                "prod-agents",
                "only-anthropic",
                "customer-data",
                "cluster-internal",
                "model-apis",
                "open-agents",
            ]
        )
    ]
    prod = policies.gateways[("default", "prod-agents")]
    assert [(lst.name, lst.protocol, lst.tls_mode) for lst in prod.listeners] == [
        ("tcp-out", "TCP", None),
        ("tls-out", "TLS", "Terminate"),
    ]


def test_listener_ranks_follow_the_spec_for_routes_and_invert_for_allow_all():
    gw = compile_yaml(GW).gateways[("default", "gw")]
    ranks = {lst.name: (lst.route_rank, lst.default_rank, lst.port) for lst in gw.listeners}
    assert ranks == {
        "tcp": (3, 0, None),
        "term": (0, 3, None),
        "pass": (2, 1, None),
        "web": (1, 2, 80),
    }


def test_indexes_hold_exact_names_wildcards_by_parent_and_cidrs():
    gw = compile_paths(EXAMPLES / "wildcards-cidrs-ranges.yaml").gateways[("default", "model-apis")]
    ix = gw.allow["TCP"]
    assert set(ix.exact) == {"api.openai.com"} and set(ix.wildcard) == {"azure.openai.com"}
    (entry,) = ix.exact["api.openai.com"]
    assert entry.ports == ((443, 443), (8000, 8099))
    assert [lst.name for lst in entry.listeners] == ["tcp-out", "tls-out"]
    assert len(ix.cidr4.lookup(int.from_bytes(bytes([10, 20, 1, 1]), "big"))) == 1
    assert gw.allow["UDP"].empty and gw.deny["TCP"].empty


def test_deny_routes_are_indexed_apart_with_their_response():
    gw = compile_paths(EXAMPLES / "allow-all-deny-paste.yaml").gateways[("default", "open-agents")]
    assert gw.allow["TCP"].empty
    assert "pastebin.com" in gw.deny["TCP"].exact
    response = gw.deny_responses["default/no-paste-sites"]
    assert (response.status_code, response.message) == (
        403,
        "pastebin is blocked for agents; ask #security",
    )


def test_a_match_whose_protocol_fits_none_of_its_listeners_is_warned():
    route = """---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: dns}
spec:
  parentRefs: [{name: gw, sectionName: tcp}]
  rules: [{matches: [{destinationCIDRs: ["192.0.2.53/32"], protocol: UDP}]}]
"""
    policies = compile_yaml(GW + route)
    (finding,) = policies.findings
    assert finding.severity is Severity.WARNING
    assert finding.field == "spec.rules[0].matches[0].protocol"
    assert "allows nothing" in finding.message


def test_declared_agents_carry_their_labels_and_gateways():
    policies = compile_paths(EXAMPLES / "prod-agents")
    bot = policies.agents[("default", "bot")]
    assert dict(bot.labels) == {"team": "data", "tier": "prod"}
    assert policies.agent_gateways[("default", "bot")] == (("default", "prod-agents"),)


def test_overlapping_and_adjacent_port_intervals_merge():
    assert merge_intervals([(8000, 8099), (443, 443), (8100, 8200), (444, 450)]) == (
        (443, 450),
        (8000, 8200),
    )
