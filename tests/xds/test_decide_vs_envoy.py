"""Property: decide() and the Envoy listeners translated from the same compiled policy
agree, connection by connection.  Envoy is evaluated by `chain_matcher` (itself checked
against the real Envoy in test_chain_matcher.py); what reaches Envoy is the dialer's own
PROXY header (`session.proxy_header`) and the connection's SNI.

- The dialer to Envoy: a connection decide() allows goes to the listener of the
  decision, which must forward it (not close it, not answer it with a deny); a
  deny-policy decision on an L7 listener must get the deny answer there.  The same
  holds on every other TCP listener L serving the port, for decide() with the allow
  routes narrowed to those attached to L.
- Envoy to decide(): for every TCP listener L and every way the dialer could present
  the connection there, Envoy forwarding it means decide(), narrowed to L, allows it.
  The hostname TLV is the name that decided, so it is one of the connection's names,
  its SNI, or none; with an SNI it is the SNI, or none where no name decided.  Only
  TLS listeners see the SNI (SPEC 4 counts it nowhere else); on the others decide()
  with the SNI must be no looser than without it.

Report mode (drawn for the gateway and each deny policy): a denial decide() only reports
goes through with its `through` decision, and Envoy must forward it as that one says;
Envoy forwarding means decide() lets the connection through, allowed or reported.

Deny routes are never narrowed: decide() applies them on the whole gateway, so Envoy
refuses them on every listener.  Envoy cannot know what only the dialer knows, so these
are left out by design: agents the gateway does not know (the dialer refuses them;
Envoy checks agents only where a route selects them), ports a listener does not serve
(the dialer never dials a listener for another port), and the DNS names behind an SNI.
One difference is deliberate and asserted: Envoy may close any Teredo address
(2001::/32) that decide() allows, because it cannot read the client address Teredo
embeds (stricter, never looser; see clrk_xds/translate_blocked.py).  A denial decide()
hands to Envoy gets its deny answer there too: deny routes come before that guard.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clrk.api import load_objects
from clrk.policy import Agent, Connection, Decision, GatewayPolicy, OwnAddresses, Reason, decide
from clrk.policy.addresses import normalise_name, parse_ip
from clrk.policy.compiled import CompiledListener
from clrk.policy.loaded import compile_loaded
from clrk_worker_dialer import proxy_v2
from clrk_worker_dialer.session import Flow, proxy_header
from clrk_xds.translate import translate_gateway
from tests.conftest import compile_yaml
from tests.policy.strategies import IPS, NAMES, OWN_CHOICES, PORTS, policy_with_modes
from tests.xds.chain_matcher import Arrival, Outcome, Verdict, evaluate

# At least 500 random policies in every run, each with several connections, listeners
# and presentations (about a minute on one free core).
EXAMPLES = 500
TEREDO = ipaddress.ip_network("2001::/32")


@st.composite
def tcp_connection(draw) -> Connection:
    """A TCP connection with DNS-bound names and, often, an SNI among them (a TLS client
    names the host it looked up), sometimes another."""
    names = draw(st.lists(st.sampled_from([*NAMES, "API.Example.com.", "other.org"]), max_size=3))
    sni = draw(
        st.one_of(
            st.none(),
            st.sampled_from([*NAMES, "evil.com"]),
            *([st.sampled_from(names)] if names else []),
        )
    )
    return Connection(
        "TCP", draw(st.sampled_from(IPS)), draw(st.sampled_from(PORTS)), frozenset(names), sni
    )


def _normal_ip(text: str) -> str:
    version, value = parse_ip(text)
    return str(ipaddress.ip_address(value) if version == 6 else ipaddress.IPv4Address(value))


def _arrival(agent: Agent, conn: Connection, decision: Decision) -> Arrival:
    """What reaches Envoy: the dialer's own PROXY header, read back, and the SNI."""
    flow = Flow("10.9.9.9", 40000, _normal_ip(conn.dst_ip), conn.dst_port, agent, conn.names, "c1")
    header, _used = proxy_v2.decode(proxy_header(flow, decision))
    tlvs = {t: v.decode() for t, v in header.tlvs}
    return Arrival(header.destination_ip, header.destination_port, tlvs, conn.sni)


def _teredo(conn: Connection) -> bool:
    return ipaddress.ip_address(_normal_ip(conn.dst_ip)) in TEREDO


def _check_forwarded(policy, listeners, agent, conn, own, decision: Decision) -> None:
    """A connection the dialer hands to Envoy with `decision` gets what it decided (a
    denial Report mode lets through: what the decision it goes through with says)."""
    decision = decision.effective
    lst = policy.listener(decision.listener or "")
    forwarded_deny = decision.reason is Reason.DENY_POLICY and lst is not None and lst.l7
    if not (decision.allowed or forwarded_deny):
        return  # refused by the dialer: Envoy never sees it
    verdict = evaluate(listeners[lst.name], _arrival(agent, conn, decision))
    where = f"{conn} decided {decision}; Envoy: {verdict}"
    if forwarded_deny:
        assert verdict.outcome is Outcome.HTTP_DENIED, where
    elif _teredo(conn):
        stricter = verdict == Verdict(Outcome.CLOSED, "blocked_address")
        assert verdict.outcome.allows or stricter, where
    else:
        assert verdict.outcome.allows, where


def narrowed(policy: GatewayPolicy, listener: CompiledListener) -> GatewayPolicy:
    """The policy as one listener sees it: allow routes only where attached to it, deny
    routes everywhere (as decide() applies them)."""
    matches = tuple(
        e
        if e.deny_policy is not None
        else dataclasses.replace(
            e, listeners=tuple(lst for lst in e.listeners if lst.name == listener.name)
        )
        for e in policy.matches
    )
    return dataclasses.replace(policy, listeners=(listener,), matches=matches)


def _presentations(
    narrow, agent, conn, own, tls: bool
) -> list[tuple[Connection, str | None, Decision]]:
    """Each way the dialer could present `conn`: the evidence Envoy is given (the SNI
    and `claim`, the hostname TLV) and decide() on exactly that evidence: the SNI and
    the claim as bound names (the dialer sends only names it holds or confirmed).

    Only TLS listeners read the SNI.  Elsewhere Envoy is held to decide() without it,
    and decide() with it must be no looser there (it only adds deny evidence)."""
    names = sorted({normalise_name(n) for n in conn.names})
    sni = normalise_name(conn.sni) if conn.sni else None
    if sni is not None and tls:
        claims: list[str | None] = [sni, None, *(n for n in names if n != sni)]
    else:
        claims = [None, *names]
    out = []
    for claim in claims:
        bound = {claim} if claim else set()
        if tls and sni is not None and claim is not None:
            bound.add(sni)  # an SNI the dialer sent on is bound (or confirmed and bound)
        seen = Connection("TCP", conn.dst_ip, conn.dst_port, frozenset(bound), sni if tls else None)
        decision = decide(narrow, agent, seen, own)
        if tls and sni is not None and claim is None and decision.hostname is not None:
            continue  # a name decided, or waits for confirmation: the dialer sends it
        if not tls and sni is not None:
            with_sni = decide(narrow, agent, dataclasses.replace(seen, sni=conn.sni), own)
            assert decision.allowed or not with_sni.allowed, (seen, with_sni, decision)
        out.append((dataclasses.replace(seen, sni=conn.sni), claim, decision))
    return out


def _check_listeners(policy, listeners, agent, conn, own) -> None:
    for lst in policy.listeners:
        if lst.transport != "TCP" or lst.port not in (None, conn.dst_port):
            continue
        narrow = narrowed(policy, lst)
        _check_forwarded(narrow, listeners, agent, conn, own, decide(narrow, agent, conn, own))
        tls = lst.protocol == "TLS"
        for seen, claim, decision in _presentations(narrow, agent, conn, own, tls):
            presented = Decision(Reason.ALLOWED, policy.ref, None, "", hostname=claim)
            verdict = evaluate(listeners[lst.name], _arrival(agent, seen, presented))
            assert not verdict.outcome.allows or decision.passes, (
                f"{lst.name}: {seen}; Envoy: {verdict}, decided {decision}"
            )


# 500 policies take about a minute alone; a busy CI machine may take several.
@pytest.mark.timeout(600)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    docs=policy_with_modes(),
    conns=st.lists(tcp_connection(), min_size=1, max_size=6),
    own=st.sampled_from(OWN_CHOICES),
    data=st.data(),
)
def test_decide_and_the_translated_envoy_listeners_agree(docs, conns, own, data):
    loaded = compile_loaded(load_objects(docs))
    assert not loaded.blocked, [f.line() for f in loaded.findings]
    policy = loaded.compiled.gateways[("default", "gw")]
    own_addresses = own
    translated = translate_gateway(policy, own_addresses=own_addresses)
    listeners = {lst.name: lst for lst in translated.listeners}
    agent = data.draw(st.sampled_from(policy.agents), label="agent")
    own_set = OwnAddresses.of(own_addresses)
    for conn in conns:
        decision = decide(policy, agent, conn, own_set)
        _check_forwarded(policy, listeners, agent, conn, own_set, decision)
        _check_listeners(policy, listeners, agent, conn, own_set)


def test_ports_cover_every_listener_port():
    # The converse direction needs connections on each listener's own port.
    assert {5432, 443} <= set(PORTS)


FIXED = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners:
  - {name: tcp-out, protocol: TCP}
  - {name: tls-out, protocol: TLS, tls: {mode: Terminate}}
  - {name: pass, protocol: TLS, port: 443}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: api}
spec:
  parentRefs: [{name: gw, sectionName: tls-out}, {name: gw, sectionName: pass}]
  rules: [{matches: [{destinationHostnames: [api.example.com, "*.b.example.com"]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: pg}
spec:
  parentRefs: [{name: gw, sectionName: tcp-out}]
  rules: [{matches: [{destinationHostnames: [pg.internal, "*.example.com"]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: paste}
spec:
  parentRefs: [{name: gw, sectionName: tls-out}]
  rules: [{matches: [{destinationHostnames: [example.com]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: no-paste}
spec: {targetRef: {name: paste}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: a}
spec: {egressRefs: [{gatewayRef: gw}]}
"""

# (D, S) on 198.51.100.1:443 and :5432, each row once through both directions
FIXED_ROWS = [
    ((), "pg.internal"),  # an SNI alone on a TCP route: no evidence
    ((), "api.example.com"),  # an SNI alone on a TLS route: waits for confirmation
    (("api.example.com",), "API.Example.com."),  # one trailing dot, as Envoy reads it
    (("api.example.com",), "api.example.com.."),  # two: no name at all
    (("example.com", "api.example.com"), "api.example.com"),  # deny by a bound name
    (("x.example.com",), "x.example.com"),  # TCP route by the bound name, TLS by none
    (("api.example.com", "x.b.example.com"), "x.b.example.com"),  # the SNI, not the other
    ((), "example.com"),  # an unconfirmed SNI on a deny route
]


@pytest.mark.parametrize(("names", "sni"), FIXED_ROWS)
def test_fixed_rows_agree_with_envoy_on_sni_evidence(names, sni):
    policy = compile_yaml(FIXED).gateways[("default", "gw")]
    translated = translate_gateway(policy)
    listeners = {lst.name: lst for lst in translated.listeners}
    (agent,) = policy.agents
    for port in (443, 5432):
        conn = Connection("TCP", "198.51.100.1", port, frozenset(names), sni)
        _check_forwarded(
            policy, listeners, agent, conn, OwnAddresses(), decide(policy, agent, conn)
        )
        _check_listeners(policy, listeners, agent, conn, OwnAddresses())


def test_a_deny_route_takes_a_bound_name_that_is_not_the_sni_on_every_listener():
    policy = compile_yaml(FIXED).gateways[("default", "gw")]
    (agent,) = policy.agents
    for port in (443, 5432):
        conn = Connection(
            "TCP",
            "198.51.100.1",
            port,
            frozenset({"example.com", "api.example.com"}),
            "api.example.com",
        )
        d = decide(policy, agent, conn)
        assert (d.reason, d.hostname, d.listener) == (Reason.DENY_POLICY, "example.com", "tls-out")


def test_an_envoy_tls_listener_reads_an_sni_with_one_trailing_dot_like_decide():
    policy = compile_yaml(FIXED).gateways[("default", "gw")]
    (listener,) = [x for x in translate_gateway(policy).listeners if x.name == "pass"]
    agent = {0xE1: "default", 0xE2: "a"}
    for sni, allows in (("API.Example.com.", True), ("api.example.com..", False)):
        tlvs = {0x02: "api.example.com", **agent}
        assert evaluate(listener, Arrival("198.51.100.1", 443, tlvs, sni)).outcome.allows is allows


def test_a_deny_policy_hit_on_a_teredo_address_gets_its_deny_answer_not_the_own_guard():
    """Found by the property above: with an IPv4 address of the gateway's own and a route
    that opens anything, Envoy's own-address guard closes all of 2001::/32 (a Teredo
    client could be that address).  Ahead of the deny routes it closed a deny decide()
    forwards, so the agent got no deny answer and nothing recorded the denial."""
    policy = compile_yaml(TEREDO_DENY).gateways[("default", "gw")]
    own = ["192.0.2.7", "2001:db8::5"]
    listeners = {x.name: x for x in translate_gateway(policy, own_addresses=own).listeners}
    assert "blocked_address" in {c.name for c in listeners["l7"].filter_chains}  # the guard
    (agent,) = policy.agents
    own_set = OwnAddresses.of(own)
    for ip in ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "198.51.100.1"):
        conn = Connection("TCP", ip, 443, frozenset(), None)
        decision = decide(policy, agent, conn, own_set)
        assert decision.reason is Reason.DENY_POLICY
        verdict = evaluate(listeners["l7"], _arrival(agent, conn, decision))
        assert verdict.outcome is Outcome.HTTP_DENIED, verdict


TEREDO_DENY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners:
  - {name: l7, protocol: TLS, tls: {mode: Terminate}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{protocol: TCP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: deny}
spec:
  targetRefs: [{name: r}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: open}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{protocol: TCP, destinationCIDRs: [203.0.113.0/24]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: a}
spec:
  egressRefs: [{gatewayRef: gw}]
"""
