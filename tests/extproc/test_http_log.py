"""`egress.http` records from HTTP access-log entries (pure): the tripwire's
`credential_misuse` record, and the allow record of a chain without ext_proc, the same
record ext_proc's exchange writes for the same request."""

from __future__ import annotations

import datetime

from envoy_data_plane.envoy.config.core.v3 import RequestMethod
from envoy_data_plane.envoy.data.accesslog.v3 import (
    AccessLogCommon,
    HttpAccessLogEntry,
    HttpRequestProperties,
    HttpResponseProperties,
)

from clrk.records.schema import CREDENTIAL, DENY_REASON, HTTP_REQUEST
from clrk.wire import (
    CHAIN_ROUTE_TAG,
    CHAIN_RULE_TAG,
    CREDENTIAL_MISUSE,
    HEADER_AGENT_NAME,
    HEADER_AGENT_NAMESPACE,
    HEADER_AUTHORITY,
    HEADER_CONNECTION_ID,
    HEADER_DENY_POLICY,
    LISTENER_TAG,
    METHOD_TAG,
    MISUSE_ROUTE_PREFIX,
    ChainFacts,
    TlvType,
    tlv_tag,
)
from clrk_extproc.exchange import MAX_VALUE, Exchange
from clrk_extproc.http_log import entry_record

START = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
START_NS = int(START.timestamp()) * 1_000_000_000
TAGS = {
    tlv_tag(TlvType.AGENT_NAMESPACE): "team", tlv_tag(TlvType.AGENT_NAME): "bot",
    tlv_tag(TlvType.AUTHORITY): "api.test", tlv_tag(TlvType.CONNECTION_ID): "c-9",
    tlv_tag(TlvType.ROUTE): "team/api", tlv_tag(TlvType.DENY_POLICY): "-",
    LISTENER_TAG: "web", CHAIN_ROUTE_TAG: "team/api", CHAIN_RULE_TAG: "1", METHOD_TAG: "PATCH",
}  # fmt: skip


def entry(tags=None, status: int | None = 201, path: str = "/v1/x?y=1") -> HttpAccessLogEntry:
    return HttpAccessLogEntry(
        common_properties=AccessLogCommon(
            start_time=START,
            time_to_first_downstream_tx_byte=datetime.timedelta(milliseconds=40),
            duration=datetime.timedelta(milliseconds=90),
            custom_tags=TAGS if tags is None else tags,
        ),
        request=HttpRequestProperties(
            request_method=RequestMethod.PATCH, authority="api.test", path=path
        ),
        response=HttpResponseProperties(response_code=status),
    )


def exchange_record(status: int):
    """What ext_proc records for the same request on the same chain."""
    facts = ChainFacts("team/gw", "web", "team/api", 1)
    headers = [(":method", "PATCH"), (":authority", "api.test"), (":path", "/v1/x?y=1"),
               (HEADER_AGENT_NAMESPACE, "team"), (HEADER_AGENT_NAME, "bot"),
               (HEADER_AUTHORITY, "api.test"), (HEADER_CONNECTION_ID, "c-9"),
               (HEADER_DENY_POLICY, "-")]  # fmt: skip
    exchange = Exchange()
    assert exchange.request(headers, facts, now_ns=START_NS) == (None, None)
    return exchange.response([(":status", str(status))], now_ns=START_NS + 40_000_000)


def test_access_log_record_is_the_record_ext_proc_writes() -> None:
    assert entry_record(entry(), "team/gw") == exchange_record(201)


def test_a_5xx_from_upstream_is_an_error_as_in_ext_proc() -> None:
    record = entry_record(entry(status=503), "team/gw")
    assert record == exchange_record(503) and record.error


def test_a_request_ext_proc_answered_for_a_deny_tlv_makes_no_second_record() -> None:
    assert entry_record(entry({**TAGS, tlv_tag(TlvType.DENY_POLICY): "team/no"}), "g") is None


def test_a_request_without_response_has_status_zero_and_ends_with_the_stream() -> None:
    e = entry(status=None)
    e.common_properties.time_to_first_downstream_tx_byte = None
    record = entry_record(e, "team/gw")
    assert record is not None
    assert record.attributes["http.response.status_code"] == 0
    assert record.end_ns == START_NS + 90_000_000


def test_an_entry_without_tags_still_records_what_envoy_saw() -> None:
    record = entry_record(entry(tags={CHAIN_ROUTE_TAG: "-"}), "team/gw")
    assert record is not None
    attrs = record.attributes
    assert attrs["url.path"] == "/v1/x?y=1" and attrs["clrk.dst.name"] == "api.test"
    assert attrs["agent.name"] == "" and "clrk.egress.route" not in attrs


def test_an_entry_of_a_chain_with_ext_proc_makes_no_allow_record() -> None:
    tags = {k: v for k, v in TAGS.items() if k != CHAIN_ROUTE_TAG}
    assert entry_record(entry(tags), "team/gw") is None


def test_a_tripwire_entry_gets_its_misuse_record_only() -> None:
    e = entry()
    e.common_properties.route_name = MISUSE_ROUTE_PREFIX + "team/key"
    record = entry_record(e, "team/gw")
    assert record is not None and record.attributes[DENY_REASON] == CREDENTIAL_MISUSE
    allowed = entry_record(entry(), "team/gw")
    assert allowed is not None and DENY_REASON not in allowed.attributes


def test_long_values_are_cut_like_ext_proc_cuts_them() -> None:
    record = entry_record(entry(path="/" + "a" * 9000), "team/gw")
    assert record is not None and len(record.attributes["url.path"]) == MAX_VALUE


def misuse_entry(route_name: str) -> HttpAccessLogEntry:
    return HttpAccessLogEntry(
        common_properties=AccessLogCommon(
            route_name=route_name,
            start_time=START,
            duration=datetime.timedelta(milliseconds=2),
            custom_tags={
                tlv_tag(TlvType.AGENT_NAMESPACE): "team", tlv_tag(TlvType.AGENT_NAME): "bot",
                tlv_tag(TlvType.AUTHORITY): "paste.example", tlv_tag(TlvType.CONNECTION_ID): "c-7",
                tlv_tag(TlvType.ROUTE): "team/paste", LISTENER_TAG: "web",
            },
        ),
        request=HttpRequestProperties(
            request_method=RequestMethod.POST, authority="paste.example", path="/up"
        ),
        response=HttpResponseProperties(response_code=403),
    )  # fmt: skip


def test_a_tripwire_entry_is_one_deny_record_naming_the_credential() -> None:
    record = entry_record(misuse_entry("credential_misuse/team/anthropic-key"), "team/gw")
    assert record is not None
    assert record.name == HTTP_REQUEST and record.severity == "WARN" and record.error
    attrs = dict(record.attributes)
    assert attrs[DENY_REASON] == "credential_misuse"
    assert attrs[CREDENTIAL] == "team/anthropic-key"
    assert (attrs["agent.namespace"], attrs["agent.name"]) == ("team", "bot")
    assert (attrs["http.request.method"], attrs["url.path"]) == ("POST", "/up")
    assert attrs["http.response.status_code"] == 403
    assert attrs["clrk.egress.listener"] == "web"


def test_any_other_entry_makes_no_record() -> None:
    assert entry_record(misuse_entry("route/team/paste/rule/0"), "team/gw") is None
    assert entry_record(HttpAccessLogEntry(), "team/gw") is None


def test_a_request_through_a_credentials_hosts_names_the_credential() -> None:
    injected = entry()
    injected.common_properties.route_name = "injected/team/anthropic-key"
    record = entry_record(injected, "team/gw")
    assert record is not None and record.attributes[CREDENTIAL] == "team/anthropic-key"
    assert CREDENTIAL not in entry_record(entry(), "team/gw").attributes
