"""The TCP session: which action each situation gives, without sockets."""

from __future__ import annotations

import dataclasses
import ipaddress
import ssl

import pytest

from clrk.nexthops import envoy_listener_addresses
from clrk.policy import Agent, Reason
from clrk_worker_dialer import proxy_v2
from clrk_worker_dialer.session import Confirm, Dial, Flow, Refuse, TcpSession, Wait
from tests.worker_dialer.dialer_policy import gateway_policy

POLICY = gateway_policy()
HOPS = envoy_listener_addresses([(lst.name, lst.protocol) for lst in POLICY.listeners])
AGENT = Agent("default", "agent-a", {"team": "a"})


def client_hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def session(dst_ip, dst_port, names=(), agent=AGENT, **kw) -> TcpSession:
    flow = Flow("198.18.0.2", 40000, dst_ip, dst_port, agent, frozenset(names), "c0ffee", **kw)
    return TcpSession(POLICY, flow, HOPS, client_hello_wait=0.5)


def test_a_cidr_rule_dials_the_tcp_listener_with_a_proxy_header():
    action = session("203.0.113.9", 5433).start(now=10.0)
    assert isinstance(action, Dial)
    assert action.next_hop == HOPS["tcp"]
    header, used = proxy_v2.decode(action.preamble)
    assert used == len(action.preamble)
    assert (header.source_ip, header.source_port) == ("198.18.0.2", 40000)
    assert (header.destination_ip, header.destination_port) == ("203.0.113.9", 5433)
    assert header.authority is None  # CIDR-only match: no name
    assert (header.agent_namespace, header.agent_name) == ("default", "agent-a")
    assert header.route == "default/db"
    assert header.connection_id == "c0ffee"


def test_a_name_nobody_allowed_is_refused_at_once_with_reason_policy():
    action = session("192.0.2.10", 80, names={"evil.example.com"}).start(now=0.0)
    assert isinstance(action, Refuse)
    assert action.decision.reason is Reason.POLICY
    assert action.dst_name == "evil.example.com"


def test_an_unknown_agent_is_refused_unknown_agent():
    action = session("203.0.113.9", 5433, agent=None).start(now=0.0)
    assert isinstance(action, Refuse) and action.decision.reason is Reason.UNKNOWN_AGENT


def test_an_allowed_name_resolving_to_metadata_is_refused_blocked_address():
    action = session("169.254.169.254", 443, names={"api.example.com"}).start(now=0.0)
    assert isinstance(action, Refuse) and action.decision.reason is Reason.BLOCKED_ADDRESS


def test_an_allowed_name_on_the_tls_listener_waits_for_the_client_hello():
    s = session("192.0.2.10", 443, names={"api.example.com"})
    assert s.start(now=5.0) == Wait(5.5)
    hello = client_hello("api.example.com")
    assert s.data(hello[:7]) is None  # fragmented: keep reading
    action = s.data(hello[7:])
    assert isinstance(action, Dial) and action.next_hop == HOPS["tls"]
    header, used = proxy_v2.decode(action.preamble)
    assert header.authority == "api.example.com"
    assert action.preamble[used:] == hello  # the bytes read are forwarded unchanged


def test_an_sni_that_contradicts_the_dns_binding_is_refused_sni_mismatch():
    s = session("192.0.2.10", 443, names={"api.example.com"})
    s.start(now=0.0)
    action = s.data(client_hello("evil.example.com"))
    assert isinstance(action, Refuse)
    assert action.decision.reason is Reason.SNI_MISMATCH
    assert action.dst_name == "evil.example.com"


def test_a_hard_coded_ip_with_a_matching_sni_asks_for_the_sni_to_be_confirmed():
    s = session("192.0.2.77", 443)
    assert isinstance(s.start(now=0.0), Wait)
    assert s.data(client_hello("X.example.org")) == Confirm("x.example.org")
    assert not s.done


def test_a_confirmed_sni_dials_the_tls_listener_with_the_hello_and_what_followed():
    s = session("192.0.2.77", 443)
    s.start(now=0.0)
    hello = client_hello("x.example.org")
    s.data(hello)
    assert s.data(b"early") is None  # bytes after the hello wait for the decision
    action = s.confirmed(frozenset({"x.example.org"}))
    assert isinstance(action, Dial) and action.next_hop == HOPS["tls"]
    header, used = proxy_v2.decode(action.preamble)
    assert header.authority == "x.example.org"
    assert action.preamble[used:] == hello + b"early"


def test_an_unconfirmed_sni_is_refused_sni_unverified_naming_the_sni():
    s = session("192.0.2.77", 443)
    s.start(now=0.0)
    s.data(client_hello("x.example.org"))
    action = s.unconfirmed()
    assert isinstance(action, Refuse) and action.decision.reason is Reason.SNI_UNVERIFIED
    assert action.dst_name == "x.example.org" and s.done


def test_a_confirmation_whose_binding_is_gone_is_still_refused_sni_unverified():
    s = session("192.0.2.77", 443)
    s.start(now=0.0)
    s.data(client_hello("x.example.org"))
    action = s.confirmed(frozenset())
    assert isinstance(action, Refuse) and action.decision.reason is Reason.SNI_UNVERIFIED


def test_the_agent_closing_while_the_sni_is_confirmed_is_refused_sni_unverified():
    s = session("192.0.2.77", 443)
    s.start(now=0.0)
    s.data(client_hello("x.example.org"))
    action = s.eof()
    assert isinstance(action, Refuse) and action.decision.reason is Reason.SNI_UNVERIFIED
    with pytest.raises(RuntimeError):
        s.confirmed(frozenset({"x.example.org"}))


def test_an_sni_alone_on_the_plain_tcp_route_is_never_confirmed_nor_allowed():
    s = session("192.0.2.77", 5432)  # the CIDR route covers 203.0.113.0/24 only
    assert isinstance(s.start(now=0.0), Wait)
    action = s.data(client_hello("api.example.com"))
    assert isinstance(action, Refuse) and action.decision.reason is Reason.POLICY


def test_a_hard_coded_ip_without_a_client_hello_is_refused_after_the_wait():
    s = session("192.0.2.77", 443)
    s.start(now=0.0)
    action = s.timeout()
    assert isinstance(action, Refuse) and action.decision.reason is Reason.POLICY


def test_plain_text_where_a_client_hello_was_expected_is_decided_without_sni():
    s = session("192.0.2.77", 443)
    s.start(now=0.0)
    action = s.data(b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(action, Refuse) and action.decision.reason is Reason.POLICY


def test_an_agent_closing_before_the_decision_still_gets_its_denial():
    s = session("192.0.2.77", 443)
    s.start(now=0.0)
    assert isinstance(s.eof(), Refuse)


def test_a_deny_policy_on_an_http_listener_is_forwarded_with_the_policy_tlv():
    action = session("192.0.2.20", 80, names={"paste.example.net"}).start(now=0.0)
    assert isinstance(action, Dial) and action.next_hop == HOPS["web"]
    header, _ = proxy_v2.decode(action.preamble)
    assert header.deny_policy == "default/no-paste"
    assert action.decision.reason is Reason.DENY_POLICY


def test_an_allowed_decision_without_a_next_hop_is_refused_no_listener():
    flow = Flow("198.18.0.2", 1, "203.0.113.9", 5433, AGENT, frozenset(), "id")
    action = TcpSession(POLICY, flow, {}).start(now=0.0)
    assert isinstance(action, Refuse) and action.decision.reason is Reason.NO_LISTENER


def test_a_v4_client_asking_for_a_v6_destination_gets_a_mapped_source():
    from clrk_worker_dialer.session import proxy_header

    flow = Flow("127.0.0.1", 5, "2001:db8::1", 443, AGENT, frozenset(), "id")
    decision = session("203.0.113.9", 5433).start(now=0.0).decision
    header, _ = proxy_v2.decode(proxy_header(flow, decision))
    assert ipaddress.ip_address(header.source_ip).ipv4_mapped == ipaddress.ip_address("127.0.0.1")


def test_data_after_the_decision_is_a_bug():
    s = session("203.0.113.9", 5433)
    s.start(now=0.0)
    with pytest.raises(RuntimeError):
        s.data(b"x")


def test_a_record_names_the_match_then_the_sni_then_the_asked_name_then_a_bound_name():
    from clrk.policy import Decision
    from clrk_worker_dialer.session import best_name

    base = Decision(Reason.POLICY, "default/gw", "default/a", "deny-all")
    names = frozenset({"b.test", "a.test"})
    assert best_name(base._replace(hostname="m.test"), names, "s.test", "q.test") == "m.test"
    assert best_name(base, names, "s.test", "q.test") == "s.test"
    assert best_name(base, names, None, "q.test") == "q.test"
    assert best_name(base, names) == "a.test"
    assert best_name(base, frozenset()) == ""


def test_in_report_mode_a_denial_dials_where_it_goes_through_and_keeps_its_reason():
    report = dataclasses.replace(POLICY, mode="Report")
    flow = Flow("198.18.0.2", 40000, "192.0.2.10", 80, AGENT, frozenset({"evil.example.com"}), "c1")
    action = TcpSession(report, flow, HOPS).start(now=0.0)
    assert isinstance(action, Dial)
    assert (action.decision.reason, action.decision.enforced) == (Reason.POLICY, False)
    assert action.next_hop == HOPS[action.decision.through.listener]
    header, _used = proxy_v2.decode(action.preamble)
    assert header.route is None and header.deny_policy is None  # as allow-all sends it


def test_in_report_mode_a_blocked_address_is_still_refused():
    report = dataclasses.replace(POLICY, mode="Report")
    flow = Flow("198.18.0.2", 40000, "169.254.169.254", 80, AGENT, frozenset(), "c2")
    action = TcpSession(report, flow, HOPS).start(now=0.0)
    assert isinstance(action, Refuse) and action.decision.reason is Reason.BLOCKED_ADDRESS
