"""The wire contract: the numbers SPEC 6 fixes, the tables built from them, and the chain
facts ext_proc reads from gRPC metadata."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clrk.wire import (
    HEADER_PREFIX,
    TAGGED_TLVS,
    TLV_FIELDS,
    TLV_FILTER_STATE_KEY,
    TLV_HEADERS,
    ChainFacts,
    TlvType,
    tlv_format,
    tlv_tag,
)


def test_tlv_types_are_the_ones_spec_6_assigns():
    assert {t.name: int(t) for t in TlvType} == {
        "AUTHORITY": 0x02,
        "AGENT_NAMESPACE": 0xE1,
        "AGENT_NAME": 0xE2,
        "ROUTE": 0xE3,
        "DENY_POLICY": 0xE4,
        "CONNECTION_ID": 0xE5,
    }


def test_every_tlv_has_one_field_and_one_request_header_carries_each():
    assert set(TLV_FIELDS) == set(TlvType)
    assert sorted(TLV_HEADERS.values()) == sorted(TLV_FIELDS.values())
    assert all(h.startswith(HEADER_PREFIX) for h in TLV_HEADERS)


def test_access_log_tags_carry_every_tlv_but_the_deny_policy():
    assert set(TAGGED_TLVS) == set(TlvType) - {TlvType.DENY_POLICY}
    assert tlv_tag(TlvType.ROUTE) == TLV_FIELDS[TlvType.ROUTE]


def test_the_formatter_reads_a_field_of_the_filter_state():
    assert tlv_format("route") == f"%FILTER_STATE({TLV_FILTER_STATE_KEY}:FIELD:route)%"


names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)


@given(
    names,
    names,
    st.none() | names,
    st.none() | st.integers(0, 99),
    st.none() | names,
    st.none() | st.integers(400, 599),
    st.none() | st.text(min_size=1, max_size=80) | st.sampled_from(["100% café", "%REQ(:path)%"]),
)
def test_facts_round_trip_through_ascii_metadata(gw, lst, route, rule, policy, status, msg):
    facts = ChainFacts(gw, lst, route, rule, policy, status, msg)
    pairs = facts.metadata()
    assert all(v.isascii() and v.isprintable() for _, v in pairs)
    # Envoy reads initial metadata as a format string: a % there fails every request
    # (names cannot hold one; the free-text message is encoded).
    assert not any("%" in v for k, v in pairs if k.endswith("message"))
    back = ChainFacts.from_metadata(pairs)
    assert (back.gateway, back.listener, back.route, back.rule) == (gw, lst, route, rule)
    assert (back.deny_policy, back.status, back.message) == (policy, status, msg)


def test_facts_without_gateway_or_with_bad_numbers_are_refused() -> None:
    gateway = ChainFacts("a/b", "").metadata()[0][0]
    with pytest.raises(ValueError, match="no chain metadata"):
        ChainFacts.from_metadata([(f"{HEADER_PREFIX}route", "a/b")])
    with pytest.raises(ValueError, match="not a number"):
        ChainFacts.from_metadata([(gateway, "a/b"), (f"{HEADER_PREFIX}status", "4x3")])
    facts = ChainFacts.from_metadata([(gateway, b"a/b"), ("other", "1")])
    assert facts == ChainFacts("a/b", "")
