"""`credential_misuse` records from the L7 chains' HTTP access-log entries (pure)."""

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
from clrk.wire import LISTENER_TAG, TlvType, tlv_tag
from clrk_extproc.http_log import misuse_record

START = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def entry(route_name: str) -> HttpAccessLogEntry:
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
    record = misuse_record(entry("credential_misuse/team/anthropic-key"), "team/gw")
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
    assert misuse_record(entry("route/team/paste/rule/0"), "team/gw") is None
    assert misuse_record(HttpAccessLogEntry(), "team/gw") is None
