"""`egress.tcp` records from Envoy's TCP access-log entries (SPEC 8), pure.

tcp_proxy logs once when the upstream connects and once when the connection ends; only
the end entry has the final byte counts and duration, so only it makes a record.  The
PROXY TLVs arrive as custom tags (see `clrk.wire.TLV_TAGS`); Envoy writes
"-" for a TLV the connection did not carry.
"""

from __future__ import annotations

import datetime

from envoy_data_plane.envoy.config.core.v3 import Address
from envoy_data_plane.envoy.data.accesslog.v3 import AccessLogType, TcpAccessLogEntry

from clrk.records.schema import (
    AGENT_NAME,
    AGENT_NAMESPACE,
    BYTES_DOWN,
    BYTES_UP,
    CLIENT_ADDRESS,
    CONNECTION_ID,
    DST_NAME,
    DURATION_MS,
    GATEWAY,
    PEER_ADDRESS,
    PEER_PORT,
    REASON,
    ROUTE,
    TCP_ALLOWED,
    TRANSPORT,
    AttrValue,
    Record,
)

END_TYPES = frozenset({AccessLogType.TcpConnectionEnd})


def _tag(tags: dict[str, str], name: str) -> str | None:
    value = tags.get(name, "")
    return None if value in ("", "-") else value


def _socket(address: Address | None) -> tuple[str, int] | None:
    if address is None or address.socket_address is None:
        return None
    sa = address.socket_address
    return sa.address, int(sa.port_value or 0)


def _ns(moment: datetime.datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1_000_000_000)


def is_end(entry: TcpAccessLogEntry) -> bool:
    common = entry.common_properties
    return common is not None and common.access_log_type in END_TYPES


def tcp_record(entry: TcpAccessLogEntry, gateway: str) -> Record | None:
    """The `egress.tcp` record of a connection-end entry; None for any other entry."""
    if not is_end(entry):
        return None
    common = entry.common_properties
    assert common is not None
    tags = dict(common.custom_tags or {})
    props = entry.connection_properties
    up = int(props.received_bytes) if props is not None else 0
    down = int(props.sent_bytes) if props is not None else 0
    peer = _socket(common.downstream_local_address) or ("", 0)  # the original destination
    start = _ns(common.start_time)
    duration = common.duration
    end = start + int(duration.total_seconds() * 1e9) if start is not None and duration else start
    route = _tag(tags, "route")
    attrs: dict[str, AttrValue] = {
        REASON: "allowed" if route else "allowed_default",
        GATEWAY: gateway,
        AGENT_NAME: _tag(tags, "agent_name") or "",
        AGENT_NAMESPACE: _tag(tags, "agent_namespace") or "",
        DST_NAME: _tag(tags, "authority") or "",
        PEER_ADDRESS: peer[0],
        PEER_PORT: peer[1],
        TRANSPORT: "tcp",
        BYTES_UP: up,
        BYTES_DOWN: down,
        DURATION_MS: int(duration.total_seconds() * 1000) if duration else 0,
    }
    if route:
        attrs[ROUTE] = route
    connection = _tag(tags, "connection_id")
    if connection:
        attrs[CONNECTION_ID] = connection
    client = _socket(common.downstream_remote_address)
    if client:
        attrs[CLIENT_ADDRESS] = client[0]
    return Record(TCP_ALLOWED, attrs, "INFO", False, start, end)
