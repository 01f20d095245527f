"""`egress.tcp` records from Envoy's TCP access-log entries (SPEC 8), pure.

One entry per connection, when it ends, makes its record (with the final byte counts
and duration): a TCP or TLS Passthrough listener's own log names the chain that took
the connection, and only a proxying chain's connection counts (`clrk.wire.CHAIN_TAG`);
on an L7 listener, the proxying chain's tcp_proxy logs it (type TcpConnectionEnd).  The
PROXY TLVs and the chain's listener arrive as custom tags (`clrk.wire.TAGGED_TLVS`,
`LISTENER_TAG`); Envoy writes "-" for a TLV the connection did not carry.
"""

from __future__ import annotations

import datetime

from envoy_data_plane.envoy.config.core.v3 import Address
from envoy_data_plane.envoy.data.accesslog.v3 import TcpAccessLogEntry

from clrk.policy import Agent
from clrk.records.schema import Record, tcp_allowed
from clrk.wire import LISTENER_TAG, TlvType, tlv_tag
from clrk_extproc.access_log_wire import EndFacts, counted


def tag(tags: dict[str, str], name: str) -> str | None:
    value = tags.get(name, "")
    return None if value in ("", "-") else value


def _socket(address: Address | None) -> tuple[str, int] | None:
    if address is None or address.socket_address is None:
        return None
    sa = address.socket_address
    return sa.address, int(sa.port_value or 0)


def ns(moment: datetime.datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1_000_000_000)


def is_end(entry: TcpAccessLogEntry) -> bool:
    """A connection's last entry, the one its record is written from (`counted`)."""
    common = entry.common_properties
    if common is None:
        return False
    return counted(int(common.access_log_type), dict(common.custom_tags or {}))


def end_facts(entry: TcpAccessLogEntry) -> EndFacts | None:
    """What a connection-end entry says that its record uses; None for any other entry."""
    if not is_end(entry):
        return None
    common = entry.common_properties
    assert common is not None
    props = entry.connection_properties
    return EndFacts(
        tags=dict(common.custom_tags or {}),
        received=int(props.received_bytes) if props is not None else 0,
        sent=int(props.sent_bytes) if props is not None else 0,
        local=_socket(common.downstream_local_address),
        remote=_socket(common.downstream_remote_address),
        start=common.start_time,
        duration=common.duration,
    )


def tcp_record(entry: TcpAccessLogEntry, gateway: str) -> Record | None:
    """The `egress.tcp` record of a connection-end entry; None for any other entry."""
    facts = end_facts(entry)
    return None if facts is None else end_record(facts, gateway)


def end_record(facts: EndFacts, gateway: str) -> Record:
    """The `egress.tcp` record of a connection end."""
    tags = facts.tags
    peer = facts.local or ("", 0)  # the original destination
    start = ns(facts.start)
    duration = facts.duration
    end = start + int(duration.total_seconds() * 1e9) if start is not None and duration else start
    namespace = tag(tags, tlv_tag(TlvType.AGENT_NAMESPACE)) or ""
    name = tag(tags, tlv_tag(TlvType.AGENT_NAME)) or ""
    client = facts.remote
    return tcp_allowed(
        gateway=gateway,
        agent=Agent(namespace, name) if namespace or name else None,
        route=tag(tags, tlv_tag(TlvType.ROUTE)),
        listener=tag(tags, LISTENER_TAG),
        dst_ip=peer[0],
        dst_port=peer[1],
        dst_name=tag(tags, tlv_tag(TlvType.AUTHORITY)),
        bytes_up=facts.received,
        bytes_down=facts.sent,
        start_ns=start,
        end_ns=end,
        duration_ms=int(duration.total_seconds() * 1000) if duration else 0,
        connection_id=tag(tags, tlv_tag(TlvType.CONNECTION_ID)),
        src=client[0] if client else None,
    )
