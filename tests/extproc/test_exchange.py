"""One ext_proc exchange: deny answers, allow records, what the TLV headers say (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clrk.records.schema import DENY_REASON, HTTP_REQUEST
from clrk.wire import (
    DENY_REASON_HEADER,
    HEADER_AGENT_NAME,
    HEADER_AGENT_NAMESPACE,
    HEADER_AUTHORITY,
    HEADER_CONNECTION_ID,
    HEADER_DENY_POLICY,
    HEADER_ROUTE,
    ChainFacts,
)
from clrk_extproc.exchange import Exchange, tlv

FACTS = ChainFacts(gateway="default/gw", listener="tls", route="default/llm", rule=0)
DENY = ChainFacts(
    gateway="default/gw", listener="tls", route="default/paste", rule=0,
    deny_policy="default/no-paste", status=403, message="blocked",
)  # fmt: skip
REQUEST = [
    (":method", "POST"),
    (":authority", "api.anthropic.com"),
    (":path", "/v1/messages"),
    (HEADER_AGENT_NAMESPACE, "team"),
    (HEADER_AGENT_NAME, "bot"),
    (HEADER_AUTHORITY, "api.anthropic.com"),
    (HEADER_CONNECTION_ID, "c-1"),
    (HEADER_ROUTE, "-"),
]


def test_allowed_request_continues_and_records_on_response() -> None:
    ex = Exchange()
    assert ex.request(REQUEST, FACTS, now_ns=1_000) == (None, None)
    record = ex.response([(":status", "201")], now_ns=5_000)
    assert record is not None
    assert record.name == HTTP_REQUEST and record.severity == "INFO" and not record.error
    assert (record.start_ns, record.end_ns) == (1_000, 5_000)
    assert dict(record.attributes) == {
        "clrk.egress.gateway": "default/gw",
        "agent.name": "bot",
        "agent.namespace": "team",
        "http.request.method": "POST",
        "clrk.http.authority": "api.anthropic.com",
        "clrk.dst.name": "api.anthropic.com",
        "url.path": "/v1/messages",
        "http.response.status_code": 201,
        "clrk.egress.listener": "tls",
        "clrk.egress.route": "default/llm",
        "clrk.egress.rule": 0,
        "clrk.connection.id": "c-1",
        "clrk.egress.reason": "allowed",
    }
    assert ex.response([(":status", "201")]) is None  # one record per request


def test_deny_chain_answers_and_records_the_denial() -> None:
    ex = Exchange()
    answer, record = ex.request(REQUEST, DENY, now_ns=7)
    assert answer is not None and answer.status == 403 and answer.body == b"blocked"
    assert record is not None
    assert record.name == HTTP_REQUEST and record.severity == "WARN" and record.error
    assert record.attributes[DENY_REASON] == "deny_policy"
    assert record.attributes["clrk.egress.deny_policy"] == "default/no-paste"
    assert record.attributes["http.response.status_code"] == 403
    assert ex.response([(":status", "403")]) is None  # the denial was the record


def test_default_chain_and_missing_tlvs() -> None:
    ex = Exchange()
    facts = ChainFacts(gateway="default/gw", listener="web")
    ex.request([(":method", "GET"), (":authority", "Example.TEST:8080"), (":path", "/")], facts)
    record = ex.response([(":status", "502")])
    assert record is not None and record.error  # a 5xx marks the span
    attrs = record.attributes
    assert attrs["clrk.egress.reason"] == "allowed_default"
    assert attrs["clrk.dst.name"] == "example.test"
    assert attrs["agent.name"] == "" and "clrk.egress.route" not in attrs
    assert "clrk.connection.id" not in attrs


def test_no_response_headers_still_records_with_status_zero() -> None:
    ex = Exchange()
    ex.request(REQUEST, FACTS)
    record = ex.response([])
    assert record is not None and record.attributes["http.response.status_code"] == 0


def test_response_without_request_is_ignored() -> None:
    assert Exchange().response([(":status", "200")]) is None


def test_tlv_dash_means_absent() -> None:
    assert tlv({"a": "-"}, "a") is None
    assert tlv({"a": ""}, "a") is None
    assert tlv({}, "a") is None
    assert tlv({"a": "x"}, "a") == "x"


@given(
    st.lists(st.tuples(st.text(max_size=20), st.text(max_size=50)), max_size=20),
    st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=5),
)
def test_any_headers_never_raise(request, response) -> None:
    ex = Exchange()
    ex.request(request, FACTS)
    record = ex.response(response)
    assert record is not None
    assert 0 <= record.attributes["http.response.status_code"] <= 999


def test_deny_policy_tlv_wins_over_an_allow_chain() -> None:
    ex = Exchange()
    tagged = [*REQUEST, (HEADER_DENY_POLICY, "default/late")]
    answer, record = ex.request(tagged, FACTS)
    assert answer is not None and answer.status == 403
    assert b"default/late" in answer.body
    assert record is not None and record.attributes["clrk.egress.deny_policy"] == "default/late"


def test_the_tripwire_answer_is_left_to_envoys_access_log() -> None:
    ex = Exchange()
    ex.request(REQUEST, FACTS, now_ns=1_000)
    assert ex.response([(":status", "403"), (DENY_REASON_HEADER, "credential_misuse")]) is None
    assert ex.response([(":status", "403")]) is None  # and nothing afterwards either
