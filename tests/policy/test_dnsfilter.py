"""dns.mode Filtered: which names an agent's patterns could ever match."""

from __future__ import annotations

from clrk.policy import Agent
from clrk.policy.dnsfilter import name_could_match
from tests.conftest import compile_yaml
from tests.worker_dialer.dialer_policy import POLICY_YAML, gateway_policy

A = Agent("default", "agent-a", {"team": "a"})
POLICY = gateway_policy()


def test_exact_and_wildcard_names_of_allow_and_deny_routes_could_match():
    for name in ("api.example.com", "API.example.com.", "x.example.org", "paste.example.net"):
        assert name_could_match(POLICY, A, name)
    for name in ("example.org", "a.b.example.org", "evil.example.com"):
        assert not name_could_match(POLICY, A, name)


def test_an_unknown_agent_may_resolve_nothing():
    assert not name_could_match(POLICY, None, "api.example.com")


def test_allow_all_and_match_everything_rules_filter_nothing():
    allow_all = compile_yaml(
        POLICY_YAML.replace("listeners:", "defaultPolicy: allow-all\n  listeners:")
    )
    assert name_could_match(allow_all.gateways[("default", "gw")], A, "anything.test")
    open_route = POLICY_YAML.replace(
        "[{destinationCIDRs: [203.0.113.0/24], ports: [{startPort: 5432, endPort: 5439}]}]",
        "[{ports: [{port: 22}]}]",
    )
    assert name_could_match(compile_yaml(open_route).gateways[("default", "gw")], A, "x.test")


def test_selectors_limit_the_names_an_agent_may_resolve():
    text = POLICY_YAML.replace(
        "[{destinationHostnames: [time.example.com], protocol: UDP,",
        "[{destinationHostnames: [time.example.com], sourceAgents: {matchLabels: {team: b}},"
        " protocol: UDP,",
    )
    policy = compile_yaml(text).gateways[("default", "gw")]
    assert not name_could_match(policy, A, "time.example.com")
    assert name_could_match(policy, Agent("default", "x", {"team": "b"}), "time.example.com")
