import itertools
import struct

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk_worker_dialer._normalise import evidence_name, is_evidence_name, normalise_ip
from clrk_worker_dialer.dns_binding import (
    MAX_CNAME_HOPS,
    Binding,
    BindingCache,
    DnsQuery,
    _addresses_of_question,
    _parse_query_whole,
    bindings_for,
    bindings_from_answer,
    bindings_from_reply,
    parse_query,
    read_query,
)

# --- helpers -----------------------------------------------------------------------------


def make_query(name: str, rdtype: str = "A", qid: int = 4242) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    query.id = qid
    return query


def rr(owner: str, ttl: int, rdtype: str, *values: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(owner, ttl, "IN", rdtype, *values)


def answer(query: dns.message.Message, *rrsets: dns.rrset.RRset, **changes) -> bytes:
    response = dns.message.make_response(query)
    response.answer.extend(rrsets)
    for attribute, value in changes.items():
        setattr(response, attribute, value)
    return response.to_wire()


def pairs(bindings: list[Binding]) -> set[tuple[str, str]]:
    return {(b.ip, b.name) for b in bindings}


def cname_chain(length: int) -> list[dns.rrset.RRset]:
    """start.test -> hop1.test -> ... -> hop{length}.test"""
    names = ["start.test.", *(f"hop{i}.test." for i in range(1, length + 1))]
    return [rr(a, 300, "CNAME", b) for a, b in itertools.pairwise(names)]


Q = make_query("www.example.com")


# --- examples: what an answer binds ------------------------------------------------------


def test_an_a_record_for_the_question_name_binds_it():
    got = bindings_from_answer(
        Q.to_wire(), answer(Q, rr("www.example.com.", 120, "A", "192.0.2.1"))
    )
    assert got == [Binding("192.0.2.1", "www.example.com", 120)]


def test_every_address_of_the_rrset_is_bound():
    wire = answer(Q, rr("www.example.com.", 60, "A", "192.0.2.1", "192.0.2.2"))
    assert pairs(bindings_from_answer(Q.to_wire(), wire)) == {
        ("192.0.2.1", "www.example.com"),
        ("192.0.2.2", "www.example.com"),
    }


def test_an_aaaa_record_binds_for_an_aaaa_question():
    q = make_query("v6.example.com", "AAAA")
    wire = answer(q, rr("v6.example.com.", 60, "AAAA", "2001:DB8::0:1"))
    assert bindings_from_answer(q.to_wire(), wire) == [Binding("2001:db8::1", "v6.example.com", 60)]


def test_an_ipv4_mapped_aaaa_record_binds_the_ipv4_address():
    q = make_query("m.example.com", "AAAA")
    wire = answer(q, rr("m.example.com.", 60, "AAAA", "::ffff:192.0.2.7"))
    assert pairs(bindings_from_answer(q.to_wire(), wire)) == {("192.0.2.7", "m.example.com")}


def test_the_query_may_be_given_parsed_or_as_wire_bytes():
    wire = answer(Q, rr("www.example.com.", 60, "A", "192.0.2.1"))
    assert bindings_from_answer(parse_query(Q.to_wire()), wire) == bindings_from_answer(
        Q.to_wire(), wire
    )


def test_a_cname_chain_binds_the_address_to_every_name_on_it():
    q = make_query("www.example.com")
    wire = answer(
        q,
        rr("www.example.com.", 300, "CNAME", "edge.cdn.net."),
        rr("edge.cdn.net.", 200, "CNAME", "a1.edge.cdn.net."),
        rr("a1.edge.cdn.net.", 100, "A", "198.51.100.10"),
    )
    assert set(bindings_from_answer(q.to_wire(), wire)) == {
        Binding("198.51.100.10", "www.example.com", 100),
        Binding("198.51.100.10", "edge.cdn.net", 100),
        Binding("198.51.100.10", "a1.edge.cdn.net", 100),
    }


def test_a_binding_lives_no_longer_than_the_cname_links_behind_it():
    wire = answer(
        Q,
        rr("www.example.com.", 30, "CNAME", "edge.cdn.net."),
        rr("edge.cdn.net.", 600, "CNAME", "a1.edge.cdn.net."),
        rr("a1.edge.cdn.net.", 900, "A", "198.51.100.10"),
    )
    ttls = {b.name: b.ttl for b in bindings_from_answer(Q.to_wire(), wire)}
    assert ttls == {"www.example.com": 30, "edge.cdn.net": 600, "a1.edge.cdn.net": 900}


def test_an_address_midway_on_the_chain_binds_only_the_names_up_to_it():
    wire = answer(
        Q,
        rr("www.example.com.", 300, "CNAME", "mid.example.net."),
        rr("mid.example.net.", 300, "A", "192.0.2.5"),
        rr("mid.example.net.", 300, "CNAME", "end.example.org."),
    )
    assert pairs(bindings_from_answer(Q.to_wire(), wire)) == {
        ("192.0.2.5", "www.example.com"),
        ("192.0.2.5", "mid.example.net"),
    }


def test_the_same_address_at_two_chain_owners_is_bound_once_with_the_longer_ttl():
    wire = answer(
        Q,
        rr("www.example.com.", 50, "A", "192.0.2.5"),
        rr("www.example.com.", 300, "CNAME", "b.example.net."),
        rr("b.example.net.", 300, "A", "192.0.2.5"),
    )
    got = bindings_from_answer(Q.to_wire(), wire)
    assert sorted(got) == [
        Binding("192.0.2.5", "b.example.net", 300),
        Binding("192.0.2.5", "www.example.com", 300),
    ]


def test_a_chain_of_exactly_16_hops_binds_its_last_owner():
    q = make_query("start.test")
    wire = answer(q, *cname_chain(MAX_CNAME_HOPS), rr("hop16.test.", 60, "A", "192.0.2.16"))
    got = pairs(bindings_from_answer(q.to_wire(), wire))
    assert len(got) == MAX_CNAME_HOPS + 1
    assert ("192.0.2.16", "start.test") in got and ("192.0.2.16", "hop16.test") in got


def test_a_chain_longer_than_16_hops_stops_and_binds_nothing_beyond():
    q = make_query("start.test")
    wire = answer(
        q,
        *cname_chain(MAX_CNAME_HOPS + 1),
        rr("hop17.test.", 60, "A", "192.0.2.17"),
        rr("hop3.test.", 60, "A", "192.0.2.3"),
    )
    got = pairs(bindings_from_answer(q.to_wire(), wire))
    assert {ip for ip, _ in got} == {"192.0.2.3"}


def test_records_for_unrelated_owners_are_never_bound():
    wire = answer(
        Q,
        rr("www.example.com.", 60, "A", "192.0.2.1"),
        rr("api.anthropic.com.", 60, "A", "203.0.113.66"),
        rr("other.example.com.", 60, "CNAME", "www.example.com."),
    )
    assert pairs(bindings_from_answer(Q.to_wire(), wire)) == {("192.0.2.1", "www.example.com")}


def test_a_cname_target_of_an_unrelated_owner_is_not_followed():
    wire = answer(
        Q,
        rr("decoy.example.com.", 60, "CNAME", "api.anthropic.com."),
        rr("api.anthropic.com.", 60, "A", "203.0.113.66"),
    )
    assert bindings_from_answer(Q.to_wire(), wire) == []


def test_records_outside_the_answer_section_are_never_bound():
    response = dns.message.make_response(Q)
    response.additional.append(rr("www.example.com.", 60, "A", "192.0.2.1"))
    response.authority.append(rr("www.example.com.", 60, "A", "192.0.2.2"))
    assert bindings_from_answer(Q.to_wire(), response.to_wire()) == []


def test_addresses_of_a_type_the_question_did_not_ask_for_are_not_bound():
    wire = answer(
        Q,
        rr("www.example.com.", 60, "A", "192.0.2.1"),
        rr("www.example.com.", 60, "AAAA", "2001:db8::1"),
    )
    assert pairs(bindings_from_answer(Q.to_wire(), wire)) == {("192.0.2.1", "www.example.com")}


def test_an_any_question_binds_both_address_types():
    q = make_query("www.example.com", "ANY")
    wire = answer(
        q,
        rr("www.example.com.", 60, "A", "192.0.2.1"),
        rr("www.example.com.", 60, "AAAA", "2001:db8::1"),
    )
    assert {ip for ip, _ in pairs(bindings_from_answer(q.to_wire(), wire))} == {
        "192.0.2.1",
        "2001:db8::1",
    }


def test_a_question_for_another_type_binds_nothing():
    q = make_query("www.example.com", "TXT")
    wire = answer(q, rr("www.example.com.", 60, "A", "192.0.2.1"))
    assert bindings_from_answer(q.to_wire(), wire) == []


def test_names_are_lower_cased_and_the_question_matches_case_insensitively():
    q = make_query("WwW.ExAmple.COM")
    response = dns.message.make_response(make_query("www.example.com"))
    response.answer.append(rr("WWW.EXAMPLE.COM.", 60, "A", "192.0.2.1"))
    assert pairs(bindings_from_answer(q.to_wire(), response.to_wire())) == {
        ("192.0.2.1", "www.example.com")
    }


def test_a_cname_loop_ends_the_walk():
    wire = answer(
        Q,
        rr("www.example.com.", 60, "CNAME", "a.loop.test."),
        rr("a.loop.test.", 60, "CNAME", "www.example.com."),
        rr("a.loop.test.", 60, "A", "192.0.2.9"),
    )
    assert pairs(bindings_from_answer(Q.to_wire(), wire)) == {
        ("192.0.2.9", "www.example.com"),
        ("192.0.2.9", "a.loop.test"),
    }


def test_an_owner_with_two_cname_targets_is_not_followed():
    wire = answer(
        Q,
        rr("www.example.com.", 60, "CNAME", "a.test."),
        rr("www.example.com.", 60, "CNAME", "b.test."),
        rr("a.test.", 60, "A", "192.0.2.1"),
        rr("b.test.", 60, "A", "192.0.2.2"),
    )
    assert bindings_from_answer(Q.to_wire(), wire) == []


def test_a_repeated_identical_cname_is_still_one_link():
    wire = answer(
        Q,
        rr("www.example.com.", 90, "CNAME", "a.test."),
        rr("www.example.com.", 30, "CNAME", "a.test."),
        rr("a.test.", 60, "A", "192.0.2.1"),
    )
    assert set(bindings_from_answer(Q.to_wire(), wire)) == {
        Binding("192.0.2.1", "www.example.com", 30),
        Binding("192.0.2.1", "a.test", 60),
    }


def test_a_question_name_that_is_not_a_hostname_binds_nothing():
    name = dns.name.Name([b"a.b", b"test", b""])  # a label with a dot in it
    q = make_query(name)
    wire = answer(q, dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1"))
    assert parse_query(q.to_wire()).name == "a\\.b.test"
    assert bindings_from_answer(q.to_wire(), wire) == []


def test_a_chain_stops_at_a_name_that_is_not_a_hostname():
    odd = dns.name.Name([b"x\x00y", b"test", b""])
    wire = answer(
        Q,
        rr("www.example.com.", 60, "CNAME", odd.to_text()),
        dns.rrset.from_text(odd, 60, "IN", "A", "192.0.2.1"),
    )
    assert bindings_from_answer(Q.to_wire(), wire) == []


# --- examples: answers that bind nothing -------------------------------------------------

A_RECORD = rr("www.example.com.", 60, "A", "192.0.2.1")


def test_an_answer_with_another_id_is_ignored():
    assert (
        bindings_from_answer(Q.to_wire(), answer(make_query("www.example.com", qid=1), A_RECORD))
        == []
    )


def test_an_answer_to_another_question_name_is_ignored():
    other = make_query("evil.example.com")
    wire = answer(other, rr("evil.example.com.", 60, "A", "192.0.2.1"), A_RECORD)
    assert bindings_from_answer(Q.to_wire(), wire) == []


def test_an_answer_to_another_question_type_is_ignored():
    assert (
        bindings_from_answer(Q.to_wire(), answer(make_query("www.example.com", "AAAA"), A_RECORD))
        == []
    )


def test_an_answer_in_another_class_is_ignored():
    q = dns.message.make_query("www.example.com", "A", "CH")
    response = dns.message.make_response(q)
    response.answer.append(dns.rrset.from_text("www.example.com.", 60, "CH", "A", "ns.test. 1"))
    assert bindings_from_answer(q.to_wire(), response.to_wire()) == []


def test_a_message_without_the_response_flag_is_ignored():
    assert bindings_from_answer(Q.to_wire(), answer(Q, A_RECORD, flags=dns.flags.RD)) == []


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_an_error_response_binds_nothing(rcode):
    response = dns.message.make_response(Q)
    response.set_rcode(rcode)
    response.answer.append(A_RECORD)
    assert bindings_from_answer(Q.to_wire(), response.to_wire()) == []


def test_a_response_with_another_opcode_is_ignored():
    response = dns.message.make_response(Q)
    response.set_opcode(dns.opcode.NOTIFY)
    response.answer.append(A_RECORD)
    assert bindings_from_answer(Q.to_wire(), response.to_wire()) == []


def test_a_response_with_two_questions_is_ignored():
    response = dns.message.make_response(Q)
    response.question.append(rr("evil.example.com.", 0, "A", "192.0.2.9"))
    response.answer.append(A_RECORD)
    assert bindings_from_answer(Q.to_wire(), response.to_wire()) == []


GOOD_ANSWER = answer(Q, A_RECORD)


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x10\x92",
        GOOD_ANSWER[:11],
        GOOD_ANSWER[:-1],
        GOOD_ANSWER + b"\x00",
        GOOD_ANSWER[:12] + b"\xff" * 40,
        b"\x00" * 512,
    ],
    ids=["empty", "two bytes", "short header", "truncated", "trailing junk", "garbage", "zeros"],
)
def test_a_malformed_answer_binds_nothing(wire):
    assert bindings_from_answer(Q.to_wire(), wire) == []


def test_a_malformed_query_binds_nothing():
    assert bindings_from_answer(b"\x00\x01garbage", GOOD_ANSWER) == []


# --- examples: parse_query ---------------------------------------------------------------


def test_parse_query_gives_id_lower_cased_name_type_and_class():
    assert parse_query(make_query("API.Example.COM.", "AAAA", qid=7).to_wire()) == DnsQuery(
        7, "api.example.com", 28, 1
    )


def test_parse_query_rejects_responses_and_garbage():
    assert parse_query(GOOD_ANSWER) is None
    assert parse_query(b"\x01\x02\x03") is None
    assert parse_query(b"") is None


def test_parse_query_rejects_a_query_without_a_question():
    query = make_query("www.example.com")
    query.question.clear()
    assert parse_query(query.to_wire()) is None


# --- examples: the binding cache ---------------------------------------------------------

AGENT = ("agents", "summariser")
OTHER = ("agents", "crawler")


def test_a_bound_name_is_returned_for_its_ip():
    cache = BindingCache()
    cache.bind(AGENT, "192.0.2.1", "www.example.com", 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=1) == {"www.example.com"}
    assert cache.names_for(AGENT, "192.0.2.2", now=1) == frozenset()


def test_several_names_for_one_ip_are_all_returned():
    cache = BindingCache()
    cache.add(
        AGENT,
        [Binding("192.0.2.1", "a.test", 60), Binding("192.0.2.1", "b.test", 60)],
        now=0,
    )
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == {"a.test", "b.test"}


def test_bindings_are_per_agent():
    cache = BindingCache()
    cache.bind(AGENT, "192.0.2.1", "api.anthropic.com", 60, now=0)
    assert cache.names_for(OTHER, "192.0.2.1", now=0) == frozenset()
    cache.bind(OTHER, "192.0.2.1", "paste.test", 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == {"api.anthropic.com"}
    assert cache.names_for(OTHER, "192.0.2.1", now=0) == {"paste.test"}


def test_a_binding_is_valid_until_its_ttl_runs_out():
    cache = BindingCache()
    cache.bind(AGENT, "192.0.2.1", "a.test", 60, now=100)
    assert cache.names_for(AGENT, "192.0.2.1", now=159.9) == {"a.test"}
    assert cache.names_for(AGENT, "192.0.2.1", now=160) == frozenset()


def test_a_ttl_of_zero_lives_the_minimum_ttl():
    cache = BindingCache()
    cache.bind(AGENT, "192.0.2.1", "a.test", 0, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=4.9) == {"a.test"}
    assert cache.names_for(AGENT, "192.0.2.1", now=5) == frozenset()


def test_a_huge_ttl_is_capped_at_the_maximum_ttl():
    cache = BindingCache()
    cache.bind(AGENT, "192.0.2.1", "a.test", 2**31 - 1, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=3599) == {"a.test"}
    assert cache.names_for(AGENT, "192.0.2.1", now=3600) == frozenset()


def test_the_ttl_bounds_are_configurable():
    cache = BindingCache(min_ttl=30, max_ttl=60)
    cache.bind(AGENT, "192.0.2.1", "short.test", 1, now=0)
    cache.bind(AGENT, "192.0.2.2", "long.test", 86400, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=29) == {"short.test"}
    assert cache.names_for(AGENT, "192.0.2.2", now=60) == frozenset()


def test_rebinding_a_name_takes_the_latest_answers_ttl():
    cache = BindingCache()
    cache.bind(AGENT, "192.0.2.1", "a.test", 600, now=0)
    cache.bind(AGENT, "192.0.2.1", "a.test", 10, now=100)
    assert cache.names_for(AGENT, "192.0.2.1", now=109) == {"a.test"}
    assert cache.names_for(AGENT, "192.0.2.1", now=110) == frozenset()


def test_names_expire_independently():
    cache = BindingCache()
    cache.bind(AGENT, "192.0.2.1", "short.test", 10, now=0)
    cache.bind(AGENT, "192.0.2.1", "long.test", 100, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=50) == {"long.test"}


def test_the_least_recently_used_ip_is_evicted_beyond_the_bound():
    cache = BindingCache(max_ips=3)
    for i in range(1, 5):
        cache.bind(AGENT, f"192.0.2.{i}", f"h{i}.test", 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == frozenset()
    assert all(cache.names_for(AGENT, f"192.0.2.{i}", now=0) for i in (2, 3, 4))


def test_a_lookup_counts_as_a_use_for_the_lru():
    cache = BindingCache(max_ips=2)
    cache.bind(AGENT, "192.0.2.1", "a.test", 60, now=0)
    cache.bind(AGENT, "192.0.2.2", "b.test", 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=0)
    cache.bind(AGENT, "192.0.2.3", "c.test", 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == {"a.test"}
    assert cache.names_for(AGENT, "192.0.2.2", now=0) == frozenset()


def test_the_ip_bound_is_per_agent():
    cache = BindingCache(max_ips=1)
    cache.bind(AGENT, "192.0.2.1", "a.test", 60, now=0)
    cache.bind(OTHER, "192.0.2.2", "b.test", 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == {"a.test"}


def test_the_default_bound_is_4096_ips_per_agent():
    cache = BindingCache()
    for i in range(4097):
        cache.bind(AGENT, f"10.0.{i // 256}.{i % 256}", "a.test", 60, now=0)
    assert cache.names_for(AGENT, "10.0.0.0", now=0) == frozenset()
    assert cache.names_for(AGENT, "10.0.0.1", now=0) == {"a.test"}
    assert cache.names_for(AGENT, "10.0.16.0", now=0) == {"a.test"}


def test_the_oldest_name_is_evicted_beyond_the_names_per_ip_bound():
    cache = BindingCache()
    for i in range(17):
        cache.bind(AGENT, "192.0.2.1", f"n{i}.test", 60, now=0)
    names = cache.names_for(AGENT, "192.0.2.1", now=0)
    assert len(names) == 16 and "n0.test" not in names and "n16.test" in names


def test_rebinding_a_name_makes_it_the_newest():
    cache = BindingCache(max_names_per_ip=2)
    cache.bind(AGENT, "192.0.2.1", "a.test", 60, now=0)
    cache.bind(AGENT, "192.0.2.1", "b.test", 60, now=0)
    cache.bind(AGENT, "192.0.2.1", "a.test", 60, now=0)
    cache.bind(AGENT, "192.0.2.1", "c.test", 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == {"a.test", "c.test"}


def test_expired_names_never_push_out_live_ones():
    cache = BindingCache(max_names_per_ip=2)
    cache.bind(AGENT, "192.0.2.1", "live.test", 600, now=0)
    cache.bind(AGENT, "192.0.2.1", "dead.test", 5, now=0)
    cache.bind(AGENT, "192.0.2.1", "new.test", 600, now=10)
    assert cache.names_for(AGENT, "192.0.2.1", now=10) == {"live.test", "new.test"}


def test_ips_are_normalised_on_bind_and_lookup():
    cache = BindingCache()
    cache.bind(AGENT, "::ffff:192.0.2.1", "a.test", 60, now=0)
    cache.bind(AGENT, "2001:DB8:0::1", "b.test", 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == {"a.test"}
    assert cache.names_for(AGENT, "::ffff:c000:201", now=0) == {"a.test"}
    assert cache.names_for(AGENT, "2001:db8::1", now=0) == {"b.test"}


def test_names_are_normalised_on_bind():
    cache = BindingCache()
    cache.bind(AGENT, "192.0.2.1", "API.Example.COM.", 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == {"api.example.com"}


@pytest.mark.parametrize(("ip", "name"), [("not-an-ip", "a.test"), ("192.0.2.1", "a b.test")])
def test_an_invalid_ip_or_name_binds_nothing(ip, name):
    cache = BindingCache()
    cache.bind(AGENT, ip, name, 60, now=0)
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == frozenset()
    assert cache.names_for(AGENT, ip, now=0) == frozenset()


def test_forgetting_an_agent_drops_its_bindings_only():
    cache = BindingCache()
    cache.bind(AGENT, "192.0.2.1", "a.test", 60, now=0)
    cache.bind(OTHER, "192.0.2.1", "b.test", 60, now=0)
    cache.forget(AGENT)
    cache.forget(("nobody", "here"))
    assert cache.names_for(AGENT, "192.0.2.1", now=0) == frozenset()
    assert cache.names_for(OTHER, "192.0.2.1", now=0) == {"b.test"}


@pytest.mark.parametrize(
    "kwargs",
    [{"max_ips": 0}, {"max_names_per_ip": 0}, {"min_ttl": -1}, {"min_ttl": 10, "max_ttl": 5}],
)
def test_the_cache_rejects_nonsense_bounds(kwargs):
    with pytest.raises(ValueError):
        BindingCache(**kwargs)


def test_an_answer_snooped_into_the_cache_serves_the_decision():
    wire = answer(
        Q,
        rr("www.example.com.", 300, "CNAME", "edge.cdn.net."),
        rr("edge.cdn.net.", 20, "A", "198.51.100.10"),
    )
    cache = BindingCache()
    cache.add(AGENT, bindings_from_answer(Q.to_wire(), wire), now=1000)
    assert cache.names_for(AGENT, "198.51.100.10", now=1010) == {"www.example.com", "edge.cdn.net"}
    assert cache.names_for(AGENT, "198.51.100.10", now=1020) == frozenset()


# --- properties --------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_as_an_answer_never_raise_and_never_bind(data):
    assert bindings_from_answer(Q.to_wire(), data) == []
    assert bindings_from_answer(data, GOOD_ANSWER) in ([], bindings_from_answer(Q, GOOD_ANSWER))


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_behind_the_expected_header_never_raise(data):
    # The same ID, flags and counts as the real answer: the parser has to dig in.
    wire = GOOD_ANSWER[:12] + data
    for binding in bindings_from_answer(Q.to_wire(), wire):
        assert binding.name == "www.example.com"


@settings(max_examples=300)
@given(st.data())
def test_mutated_answers_never_raise_and_bind_only_the_question_name(data):
    wire = bytearray(GOOD_ANSWER)
    for _ in range(data.draw(st.integers(1, 6))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    for binding in bindings_from_answer(Q.to_wire(), bytes(wire)):
        assert binding.name == "www.example.com"


labels = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
names = st.builds(lambda a, b: f"{a}.{b}.test", labels, labels)
ipv4 = st.ip_addresses(v=4).map(str)


@st.composite
def answers(draw):
    """A NOERROR answer: a random CNAME graph (one target per owner, loops possible) over
    a small pool of names, and addresses scattered over the pool."""
    pool = draw(st.lists(names, min_size=1, max_size=25, unique=True))
    qname = pool[0]
    targets = draw(st.dictionaries(st.sampled_from(pool), st.sampled_from(pool), max_size=25))
    addresses = draw(st.lists(st.tuples(st.sampled_from(pool), ipv4), max_size=20))
    q = make_query(qname)
    rrsets = [rr(f"{a}.", 60, "CNAME", f"{b}.") for a, b in targets.items()]
    rrsets += [rr(f"{owner}.", 60, "A", ip) for owner, ip in addresses]
    order = draw(st.permutations(range(len(rrsets))))
    return q, answer(q, *(rrsets[i] for i in order)), qname, targets, addresses


def chain_of(qname: str, targets: dict[str, str]) -> list[str]:
    chain = [qname]
    while qname in targets and len(chain) <= MAX_CNAME_HOPS and targets[qname] not in chain:
        qname = targets[qname]
        chain.append(qname)
    return chain


@settings(max_examples=300)
@given(answers())
def test_random_valid_answers_bind_exactly_the_chain_names_up_to_each_owner(case):
    q, wire, qname, targets, addresses = case
    chain = chain_of(qname, targets)
    got = pairs(bindings_from_answer(q.to_wire(), wire))
    assert {name for _, name in got} <= set(chain)
    expected = {
        (ip, name)
        for owner, ip in addresses
        if owner in chain
        for name in chain[: chain.index(owner) + 1]
    }
    assert got == expected


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]), ipv4, names, st.integers(0, 5000), st.floats(0, 1e4)
        ),
        max_size=60,
    ),
    st.floats(0, 2e4),
)
def test_the_cache_never_exceeds_its_bounds_nor_returns_expired_or_foreign_names(ops, probe):
    cache = BindingCache(max_ips=4, max_names_per_ip=3)
    ops.sort(key=lambda op: op[4])  # time moves forward
    live: dict[tuple[str, str, str], float] = {}
    for agent, ip, name, ttl, now in ops:
        cache.bind(agent, ip, name, ttl, now)
        live[agent, ip, name] = now + min(max(ttl, 5), 3600)
    probe_at = max([probe, *(op[4] for op in ops)])
    for agent in ("a", "b"):
        ips = {ip for a, ip, _ in live if a == agent}
        found = {ip: cache.names_for(agent, ip, probe_at) for ip in ips}
        assert sum(1 for names in found.values() if names) <= 4
        for ip, bound in found.items():
            assert len(bound) <= 3
            for name in bound:
                assert live[agent, ip, name] > probe_at


# --- the fast paths: the same as the whole reading, for any bytes ---------------------------

ODD_LABEL = st.binary(min_size=1, max_size=6) | st.sampled_from(
    [b"Www", b"EXAMPLE", b"a.b", b"x_y", b"-", b"\\", b"\x00", b"\xff", b"a b"]
)
QUERY_NAMES = names | st.lists(ODD_LABEL, min_size=0, max_size=4).map(
    lambda labels: dns.name.Name([*labels, b""])
)
FLIPS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3)


@st.composite
def query_wires(draw) -> bytes:
    """Queries as agents send them: any name, case and type, EDNS or not, an ID of theirs;
    sometimes the name is cut short by a pointer into the header."""
    query = dns.message.make_query(
        draw(QUERY_NAMES), draw(st.sampled_from(["A", "AAAA", "ANY", "MX", "TXT"]))
    )
    query.id = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        query.use_edns(0, payload=1232)
    wire = query.to_wire()
    if draw(st.integers(0, 4)) == 0:  # hostile: a pointer into the header ends the name
        cut = draw(st.integers(13, max(13, len(wire) - 6)))
        wire = wire[:cut] + bytes([0xC0, draw(st.integers(0, 11))]) + wire[-4:]
    return wire


def flipped(wire: bytes, flips, start: int = 0) -> bytes:
    if len(wire) <= start:
        return wire
    mutated = bytearray(wire)
    for at, value in flips:
        mutated[start + at % (len(wire) - start)] = value
    return bytes(mutated)


@settings(max_examples=600, deadline=None)
@given(query_wires() | st.binary(max_size=60), FLIPS)
def test_parse_query_reads_every_query_as_the_whole_message_reads_it(wire, flips):
    wire = flipped(wire, flips)
    assert parse_query(wire) == _parse_query_whole(wire)


def echoed_answers(query_wire: bytes, data) -> bytes:
    """What the forwarder takes as the answer to query_wire: its ID and question bytes,
    then a real answer's records (of the agent's asking, so maybe any), sometimes hostile."""
    end = len(query_wire) if query_wire[4:12] == b"\x00\x01" + bytes(6) else 12
    try:
        query = dns.message.from_wire(query_wire)
        response = dns.message.make_response(query)
        qname = query.question[0].name
    except Exception:
        return query_wire[:2] + data.draw(st.binary(max_size=80))
    chain = [qname, *(dns.name.from_text(n) for n in data.draw(st.lists(names, max_size=3)))]
    for owner, target in itertools.pairwise(chain):
        response.answer.append(dns.rrset.from_text(owner, 60, "IN", "CNAME", target.to_text()))
    for _ in range(data.draw(st.integers(0, 3))):
        owner = data.draw(st.sampled_from(chain))
        rdtype = data.draw(st.sampled_from(["A", "AAAA"]))
        value = data.draw(ipv4 if rdtype == "A" else st.just("2001:db8::1"))
        response.answer.append(
            dns.rrset.from_text(owner, data.draw(st.integers(0, 2**32 - 1)), "IN", rdtype, value)
        )
    if data.draw(st.booleans()):
        response.set_rcode(data.draw(st.sampled_from([0, 0, 3, 16])))
    wire = response.to_wire()
    how = data.draw(st.integers(0, 5))
    if how == 1:  # anything at all behind the echoed ID and question
        wire = wire[:12] + query_wire[12:end] + data.draw(st.binary(max_size=60))
    elif how == 2:  # bytes flipped behind the question (the header too: counts, flags)
        flips = data.draw(FLIPS)
        head = flipped(wire[2:12], flips)
        wire = wire[:2] + head + flipped(wire[12:], flips, end - 12)
    elif how == 3:  # cut short
        wire = wire[: data.draw(st.integers(12, len(wire)))]
    elif how == 4:  # the question's case changed, as a 0x20-randomising resolver would not
        wire = wire[:12] + wire[12:end].swapcase() + wire[end:]
    return query_wire[:2] + wire[2:]


def as_forwarded(wire: bytes, answer: bytes) -> list[Binding]:
    """What the forwarder binds of `answer` for the agent that sent `wire`."""
    return bindings_for(*read_query(wire), answer)


@settings(max_examples=800, deadline=None)
@given(query_wires(), st.data())
def test_an_echoed_answer_binds_what_the_whole_reading_binds(wire, data):
    query = parse_query(wire)
    if query is None:
        return
    answer = echoed_answers(wire, data)
    assert as_forwarded(wire, answer) == bindings_from_answer(query, answer)


@settings(max_examples=300, deadline=None)
@given(answers(), st.integers(0, 2**32 - 1))
def test_snooped_bindings_are_in_normal_form_so_the_cache_need_not_normalise_them(case, ttl):
    q, wire, *_ = case
    bindings = bindings_from_answer(q.to_wire(), wire)
    for ip, name, _ttl in bindings:
        assert normalise_ip(ip) == ip and evidence_name(name) == name
    by_add, by_snooped = BindingCache(), BindingCache()
    by_add.add("a", bindings, 100.0)
    by_snooped.add_snooped("a", bindings, 100.0)
    assert by_add._agents == by_snooped._agents


# --- the echo fast path: each guard, one case -----------------------------------------------


def _with_edns(query: dns.message.Message) -> dns.message.Message:
    query.use_edns(0)
    return query


def _guard_cases() -> dict[str, tuple[DnsQuery | None, bytes, bytes]]:
    """(query, the query's wire, an answer) that the fast path must read as the whole
    path does: each would bind, or bind wrongly, if its guard were left out."""
    q_wire = Q.to_wire()
    ok = answer(Q, A_RECORD)
    ch = dns.message.make_query("www.example.com", "A", "CH")
    ch_answer = dns.message.make_response(ch)
    ch_answer.answer.append(rr("www.example.com.", 60, "A", "192.0.2.1"))
    notify = dns.message.make_response(Q)
    notify.set_opcode(dns.opcode.NOTIFY)
    notify.answer.append(A_RECORD)
    nx = dns.message.make_response(Q)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    nx.answer.append(A_RECORD)
    two = dns.message.make_response(Q)
    two.question.append(rr("evil.example.com.", 0, "A", "192.0.2.9"))
    two.answer.append(A_RECORD)
    odd = dns.name.Name([b"a.b", b"test", b""])
    odd_q = make_query(odd)
    edns = _with_edns(make_query("www.example.com"))
    # A label "a.b" then a pointer to the header's last byte (0: the root): as long as
    # the plain name "a\.b" would be.
    pointer_q = q_wire[:12] + b"\x03a.b\xc0\x0b" + b"\x00\x01\x00\x01"
    pointer_a = pointer_q[:2] + b"\x81\x80" + pointer_q[4:6] + b"\x00\x01" + pointer_q[8:]
    pointer_a += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
    other = make_query("evilxx.example.com")
    other_a = answer(other, rr("evilxx.example.com.", 60, "A", "192.0.2.4"))
    odd_a = answer(odd_q, dns.rrset.from_text(odd, 60, "IN", "A", "192.0.2.1"))
    same_length = make_query("evl.example.com")
    evil = answer(same_length, rr("evl.example.com.", 60, "A", "203.0.113.66"))
    plus = make_query("a+b.test")  # printable, not escaped, yet no hostname
    plus_a = answer(plus, rr("a+b.test.", 60, "A", "192.0.2.1"))
    aaaa = make_query("www.example.com", "AAAA")
    return {
        "binds": (q_wire, ok),
        "not a plain hostname": (plus.to_wire(), plus_a),
        "an a answer to an aaaa query": (aaaa.to_wire(), answer(aaaa, A_RECORD)),
        "another id": (q_wire, answer(make_query("www.example.com", qid=1), A_RECORD)),
        "another name": (q_wire, other_a),
        "another type": (q_wire, answer(make_query("www.example.com", "AAAA"), A_RECORD)),
        "another class": (ch.to_wire(), ch_answer.to_wire()),
        "no response flag": (q_wire, answer(Q, A_RECORD, flags=dns.flags.RD)),
        "another opcode": (q_wire, notify.to_wire()),
        "an error": (q_wire, nx.to_wire()),
        "two questions": (q_wire, two.to_wire()),
        "not a hostname": (odd_q.to_wire(), odd_a),
        "edns query": (edns.to_wire(), answer(edns, A_RECORD)),
        "a pointer in the question": (pointer_q, pointer_a),
        "trailing junk": (q_wire, ok + b"\x00"),
        "a name of the same length": (same_length.to_wire(), evil),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_guard_cases()))
def test_the_echo_fast_path_reads_each_guard_case_as_the_whole_reading_does(case):
    wire, response = _guard_cases()[case]
    query = parse_query(wire)
    assert query is not None
    assert as_forwarded(wire, response) == bindings_from_answer(query, response)
    if case == "binds":
        assert pairs(as_forwarded(wire, response)) == {("192.0.2.1", "www.example.com")}


# --- the address-only fast path: each guard, one case; the same as the whole reading -------


def _raw_answer(query_wire: bytes, records: bytes, count: int = 1, **header) -> bytes:
    """An answer to query_wire as written by hand: its ID and question, `records` behind
    it; the header's flags and counts (qd, an, ns, ar) as given or usual (one question)."""
    fields = [header.get("flags", 0x8180), header.get("qd", 1), header.get("an", count)]
    fields += [header.get("ns", 0), header.get("ar", 0)]
    return query_wire[:2] + struct.pack("!5H", *fields) + query_wire[12:] + records


def _rr(rdtype: int, rdata: bytes, ttl=60, owner=b"\xc0\x0c", rdclass=1) -> bytes:
    """A record owned by `owner` (a pointer to the question's name unless told)."""
    return owner + struct.pack("!HHIH", rdtype, rdclass, ttl, len(rdata)) + rdata


V4, V4_OTHER = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
V6 = bytes.fromhex("20010db8000000000000000000000001")
MAPPED = bytes(10) + b"\xff\xff" + V4_OTHER
A_RR, AAAA_RR = _rr(1, V4), _rr(28, V6)


def _address_cases() -> dict[str, tuple[bytes, bytes, bool]]:
    """(query wire, answer, whether the fast path reads it): each case binds, or binds
    otherwise, or raises, if the guard it is named after were left out."""
    q = Q.to_wire()
    aaaa = make_query("www.example.com", "AAAA").to_wire()
    any_q = make_query("www.example.com", "ANY").to_wire()
    bad_cname = _rr(5, b"\x03www\x00\x00")  # its name runs on past its rdata
    return {
        "binds": (q, _raw_answer(q, A_RR), True),
        "binds aaaa": (aaaa, _raw_answer(aaaa, AAAA_RR), True),
        "no answer": (q, _raw_answer(q, b"", 0), True),
        # The whole reading takes the record's first 6 bytes for a second question.
        "two questions": (q, _raw_answer(q, A_RR, qd=2), False),
        "counts an authority record": (q, _raw_answer(q, A_RR, ns=1), False),
        "counts an additional record": (q, _raw_answer(q, A_RR, ar=1), False),
        "no response flag": (q, _raw_answer(q, A_RR, flags=0x0100), False),
        "another opcode": (q, _raw_answer(q, A_RR, flags=0x8180 | (4 << 11)), False),
        "an error": (q, _raw_answer(q, A_RR, flags=0x8183), False),
        "record cut short": (q, _raw_answer(q, A_RR[:8]), False),
        # A pointer to the question's second label: example.com, not www.example.com.
        "owner not the question": (q, _raw_answer(q, _rr(1, V4, owner=b"\xc0\x10")), False),
        "another class": (q, _raw_answer(q, _rr(1, V4, rdclass=3)), False),
        "rdata cut short": (q, _raw_answer(q, _rr(1, V4)[:-2]), False),
        "a of 5 bytes": (q, _raw_answer(q, _rr(1, V4 + b"\x00")), False),
        "aaaa of 4 bytes": (aaaa, _raw_answer(aaaa, _rr(28, V4)), False),
        "another type first": (q, _raw_answer(q, bad_cname + A_RR, 2), False),
        "the type not asked": (q, _raw_answer(q, AAAA_RR), True),
        "an any query": (any_q, _raw_answer(any_q, AAAA_RR + A_RR, 2), False),
        "ttl past 2**31": (q, _raw_answer(q, _rr(1, V4, ttl=2**31)), True),
        "one address twice": (q, _raw_answer(q, _rr(1, V4, 300) + _rr(1, V4, 60), 2), True),
        "a mapped aaaa": (aaaa, _raw_answer(aaaa, _rr(28, MAPPED)), True),
        "trailing bytes": (q, _raw_answer(q, A_RR + b"\x00"), False),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_address_cases()))
def test_the_address_fast_path_reads_each_guard_case_as_the_whole_reading_does(case):
    wire, response, fast = _address_cases()[case]
    query = parse_query(wire)
    assert query is not None
    whole = bindings_from_answer(query, response)
    assert as_forwarded(wire, response) == whole
    assert (_addresses_of_question(query, response, len(wire)) is not None) == fast
    expected = {
        "binds": [Binding("192.0.2.1", "www.example.com", 60)],
        "binds aaaa": [Binding("2001:db8::1", "www.example.com", 60)],
        "an any query": [
            Binding("192.0.2.1", "www.example.com", 60),
            Binding("2001:db8::1", "www.example.com", 60),
        ],
        "ttl past 2**31": [Binding("192.0.2.1", "www.example.com", 0)],
        "one address twice": [Binding("192.0.2.1", "www.example.com", 300)],
        "a mapped aaaa": [Binding("192.0.2.2", "www.example.com", 60)],
    }
    assert whole == expected.get(case, [])


USUAL_RDATA = [(1, V4), (1, V4_OTHER), (28, V6), (28, MAPPED)]
ODD_RDATA = [(5, b"\x03www\x00\x00"), (16, b"\x03abc"), (1, b""), (1, V4 + b"\x00"), (28, V4)]
TTLS = st.sampled_from([60, 300, 0, 2**31 - 1, 2**31, 2**32 - 1])
USUAL_RECORDS = st.lists(st.tuples(st.sampled_from(USUAL_RDATA), TTLS), max_size=4)


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(["A", "AAAA", "ANY", "MX"]),
    st.sampled_from(["www.example.com", "a.test", "WWW.Example.COM"]),
    USUAL_RECORDS,
    st.sampled_from(
        ["none", "flags", "qd", "an", "ns", "ar", "rdata", "class", "owner", "tail", "cut", "flips"]
    ),
    st.data(),
)
def test_address_only_answers_bind_what_the_whole_reading_binds(rdtype, name, records, odd, data):
    """Answers of address records owned by the question's name, each with one thing odd
    about it (flags, a count, a record's type, class, owner or rdata, bytes behind, bytes
    flipped): the fast path reads them as the whole reading does, or leaves them to it."""
    wire = make_query(name, rdtype).to_wire()
    query = parse_query(wire)
    rrs = [_rr(rtype, rdata, ttl) for (rtype, rdata), ttl in records]
    header = {"an": len(rrs)}
    if odd == "flags":
        header["flags"] = data.draw(st.sampled_from([0x8580, 0x8183, 0x0100, 0x8980, 0x8380]))
    elif odd in ("qd", "an", "ns", "ar"):
        header[odd] = data.draw(st.integers(0, len(rrs) + 1))
    elif odd in ("rdata", "class", "owner"):  # one record more, odd in that one way
        (rtype, rdata), rdclass, owner = data.draw(st.sampled_from(USUAL_RDATA)), 1, b"\xc0\x0c"
        if odd == "rdata":
            rtype, rdata = data.draw(st.sampled_from(ODD_RDATA))
        elif odd == "class":
            rdclass = data.draw(st.sampled_from([3, 255]))
        else:  # example.com, the root, www.example.com written out
            owner = data.draw(st.sampled_from([b"\xc0\x10", b"\x00", b"\x03www\xc0\x10"]))
        rrs.insert(data.draw(st.integers(0, len(rrs))), _rr(rtype, rdata, 60, owner, rdclass))
        header["an"] = len(rrs)
    tail = data.draw(st.binary(min_size=1, max_size=4)) if odd == "tail" else b""
    response = _raw_answer(wire, b"".join(rrs) + tail, **header)
    if odd == "cut":
        response = response[: data.draw(st.integers(len(wire), len(response)))]
    elif odd == "flips":
        response = response[:2] + flipped(response[2:], data.draw(FLIPS))
    whole = bindings_from_answer(query, response)
    assert as_forwarded(wire, response) == whole
    if response[: len(wire)][12:] == wire[12:]:  # what the caller checks first: the echo
        fast = _addresses_of_question(query, response, len(wire))
        assert fast is None or fast == whole


@settings(max_examples=1000, deadline=None)
@given(
    st.text(alphabet="ab-_.Z9é \\", max_size=12)
    | st.from_regex(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63}){0,5}\.?", fullmatch=True)
)
def test_a_name_is_in_evidence_form_exactly_when_evidence_name_leaves_it_as_it_is(name):
    assert is_evidence_name(name) == (evidence_name(name) == name)


@pytest.mark.parametrize(
    ("name", "plain"),
    [("api.example.com", True), ("Api.example.com", False), ("api.example.com.", False),
     ("a" * 63, True), ("a" * 64, False), (".".join(["a" * 63] * 4)[:253], True),
     (".".join(["a" * 63] * 4)[:254], False), ("a..b", False), ("", False), ("x_y-z", True)],
)  # fmt: skip
def test_only_a_lower_case_hostname_of_at_most_253_bytes_without_a_final_dot_is_in_evidence_form(
    name, plain
):
    assert is_evidence_name(name) == plain == (evidence_name(name) == name)


# --- the query read once: its echo, each guard one case; the same as the whole reading ------


def _echo_cases() -> dict[str, tuple[bytes, bytes, bool]]:
    """(query wire, an answer, whether read_query gives the query an Echo): each case
    binds, or binds otherwise, if the guard it is named after were left out."""
    q = Q.to_wire()
    ok = answer(Q, A_RECORD)
    upper = make_query("WWW.Example.COM")
    plus = make_query("a+b.test")  # printable, not escaped, yet no hostname
    plus_a = answer(plus, rr("a+b.test.", 60, "A", "192.0.2.1"))
    # "www" then a pointer to the header's ancount low byte: the root in the query (0
    # answers), a label "\000" in an answer (1 answer): another name, one byte longer.
    pointer_q = q[:12] + b"\x03www\xc0\x07" + b"\x00\x01\x00\x01"
    same_length = make_query("evl.example.com")
    edns = _with_edns(make_query("www.example.com"))
    return {
        "binds": (q, ok, True),
        "binds, any case": (upper.to_wire(), answer(upper, A_RECORD), True),
        "not a plain hostname": (plus.to_wire(), plus_a, False),
        "a pointer in the question": (pointer_q, _raw_answer(pointer_q, A_RR), False),
        "binds, edns query read whole": (edns.to_wire(), answer(edns, A_RECORD), False),
        "answer with another id": (q, answer(make_query("www.example.com", qid=1), A_RECORD), True),
        "answer to another question": (
            q, answer(same_length, rr("evl.example.com.", 60, "A", "192.0.2.1")), True,
        ),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_echo_cases()))
def test_the_query_read_once_gives_an_echo_only_when_its_answer_reads_the_same(case):
    wire, response, echoed = _echo_cases()[case]
    query, echo = read_query(wire)
    assert (echo is not None) == echoed
    whole = bindings_from_answer(query, response)
    if echo is not None:
        assert echo.query == query
        assert bindings_from_reply(echo, response) == whole
    assert as_forwarded(wire, response) == whole
    if case.startswith("binds"):
        assert pairs(whole) == {("192.0.2.1", "www.example.com")}
    else:
        assert whole == []


@st.composite
def pointed_query_wires(draw) -> bytes:
    """A hostname's query whose name ends with a pointer into the header, not the root:
    what the header says there (in the query, then in its answer) ends the name."""
    wire = dns.message.make_query(draw(names), draw(st.sampled_from(["A", "AAAA"]))).to_wire()
    return wire[:-5] + bytes([0xC0, draw(st.integers(0, 11))]) + wire[-4:]


# Printable names written as they are, some no hostname ("a+b"): as long as their text.
PRINTABLE_QUERY_WIRES = st.builds(
    lambda name, rdtype: dns.message.make_query(name, rdtype).to_wire(),
    st.from_regex(r"[a-zA-Z0-9+*!=_-]{1,8}\.test", fullmatch=True),
    st.sampled_from(["A", "AAAA"]),
)


@settings(max_examples=1000, deadline=None)
@given(
    query_wires() | pointed_query_wires() | PRINTABLE_QUERY_WIRES | st.binary(max_size=60),
    FLIPS,
    st.data(),
)
def test_an_answer_to_a_query_read_once_binds_what_the_whole_reading_binds(wire, flips, data):
    wire = flipped(wire, flips) if data.draw(st.booleans()) else wire
    read = read_query(wire)
    assert (read and read[0]) == parse_query(wire) == _parse_query_whole(wire)
    if read is None or read[1] is None:
        return
    query, echo = read
    assert echo.query == query
    how = data.draw(st.sampled_from(["echoed", "written", "another id", "another question"]))
    if how == "echoed":
        response = echoed_answers(wire, data)
    else:  # by hand: this ID and question (or not quite), address records at the question
        asked = wire
        if how == "another id":
            asked = bytes([wire[0] ^ 1]) + wire[1:]
        elif how == "another question":
            asked = flipped(wire, data.draw(FLIPS), 12)
        records = data.draw(st.lists(st.sampled_from([A_RR, AAAA_RR]), min_size=1, max_size=3))
        response = _raw_answer(asked, b"".join(records), len(records))
    assert bindings_from_reply(echo, response) == bindings_from_answer(query, response)
