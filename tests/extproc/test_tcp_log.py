"""`egress.tcp` records from TCP access-log entries (pure)."""

from __future__ import annotations

import datetime

from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.data.accesslog.v3 import (
    AccessLogCommon,
    AccessLogType,
    ConnectionProperties,
    TcpAccessLogEntry,
)

from clrk.records.schema import TCP_ALLOWED
from clrk.wire import CHAIN_TAG, LISTENER_TAG, TAGGED_TLVS, TlvType, tlv_tag
from clrk_extproc.tcp_log import is_end, tcp_record

START = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def addr(ip: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=ip, port_value=port))


def entry(kind=AccessLogType.TcpConnectionEnd, tags=None, **props) -> TcpAccessLogEntry:
    return TcpAccessLogEntry(
        common_properties=AccessLogCommon(
            access_log_type=kind,
            downstream_remote_address=addr("198.18.1.2", 40000),
            downstream_local_address=addr("203.0.113.5", 7),
            start_time=START,
            duration=datetime.timedelta(milliseconds=1500),
            custom_tags=tags if tags is not None else {
                tlv_tag(TlvType.AGENT_NAMESPACE): "team", tlv_tag(TlvType.AGENT_NAME): "bot",
                tlv_tag(TlvType.AUTHORITY): "db.test", tlv_tag(TlvType.CONNECTION_ID): "c-9",
                tlv_tag(TlvType.ROUTE): "team/db", LISTENER_TAG: "tcp-out",
            },
        ),
        connection_properties=ConnectionProperties(**props),
    )  # fmt: skip


def test_end_entry_makes_the_record() -> None:
    record = tcp_record(entry(received_bytes=10, sent_bytes=20), "default/gw")
    assert record is not None
    assert record.name == TCP_ALLOWED and record.severity == "INFO" and not record.error
    start = int(START.timestamp()) * 1_000_000_000
    assert (record.start_ns, record.end_ns) == (start, start + 1_500_000_000)
    assert dict(record.attributes) == {
        "clrk.egress.reason": "allowed",
        "clrk.egress.gateway": "default/gw",
        "agent.name": "bot",
        "agent.namespace": "team",
        "clrk.dst.name": "db.test",
        "network.peer.address": "203.0.113.5",
        "network.peer.port": 7,
        "network.transport": "tcp",
        "clrk.egress.bytes_up": 10,
        "clrk.egress.bytes_down": 20,
        "clrk.egress.duration_ms": 1500,
        "clrk.egress.route": "team/db",
        "clrk.egress.listener": "tcp-out",
        "clrk.connection.id": "c-9",
        "client.address": "198.18.1.2",
    }


def test_connected_and_periodic_entries_make_none() -> None:
    for kind in (AccessLogType.TcpUpstreamConnected, AccessLogType.TcpPeriodic):
        assert not is_end(entry(kind))
        assert tcp_record(entry(kind), "default/gw") is None
    assert tcp_record(TcpAccessLogEntry(), "default/gw") is None


def test_a_listener_entry_makes_the_record_of_a_connection_a_proxying_chain_took() -> None:
    """A TCP listener's own log has no type; the chain it names says whether the
    connection was proxied (a record) or closed (none: the dialer's denial says it)."""
    for chain in ("route/team/db/rule/0", "default/allow-all"):
        listener_entry = entry(AccessLogType.NotSet, received_bytes=10, sent_bytes=20)
        listener_entry.common_properties.custom_tags[CHAIN_TAG] = chain
        record = tcp_record(listener_entry, "default/gw")
        assert record == tcp_record(entry(received_bytes=10, sent_bytes=20), "default/gw")
    for chain in ("deny/team/db/rule/0", "blocked_address", "default/deny-all", "-", None):
        listener_entry = entry(AccessLogType.NotSet)
        if chain is not None:
            listener_entry.common_properties.custom_tags[CHAIN_TAG] = chain
        assert not is_end(listener_entry)
        assert tcp_record(listener_entry, "default/gw") is None


def test_absent_tlvs_are_dashes() -> None:
    tags = {tlv_tag(t): "-" for t in TAGGED_TLVS}
    record = tcp_record(entry(tags=tags), "default/gw")
    assert record is not None
    attrs = record.attributes
    assert attrs["clrk.egress.reason"] == "allowed_default"
    assert attrs["agent.name"] == "" and attrs["clrk.dst.name"] == ""
    assert "clrk.egress.route" not in attrs and "clrk.connection.id" not in attrs
    assert attrs["clrk.egress.bytes_up"] == 0
