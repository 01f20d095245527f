"""What the forwarder does with one query: forward, answer locally, or drop."""

from __future__ import annotations

import dataclasses

import dns.message
import dns.rcode
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clrk.policy import Agent, Reason
from clrk_worker_dialer.dns_policy import Answer, Drop, Forward, on_query
from tests.conftest import compile_yaml
from tests.worker_dialer.dialer_policy import POLICY_YAML, gateway_policy

POLICY = gateway_policy()
A = Agent("default", "agent-a", {"team": "a"})


def query(name: str, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


@pytest.mark.parametrize(
    "name",
    ["api.example.com", "API.Example.com.", "x.example.org", "time.example.com",
     "paste.example.net"],
)  # fmt: skip
def test_names_some_pattern_of_the_agent_could_match_are_forwarded(name):
    assert isinstance(on_query(POLICY, A, query(name)), Forward)


@pytest.mark.parametrize(
    "name", ["evil.example.com", "example.org", "a.b.example.org", "secret.attacker.test"]
)
def test_filtered_mode_answers_nxdomain_locally_for_unlisted_names(name):
    wire = query(name)
    verdict = on_query(POLICY, A, wire)
    assert isinstance(verdict, Answer)
    assert verdict.decision.reason is Reason.DNS_FILTERED
    assert verdict.decision.hostname == name
    answer = dns.message.from_wire(verdict.wire)
    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert answer.id == dns.message.from_wire(wire).id


def test_an_unknown_source_gets_refused_locally():
    verdict = on_query(POLICY, None, query("api.example.com"))
    assert isinstance(verdict, Answer) and verdict.decision.reason is Reason.UNKNOWN_AGENT
    assert dns.message.from_wire(verdict.wire).rcode() == dns.rcode.REFUSED


def test_forward_mode_forwards_every_name():
    policy = compile_yaml(POLICY_YAML.replace("mode: Filtered", "mode: Forward")).gateways[
        ("default", "gw")
    ]
    assert isinstance(on_query(policy, A, query("evil.example.com")), Forward)


def test_a_malformed_query_is_dropped():
    assert isinstance(on_query(POLICY, A, b"\x00\x01garbage"), Drop)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(wire):
    on_query(POLICY, A, wire)


def test_a_report_gateway_forwards_a_filtered_name_and_hands_back_the_denial_to_record():
    verdict = on_query(dataclasses.replace(POLICY, mode="Report"), A, query("evil.example.com"))
    assert isinstance(verdict, Forward)
    assert verdict.reported.reason is Reason.DNS_FILTERED
    assert verdict.reported.hostname == "evil.example.com"
    assert on_query(POLICY, A, query("api.example.com")).reported is None


def test_a_forwarded_query_of_the_usual_shape_carries_its_echo_read_with_it():
    """The snoop takes the question its answer must repeat from this one reading."""
    wire = query("API.Example.com")
    verdict = on_query(POLICY, A, wire)
    assert isinstance(verdict, Forward) and verdict.echo is not None
    assert verdict.echo.query == verdict.query
    assert (verdict.echo.head, verdict.echo.question) == (wire[:2], wire[12:])
    with_edns = dns.message.make_query("api.example.com", "A", use_edns=0).to_wire()
    verdict = on_query(POLICY, A, with_edns)
    assert isinstance(verdict, Forward) and verdict.echo is None
