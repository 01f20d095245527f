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
  its SNI, or none; with an SNI it is the SNI, or none where no name decided.

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
embeds (stricter, never looser; see clrk_xds/translate_blocked.py).
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
from tests.policy.strategies import IPS, NAMES, OWN_CHOICES, PORTS, policy_with_modes
from tests.xds.chain_matcher import Arrival, Outcome, Verdict, evaluate

# At least 500 random policies in every run, each with several connections, listeners
# and presentations (about 15 s on one core).
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


def _presentations(narrow, agent, conn, own) -> list[tuple[Connection, str | None, Decision]]:
    """Each way the dialer could present `conn`: the evidence Envoy is given (the SNI
    and `claim`, the hostname TLV) and decide() on exactly that evidence."""
    sni = normalise_name(conn.sni) if conn.sni else None
    if sni is not None:
        claims: list[str | None] = [sni, None]
    else:
        claims = [None, *sorted({normalise_name(n) for n in conn.names})]
    out = []
    for claim in claims:
        seen = Connection(
            "TCP", conn.dst_ip, conn.dst_port, frozenset([claim] if claim else []), sni
        )
        decision = decide(narrow, agent, seen, own)
        if sni is not None and claim is None and decision.hostname is not None:
            continue  # a name decided: the dialer would send it
        out.append((seen, claim, decision))
    return out


def _check_listeners(policy, listeners, agent, conn, own) -> None:
    for lst in policy.listeners:
        if lst.transport != "TCP" or lst.port not in (None, conn.dst_port):
            continue
        narrow = narrowed(policy, lst)
        _check_forwarded(narrow, listeners, agent, conn, own, decide(narrow, agent, conn, own))
        for seen, claim, decision in _presentations(narrow, agent, conn, own):
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
