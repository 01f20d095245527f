"""decide() on hostname evidence (SPEC 4): which names count on which listeners, row
by row.  D is the set of names the agent's own DNS bound to the destination; S the SNI.

The SNI is evidence only on TLS listeners (Passthrough or Terminate), and only once it
is confirmed (in D); where there is one, it is the only name a TLS listener takes.
Deny routes take every bound name and the SNI, confirmed or not: a claim only closes.
"""

from __future__ import annotations

import pytest

from clrk.policy import Agent, Connection, Reason, decide
from tests.conftest import compile_yaml

BOT = Agent("default", "bot", {"team": "data"})

POLICY = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  defaultPolicy: %s
  listeners:
  - {name: tcp-out, protocol: TCP}
  - {name: tls-out, protocol: TLS, tls: {mode: Terminate}}
  - {name: pass, protocol: TLS, port: 8443}
  - {name: web, protocol: HTTP, port: 80}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: app-postgres}
spec:
  parentRefs: [{name: gw, sectionName: tcp-out}]
  rules: [{matches: [{destinationHostnames: [pg.prod.internal], ports: [{port: 5432}]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: cluster}
spec:
  parentRefs: [{name: gw, sectionName: tcp-out}]
  rules: [{matches: [{destinationHostnames: ["*.svc.cluster.local"]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: anthropic}
spec:
  parentRefs: [{name: gw, sectionName: tls-out}]
  rules: [{matches: [{destinationHostnames: [api.anthropic.com], ports: [{port: 443}]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: both}
spec:
  parentRefs: [{name: gw, sectionName: tcp-out}, {name: gw, sectionName: pass}]
  rules: [{matches: [{destinationHostnames: [both.example.com]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: web}
spec:
  parentRefs: [{name: gw, sectionName: web}]
  rules: [{matches: [{destinationHostnames: [web.example.com]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: nets}
spec:
  parentRefs: [{name: gw, sectionName: tcp-out}]
  rules: [{matches: [{destinationCIDRs: ["198.51.100.0/24"]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: paste}
spec:
  parentRefs: [{name: gw, sectionName: tcp-out}]
  rules: [{matches: [{destinationHostnames: [pastebin.com, "*.paste.example"]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: no-paste}
spec:
  targetRef: {name: paste}
"""

ATTACKER = "203.0.113.66"


@pytest.fixture(scope="module")
def gw():
    return compile_yaml(POLICY % "deny-all").gateways[("default", "gw")]


@pytest.fixture(scope="module")
def open_gw():
    return compile_yaml(POLICY % "allow-all").gateways[("default", "gw")]


# (why, ip, port, D, S) -> (reason, listener, hostname)
ROWS = [
    # --- TCP, HTTP listeners: the SNI is never evidence ------------------------------
    ("an SNI alone never opens a TCP route",
     ATTACKER, 5432, (), "pg.prod.internal", ("policy", None, None)),
    ("a wildcard TCP route without ports is opened by no SNI, on any port",
     ATTACKER, 6379, (), "redis.svc.cluster.local", ("policy", None, None)),
    ("the same wildcard TCP route on port 443",
     ATTACKER, 443, (), "api.svc.cluster.local", ("policy", None, None)),
    ("a bound name opens a TCP route, whatever the SNI adds",
     "10.0.0.5", 5432, ("pg.prod.internal",), "pg.prod.internal",
     ("allowed", "tcp-out", "pg.prod.internal")),
    ("a bound name opens the TCP route with no SNI at all",
     "10.0.0.5", 5432, ("pg.prod.internal",), None, ("allowed", "tcp-out", "pg.prod.internal")),
    ("an SNI alone never opens an HTTP route",
     ATTACKER, 80, (), "web.example.com", ("policy", None, None)),
    ("an SNI that contradicts the bound names is a lie, on any listener",
     "10.0.0.5", 5432, ("pg.prod.internal",), "other.example", ("sni_mismatch", None, None)),
    # --- TLS listeners: the SNI is evidence once confirmed ----------------------------
    ("an unconfirmed SNI on a TLS route needs confirmation",
     ATTACKER, 443, (), "api.anthropic.com",
     ("sni_unverified", "tls-out", "api.anthropic.com")),
    ("a confirmed SNI (bound) on a TLS route is allowed",
     "203.0.113.10", 443, ("api.anthropic.com",), "API.Anthropic.com.",
     ("allowed", "tls-out", "api.anthropic.com")),
    ("a bound name with no SNI is allowed on a TLS route",
     "203.0.113.10", 443, ("api.anthropic.com",), None,
     ("allowed", "tls-out", "api.anthropic.com")),
    ("with an SNI, a TLS listener takes only the SNI, not another bound name",
     "203.0.113.10", 443, ("api.anthropic.com", "cdn.example"), "cdn.example",
     ("policy", None, None)),
    ("a route on TCP and TLS listeners: an unconfirmed SNI may only use the TLS one",
     ATTACKER, 8443, (), "both.example.com", ("sni_unverified", "pass", "both.example.com")),
    ("a route on TCP and TLS listeners: on a port no TLS listener serves, nothing",
     ATTACKER, 9000, (), "both.example.com", ("policy", None, None)),
    ("a route on TCP and TLS listeners: a bound name on the TCP listener, SNI elsewhere",
     "10.0.0.5", 9000, ("both.example.com",), "both.example.com",
     ("allowed", "tcp-out", "both.example.com")),
    ("an SNI with no route is denied by policy, not left for confirmation",
     ATTACKER, 443, (), "evil.example", ("policy", None, None)),
    ("a CIDR allows without any confirmation, whatever the SNI",
     "198.51.100.7", 443, (), "api.anthropic.com", ("allowed", "tcp-out", None)),
    ("an unconfirmed SNI never opens a blocked address",
     "127.0.0.1", 443, (), "api.anthropic.com", ("blocked_address", None, None)),
    # --- deny routes: every bound name and the SNI, confirmed or not ------------------
    ("an unconfirmed SNI on a deny route denies",
     ATTACKER, 443, (), "pastebin.com", ("deny_policy", "tcp-out", "pastebin.com")),
    ("a deny route takes a bound name that is not the SNI",
     "198.51.100.7", 443, ("pastebin.com", "api.anthropic.com"), "api.anthropic.com",
     ("deny_policy", "tcp-out", "pastebin.com")),
    ("a deny route takes the SNI where the bound name is harmless",
     "198.51.100.7", 443, ("x.paste.example", "api.anthropic.com"), "x.paste.example",
     ("deny_policy", "tcp-out", "x.paste.example")),
    ("a deny route takes the SNI over a CIDR allow",
     "198.51.100.7", 443, (), "x.paste.example", ("deny_policy", "tcp-out", "x.paste.example")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("why", "ip", "port", "names", "sni", "want"), ROWS, ids=[r[0] for r in ROWS]
)
def test_hostname_evidence_rows(gw, why, ip, port, names, sni, want):
    d = decide(gw, BOT, Connection("TCP", ip, port, frozenset(names), sni))
    assert (str(d.reason), d.listener, d.hostname if d.reason != "sni_mismatch" else None) == (
        want
    ), why


def test_sni_unverified_names_the_route_that_the_sni_would_open(gw):
    d = decide(gw, BOT, Connection("TCP", ATTACKER, 443, frozenset(), "api.anthropic.com"))
    assert (d.allowed, d.route, d.rule) == (False, "default/anthropic", 0)


def test_under_allow_all_an_unconfirmed_sni_is_allowed_by_default_not_by_its_route(open_gw):
    d = decide(open_gw, BOT, Connection("TCP", ATTACKER, 443, frozenset(), "api.anthropic.com"))
    assert (d.reason, d.route, d.listener) == (Reason.ALLOWED_DEFAULT, None, "tcp-out")


def test_under_allow_all_an_unconfirmed_sni_on_a_deny_route_still_denies(open_gw):
    d = decide(open_gw, BOT, Connection("TCP", ATTACKER, 443, frozenset(), "pastebin.com"))
    assert (d.reason, d.deny_policy) == (Reason.DENY_POLICY, "default/no-paste")


def test_a_trailing_dot_is_folded_once_and_two_are_no_name(gw):
    one = decide(gw, BOT, Connection("TCP", ATTACKER, 443, frozenset(), "api.anthropic.com."))
    two = decide(gw, BOT, Connection("TCP", ATTACKER, 443, frozenset(), "api.anthropic.com.."))
    assert (one.reason, two.reason) == (Reason.SNI_UNVERIFIED, Reason.POLICY)


def test_in_report_mode_an_unconfirmed_sni_is_reported_and_goes_through_with_no_name():
    gw = compile_yaml(
        (POLICY % "deny-all").replace(
            "spec:\n  defaultPolicy", "spec:\n  mode: Report\n  defaultPolicy", 1
        )
    ).gateways[("default", "gw")]
    d = decide(gw, BOT, Connection("TCP", ATTACKER, 443, frozenset(), "api.anthropic.com"))
    assert (d.reason, d.enforced) == (Reason.SNI_UNVERIFIED, False)
    assert d.through.allowed and d.through.hostname is None
