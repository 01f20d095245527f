"""decide() on the example manifests and on small inline policies.

Each test is one sentence about what the gateway does.
"""

from __future__ import annotations

import pytest

from clrk.policy import Agent, Connection, OwnAddresses, Reason, decide
from tests.conftest import EXAMPLES, compile_paths, compile_yaml

BOT = Agent("default", "bot", {"team": "data", "tier": "prod"})


@pytest.fixture(scope="module")
def prod():
    return compile_paths(EXAMPLES / "prod-agents").gateways[("default", "prod-agents")]


@pytest.fixture(scope="module")
def model_apis():
    return compile_paths(EXAMPLES / "wildcards-cidrs-ranges.yaml").gateways[
        ("default", "model-apis")
    ]


@pytest.fixture(scope="module")
def open_agents():
    return compile_paths(EXAMPLES / "allow-all-deny-paste.yaml").gateways[
        ("default", "open-agents")
    ]


def tcp(ip, port, *names, sni=None):
    return Connection("TCP", ip, port, frozenset(names), sni)


# --- the acceptance cases -------------------------------------------------------------


def test_api_anthropic_com_on_443_is_allowed_on_tls_out_via_anthropic_tls(prod):
    d = decide(prod, BOT, tcp("203.0.113.10", 443, "api.anthropic.com"))
    assert (d.reason, d.listener, d.route, d.rule, d.hostname) == (
        Reason.ALLOWED,
        "tls-out",
        "default/anthropic-tls",
        0,
        "api.anthropic.com",
    )


def test_the_same_name_on_port_444_is_denied_by_policy(prod):
    d = decide(prod, BOT, tcp("203.0.113.10", 444, "api.anthropic.com"))
    assert (d.reason, d.route, d.listener) == (Reason.POLICY, None, None)


def test_a_name_under_an_exact_entry_is_not_allowed_by_it(model_apis):
    assert (
        decide(model_apis, BOT, tcp("203.0.113.7", 443, "eu.api.openai.com")).reason
        == Reason.POLICY
    )


def test_one_label_in_front_of_a_wildcard_is_allowed(model_apis):
    d = decide(model_apis, BOT, tcp("203.0.113.7", 443, "x.azure.openai.com"))
    assert (d.reason, d.hostname) == (Reason.ALLOWED, "x.azure.openai.com")


def test_a_wildcard_does_not_match_its_parent_or_two_labels_in_front(model_apis):
    for name in ("azure.openai.com", "a.b.azure.openai.com"):
        assert decide(model_apis, BOT, tcp("203.0.113.7", 443, name)).reason == Reason.POLICY


def test_an_ipv4_mapped_ipv6_destination_is_treated_as_ipv4(model_apis):
    mapped = decide(model_apis, BOT, tcp("::ffff:10.20.1.1", 443))
    plain = decide(model_apis, BOT, tcp("10.20.1.1", 443))
    assert mapped == plain
    assert mapped.reason == Reason.ALLOWED and mapped.hostname is None


@pytest.mark.parametrize("ip", ["127.0.0.1", "169.254.169.254"])
def test_loopback_and_metadata_are_blocked_even_under_allow_all(open_agents, ip):
    assert decide(open_agents, BOT, tcp(ip, 443)).reason == Reason.BLOCKED_ADDRESS


@pytest.mark.parametrize("ip", ["127.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "::1"])
def test_an_allowed_hostname_bound_to_a_blocked_address_is_blocked(prod, ip):
    d = decide(prod, BOT, tcp(ip, 443, "api.anthropic.com"))
    assert d.reason == Reason.BLOCKED_ADDRESS


def test_sni_that_contradicts_the_dns_binding_is_denied_sni_mismatch(prod):
    d = decide(prod, BOT, tcp("203.0.113.10", 443, "api.anthropic.com", sni="evil.com"))
    assert (d.reason, d.hostname) == (Reason.SNI_MISMATCH, "evil.com")


def test_a_deny_policy_route_is_denied_deny_policy_on_an_allow_all_gateway(open_agents):
    d = decide(open_agents, BOT, tcp("192.0.2.66", 443, "pastebin.com"))
    assert (d.reason, d.route, d.deny_policy, d.listener) == (
        Reason.DENY_POLICY,
        "default/paste-sites",
        "default/no-paste-sites",
        "tls-out",
    )


# --- the rest of SPEC 4 -----------------------------------------------------------------


def test_unrelated_traffic_on_an_allow_all_gateway_is_allowed_by_default_on_tcp(open_agents):
    d = decide(open_agents, BOT, tcp("198.51.100.80", 443, "example.org"))
    assert (d.reason, d.listener, d.route) == (Reason.ALLOWED_DEFAULT, "tcp-out", None)


def test_a_connection_with_no_agent_is_denied_unknown_agent(prod):
    assert decide(prod, None, tcp("203.0.113.10", 443, "api.anthropic.com")).reason == (
        Reason.UNKNOWN_AGENT
    )


def test_a_blocked_address_stays_blocked_for_an_unknown_agent(prod):
    assert decide(prod, None, tcp("127.0.0.1", 443)).reason == Reason.BLOCKED_ADDRESS


def test_sni_alone_on_a_tls_route_needs_confirmation_when_the_agent_resolved_nothing(prod):
    d = decide(prod, BOT, tcp("203.0.113.10", 443, sni="API.Anthropic.com."))
    assert (d.reason, d.hostname) == (Reason.SNI_UNVERIFIED, "api.anthropic.com")


def test_sni_alone_never_opens_a_tcp_route(prod):
    d = decide(prod, BOT, tcp("203.0.113.66", 5432, sni="pg.prod.internal"))
    assert (d.reason, d.hostname) == (Reason.POLICY, None)


def test_matching_sni_and_dns_binding_is_allowed(prod):
    d = decide(prod, BOT, tcp("203.0.113.10", 443, "api.anthropic.com", sni="api.anthropic.com"))
    assert d.reason == Reason.ALLOWED


def test_a_hard_coded_ip_with_no_dns_binding_matches_only_cidr_rules(model_apis, prod):
    assert decide(prod, BOT, tcp("203.0.113.10", 443)).reason == Reason.POLICY
    d = decide(model_apis, BOT, tcp("203.0.113.5", 8050))
    assert (d.reason, d.hostname) == (Reason.ALLOWED, None)


def test_port_ranges_include_both_ends_and_nothing_outside(model_apis):
    for port, reason in ((7999, "policy"), (8000, "allowed"), (8099, "allowed"), (8100, "policy")):
        assert decide(model_apis, BOT, tcp("203.0.113.5", port)).reason == reason


def test_names_are_matched_case_insensitively_and_without_trailing_dot(prod):
    d = decide(prod, BOT, tcp("198.51.100.20", 5432, "PG.Prod.Internal."))
    assert (d.reason, d.listener, d.hostname) == (Reason.ALLOWED, "tcp-out", "pg.prod.internal")


def test_udp_is_not_allowed_by_a_tcp_match(prod):
    conn = Connection("UDP", "198.51.100.20", 5432, frozenset({"pg.prod.internal"}))
    assert decide(prod, BOT, conn).reason == Reason.POLICY


SELECTORS = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp-out, protocol: TCP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: data-team}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - destinationHostnames: [warehouse.example.com]
      sourceAgents:
        matchLabels: {team: data}
        matchExpressions:
        - {key: tier, operator: In, values: [prod, staging]}
        - {key: quarantined, operator: DoesNotExist}
        - {key: region, operator: NotIn, values: [cn]}
        - {key: owner, operator: Exists}
"""


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"team": "data", "tier": "prod", "owner": "a"}, "allowed"),
        ({"team": "data", "tier": "staging", "owner": "a", "region": "eu"}, "allowed"),
        ({"team": "data", "tier": "dev", "owner": "a"}, "policy"),
        ({"team": "web", "tier": "prod", "owner": "a"}, "policy"),
        ({"team": "data", "tier": "prod", "owner": "a", "quarantined": ""}, "policy"),
        ({"team": "data", "tier": "prod", "owner": "a", "region": "cn"}, "policy"),
        ({"team": "data", "tier": "prod"}, "policy"),
        ({}, "policy"),
    ],
)
def test_source_agent_selectors_pick_agents_by_their_labels(labels, reason):
    gw = compile_yaml(SELECTORS).gateways[("default", "gw")]
    d = decide(gw, Agent("default", "a", labels), tcp("192.0.2.1", 443, "warehouse.example.com"))
    assert d.reason == reason


LISTENERS = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  defaultPolicy: %s
  listeners:
  - {name: tcp, protocol: TCP}
  - {name: pass, protocol: TLS}
  - {name: http, protocol: HTTP}
  - {name: term, protocol: TLS, tls: {mode: Terminate}}
  - {name: pg, protocol: TCP, port: 5432}
  - {name: dns, protocol: UDP}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: everywhere}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - destinationHostnames: [api.example.com]
    - destinationHostnames: [api.example.com]
      protocol: UDP
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: plain}
spec:
  parentRefs: [{name: gw, sectionName: tcp}, {name: gw, sectionName: pass}]
  rules:
  - matches:
    - destinationHostnames: [plain.example.com]
"""


@pytest.fixture(scope="module")
def listeners():
    return compile_yaml(LISTENERS % "deny-all").gateways[("default", "gw")]


def test_a_listener_serving_exactly_the_destination_port_wins(listeners):
    assert decide(listeners, BOT, tcp("192.0.2.1", 5432, "api.example.com")).listener == "pg"


def test_tls_terminate_beats_http_beats_passthrough_beats_tcp(listeners):
    assert decide(listeners, BOT, tcp("192.0.2.1", 443, "api.example.com")).listener == "term"
    assert decide(listeners, BOT, tcp("192.0.2.1", 443, "plain.example.com")).listener == "pass"


def test_a_listener_with_a_port_serves_no_other_port(listeners):
    assert decide(listeners, BOT, tcp("192.0.2.1", 80, "plain.example.com")).listener == "pass"


def test_udp_goes_to_a_udp_listener(listeners):
    d = decide(listeners, BOT, Connection("UDP", "192.0.2.1", 443, frozenset({"api.example.com"})))
    assert (d.reason, d.listener) == (Reason.ALLOWED, "dns")


def test_allow_all_traffic_takes_the_least_intrusive_listener():
    gw = compile_yaml(LISTENERS % "allow-all").gateways[("default", "gw")]
    d = decide(gw, BOT, tcp("192.0.2.1", 22, "ssh.example.com"))
    assert (d.reason, d.listener) == (Reason.ALLOWED_DEFAULT, "tcp")


NO_LISTENER = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  defaultPolicy: %s
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


def test_a_matching_route_with_no_listener_for_the_port_is_denied_no_listener():
    gw = compile_yaml(NO_LISTENER % "deny-all").gateways[("default", "gw")]
    d = decide(gw, BOT, tcp("192.0.2.1", 443, "web.example.com"))
    assert (d.reason, d.route, d.listener) == (Reason.NO_LISTENER, "default/web", None)


def test_allow_all_with_no_listener_for_the_port_is_denied_no_listener():
    gw = compile_yaml(NO_LISTENER % "allow-all").gateways[("default", "gw")]
    assert decide(gw, BOT, tcp("192.0.2.1", 443, "other.example.com")).reason == Reason.NO_LISTENER


EXPLICIT = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  defaultPolicy: allow-all
  listeners: [{name: tcp, protocol: TCP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: metadata-service}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{destinationCIDRs: ["169.254.169.254/32"], ports: [{port: 80}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: whole-internet}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{destinationCIDRs: ["0.0.0.0/0", "::/0"]}]
  - matches: [{destinationHostnames: [localhost.example.com]}]
"""


def test_an_explicit_cidr_inside_a_blocked_range_opens_it():
    gw = compile_yaml(EXPLICIT).gateways[("default", "gw")]
    d = decide(gw, BOT, tcp("169.254.169.254", 80))
    assert (d.reason, d.route) == (Reason.ALLOWED, "default/metadata-service")


def test_the_explicit_opening_is_still_limited_by_its_ports():
    gw = compile_yaml(EXPLICIT).gateways[("default", "gw")]
    assert decide(gw, BOT, tcp("169.254.169.254", 443)).reason == Reason.BLOCKED_ADDRESS


def test_a_cidr_wider_than_the_blocked_range_does_not_open_it():
    gw = compile_yaml(EXPLICIT).gateways[("default", "gw")]
    for ip in ("127.0.0.1", "::1", "fe80::1", "224.0.0.251", "0.0.0.0", "255.255.255.255"):
        assert decide(gw, BOT, tcp(ip, 80)).reason == Reason.BLOCKED_ADDRESS, ip


def test_a_hostname_rule_never_opens_a_blocked_address():
    gw = compile_yaml(EXPLICIT).gateways[("default", "gw")]
    assert decide(gw, BOT, tcp("127.0.0.1", 80, "localhost.example.com")).reason == (
        Reason.BLOCKED_ADDRESS
    )


@pytest.mark.parametrize(
    "ip",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2001:0:7f00:1::1",  # Teredo with server 127.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo with client 127.0.0.1
    ],
)
def test_ipv6_forms_that_embed_a_blocked_ipv4_address_are_blocked(open_agents, ip):
    assert decide(open_agents, BOT, tcp(ip, 443)).reason == Reason.BLOCKED_ADDRESS


@pytest.mark.parametrize("ip", ["64:ff9b::c000:201", "2002:c000:201::1", "2001:db8::1"])
def test_ipv6_forms_that_embed_an_ordinary_address_are_not_blocked(open_agents, ip):
    assert decide(open_agents, BOT, tcp(ip, 443)).reason == Reason.ALLOWED_DEFAULT


def test_the_gateways_own_addresses_are_blocked():
    gw = compile_yaml(EXPLICIT).gateways[("default", "gw")]
    own = OwnAddresses.of(["192.0.2.10"])
    assert decide(gw, BOT, tcp("192.0.2.10", 443), own).reason == Reason.BLOCKED_ADDRESS
    assert decide(gw, BOT, tcp("192.0.2.11", 443), own).reason == Reason.ALLOWED
    assert decide(gw, BOT, tcp("192.0.2.10", 443)).reason == Reason.ALLOWED  # not compiled in


def test_no_cidr_opens_the_gateways_own_addresses_or_its_local_ranges():
    """A connection there reaches the gateway itself: not even a CIDR naming exactly
    that address opens it, and loopback as a whole is own under `clrk up`."""
    text = (
        EXPLICIT
        + """---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: exact}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{destinationCIDRs: ["192.0.2.10/32", "127.0.0.2/32", "::1/128"]}]
"""
    )
    gw = compile_yaml(text).gateways[("default", "gw")]
    assert decide(gw, BOT, tcp("127.0.0.2", 80)).reason == Reason.ALLOWED  # not own here
    own = OwnAddresses.of(["192.0.2.10", "127.0.0.0/8", "::1"])
    for ip in ("192.0.2.10", "127.0.0.2", "::1", "::ffff:127.0.0.2", "64:ff9b::c000:20a"):
        assert decide(gw, BOT, tcp(ip, 80), own).reason == Reason.BLOCKED_ADDRESS, ip
    d = decide(gw, None, tcp("192.0.2.10", 80), own)
    assert (d.reason, d.agent) == (Reason.BLOCKED_ADDRESS, None)


def test_a_deny_route_wins_over_an_allow_route_for_the_same_name():
    text = (
        EXPLICIT
        + """
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: paste}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{destinationHostnames: [pastebin.com]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: no-paste}
spec:
  targetRefs: [{name: paste}]
  denyResponse: {statusCode: 451}
"""
    )
    policies = compile_yaml(text)
    gw = policies.gateways[("default", "gw")]
    d = decide(gw, BOT, tcp("192.0.2.1", 443, "pastebin.com"))
    assert (d.reason, d.deny_policy) == (Reason.DENY_POLICY, "default/no-paste")
    assert gw.deny_responses["default/no-paste"].status_code == 451


def test_domain_fronting_onto_a_deny_listed_name_is_denied_sni_mismatch(open_agents):
    conn = tcp("192.0.2.66", 443, "harmless.example", sni="pastebin.com")
    assert decide(open_agents, BOT, conn).reason == Reason.SNI_MISMATCH


def test_the_most_specific_match_names_the_route():
    text = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp, protocol: TCP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: a-broad}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{destinationCIDRs: ["10.0.0.0/8"]}, {destinationHostnames: ["*.corp.example"]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: b-narrow}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{destinationCIDRs: ["10.1.0.0/16"]}, {destinationHostnames: [db.corp.example]}]
"""
    gw = compile_yaml(text).gateways[("default", "gw")]
    assert decide(gw, BOT, tcp("10.1.2.3", 1)).route == "default/b-narrow"
    assert decide(gw, BOT, tcp("10.2.2.3", 1)).route == "default/a-broad"
    d = decide(gw, BOT, tcp("10.1.2.3", 1, "db.corp.example"))
    assert (d.route, d.hostname) == ("default/b-narrow", "db.corp.example")
    d = decide(gw, BOT, tcp("192.0.2.1", 1, "x.corp.example"))
    assert (d.route, d.rule, d.hostname) == ("default/a-broad", 0, "x.corp.example")


def test_bad_inputs_raise_value_error(prod):
    for conn in (tcp("not-an-ip", 1), tcp("10.0.0.1", 70000), Connection("SCTP", "10.0.0.1", 1)):
        with pytest.raises(ValueError):
            decide(prod, BOT, conn)


# --- Report mode ------------------------------------------------------------------------

REPORT = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  mode: MODE
  listeners:
  - {name: term, protocol: TLS, port: 443, tls: {mode: Terminate}}
  - {name: pass, protocol: TLS, port: 443}
  - {name: tcp, protocol: TCP}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: api}
spec:
  parentRefs: [{name: gw, sectionName: term}]
  rules: [{matches: [{destinationHostnames: ["*.example.com"], ports: [{port: 443}]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: paste}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{destinationHostnames: [paste.example.com]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: no-paste}
spec:
  mode: DENY_MODE
  targetRef: {name: paste}
"""


def _report(mode: str = "Report", deny_mode: str = "Enforce"):
    text = REPORT.replace("DENY_MODE", deny_mode).replace("MODE", mode)
    return compile_yaml(text).gateways[("default", "gw")]


def test_report_mode_lets_a_policy_denial_through_on_the_least_intrusive_listener():
    d = decide(_report(), BOT, Connection("TCP", "192.0.2.1", 443, frozenset({"evil.org"})))
    assert (d.reason, d.enforced, d.passes, d.allowed) == (Reason.POLICY, False, True, False)
    assert (d.through.reason, d.through.listener) == (Reason.ALLOWED_DEFAULT, "pass")
    assert d.effective is d.through


def test_report_mode_reports_a_deny_policy_hit_and_lets_it_through():
    conn = Connection("TCP", "192.0.2.1", 443, frozenset({"paste.example.com"}))
    d = decide(_report(), BOT, conn)
    assert (d.reason, d.deny_policy, d.enforced) == (Reason.DENY_POLICY, "default/no-paste", False)
    # the allow route that also covers the name carries it, as it would without the deny
    assert (d.through.route, d.through.listener) == ("default/api", "term")


def test_report_mode_reports_an_sni_mismatch_and_lets_it_through_on_no_name():
    conn = Connection("TCP", "192.0.2.1", 443, frozenset({"a.example.com"}), "evil.org")
    d = decide(_report(), BOT, conn)
    assert (d.reason, d.enforced) == (Reason.SNI_MISMATCH, False)
    assert (d.through.hostname, d.through.listener) == (None, "pass")


@pytest.mark.parametrize(
    ("agent", "ip", "reason"),
    [(BOT, "169.254.169.254", Reason.BLOCKED_ADDRESS), (None, "192.0.2.1", Reason.UNKNOWN_AGENT)],
)
def test_report_mode_still_enforces_blocked_addresses_and_unknown_agents(agent, ip, reason):
    d = decide(_report(), agent, Connection("TCP", ip, 443, frozenset({"evil.org"})))
    assert (d.reason, d.enforced, d.passes) == (reason, True, False)


def test_report_mode_enforces_what_no_listener_could_carry():
    d = decide(_report(), BOT, Connection("UDP", "192.0.2.1", 53))
    assert (d.reason, d.enforced) == (Reason.NO_LISTENER, True)


def test_enforce_mode_decides_as_before_and_says_it_enforced():
    d = decide(_report("Enforce"), BOT, Connection("TCP", "192.0.2.1", 443, frozenset({"x.org"})))
    assert (d.reason, d.enforced, d.through) == (Reason.POLICY, True, None)
    enforce = _report("Enforce")
    assert enforce.relaxed is enforce


def test_a_report_deny_policy_is_reported_and_the_rest_of_the_policy_decides():
    policy = _report("Enforce", "Report")
    conn = Connection("TCP", "192.0.2.1", 443, frozenset({"paste.example.com"}))
    d = decide(policy, BOT, conn)
    assert (d.reason, d.enforced, d.through.route) == (Reason.DENY_POLICY, False, "default/api")
    # on port 80 only the deny route names it: without the trial policy it is denied
    d80 = decide(policy, BOT, Connection("TCP", "192.0.2.1", 80, frozenset({"paste.example.com"})))
    assert (d80.reason, d80.enforced) == (Reason.POLICY, True)


def test_an_enforced_deny_policy_wins_over_a_reported_one():
    text = (
        REPORT.replace("DENY_MODE", "Report").replace("MODE", "Enforce")
        + """
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: paste-too}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{destinationHostnames: [paste.example.com]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: z-enforced}
spec:
  targetRef: {name: paste-too}
"""
    )
    policy = compile_yaml(text).gateways[("default", "gw")]
    conn = Connection("TCP", "192.0.2.1", 443, frozenset({"paste.example.com"}))
    d = decide(policy, BOT, conn)
    assert (d.reason, d.deny_policy, d.enforced) == (Reason.DENY_POLICY, "default/z-enforced", True)


def test_a_reported_decision_says_so_in_json():
    out = decide(_report(), BOT, Connection("TCP", "192.0.2.1", 22)).to_json()
    assert (out["decision"], out["reason"], out["enforced"]) == ("deny", "policy", False)
    assert out["through"] == {
        "reason": "allowed_default",
        "route": None,
        "rule": None,
        "listener": "tcp",
        "hostname": None,
    }
