"""spoof_log: the NFLOG messages the kernel sends when a sandbox link drops a packet with a
source not its own, parsed into flows; one unknown_agent record per flow.  (The kernel
side, with a privileged process spoofing inside a real sandbox, is in
tests/e2e/test_anti_spoofing.py.)"""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from clrk.records.query import iter_records
from clrk_runtime.records_writer import RecordWriter
from clrk_worker_dialer.config import DialerConfig
from clrk_worker_dialer.spoof_log import (
    SeenFlows,
    SpoofedPacket,
    SpoofLog,
    acknowledgement,
    bind_messages,
    parse_datagram,
    parse_ip,
)
from clrk_worker_dialer.state import DialerState
from tests.conftest import compile_yaml
from tests.worker_dialer.dialer_policy import POLICY_YAML

# What nfnetlink_log sent for a UDP datagram 10.9.0.66:5555 -> 10.9.0.1:53 dropped by
# `-j NFLOG --nflog-group 7 --nflog-prefix sbx` (captured from a real kernel).
CAPTURED = bytes.fromhex(
    "9800000000040000000000000000000002000007080001000800000008000a007362780008000400"
    "000000021000080000060000ced9eab48437000006000f000001000006001100000e000012001000"
    "de40adb57838ced9eab484370800000014000300000000006b11ec7a0000000000037d8c22000900"
    "4500001eb6774000401170030a0900420a09000115b30035000a147068690000"
)


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def nflog_message(payload: bytes, prefix: bytes = b"clrk-r-p1-1\0", family=socket.AF_INET):
    body = struct.pack("=BBH", family, 0, socket.htons(7011))
    body += _attr(1, struct.pack("!HBB", 0x0800, 0, 0)) + _attr(10, prefix) + _attr(9, payload)
    return struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body


def ipv6_packet(src: str, dst: str, next_header: int, rest: bytes) -> bytes:
    head = struct.pack("!IHBB", 6 << 28, len(rest), next_header, 64)
    return head + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + rest


def ipv4_packet(src: str, dst: str, protocol: int, rest: bytes, fragment: int = 0) -> bytes:
    head = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(rest), 1, fragment, 64, protocol, 0)
    return head + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + rest


def test_a_message_captured_from_the_kernel_names_the_sandbox_and_the_flow():
    assert list(parse_datagram(CAPTURED)) == [
        SpoofedPacket("sbx", 17, "10.9.0.66", 5555, "10.9.0.1", 53)
    ]


def test_binding_asks_for_the_group_in_network_order_and_the_packet_headers():
    bind, mode = bind_messages(7011)
    assert struct.unpack_from("=HH", bind, 4) == (0x401, 0x5)  # config; request + ack
    assert bind[16:20] == struct.pack("=BBH", 0, 0, socket.htons(7011))
    assert bind[20:25] == struct.pack("=HHB", 5, 1, 1)  # CFG_CMD = BIND
    assert mode[20:30] == struct.pack("=HH", 10, 2) + struct.pack("!IBB", 128, 2, 0)


def test_an_acknowledgement_gives_the_errno():
    ok = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + bytes(16)
    busy = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -16) + bytes(16)
    assert acknowledgement(ok) == 0
    assert acknowledgement(busy) == 16
    assert acknowledgement(b"") is None


def test_ipv6_ports_are_found_behind_extension_headers():
    hop_by_hop = bytes([17, 0]) + bytes(6)  # next: UDP, 8 bytes
    packet = ipv6_packet(
        "fd63:6c72:6b00:2::2", "2001:db8:1::10", 0, hop_by_hop + b"\x13\x88\x00\x07"
    )
    assert parse_ip(packet) == (17, "fd63:6c72:6b00:2::2", 5000, "2001:db8:1::10", 7)


def test_later_fragments_have_no_ports():
    v4 = ipv4_packet("198.18.0.6", "192.0.2.10", 6, b"\x13\x88\x00\x07", fragment=10)
    assert parse_ip(v4) == (6, "198.18.0.6", 0, "192.0.2.10", 0)
    fragment = bytes([6, 0]) + struct.pack("!H", 8 << 3) + bytes(4)
    v6 = ipv6_packet("fd63:6c72:6b00:2::2", "2001:db8:1::10", 44, fragment + b"\x13\x88\x00\x07")
    assert parse_ip(v6) == (6, "fd63:6c72:6b00:2::2", 0, "2001:db8:1::10", 0)


def test_other_protocols_have_no_ports_and_no_transport():
    ping = ipv4_packet("198.18.0.6", "192.0.2.10", 1, b"\x08\x00\x00\x00")
    (packet,) = parse_datagram(nflog_message(ping))
    assert (packet.protocol, packet.src_port, packet.dst_port, packet.transport) == (1, 0, 0, None)


@given(st.binary(max_size=300))
def test_no_bytes_make_the_parser_raise(data):
    list(parse_datagram(data))
    list(parse_datagram(nflog_message(data)))
    parse_ip(data)


@given(st.integers(min_value=0, max_value=len(CAPTURED)))
def test_a_cut_message_yields_nothing_or_the_whole_packet(cut):
    assert list(parse_datagram(CAPTURED[:cut])) in ([], list(parse_datagram(CAPTURED)))


def test_a_flow_is_new_once_per_idle_timeout_and_memory_is_bounded():
    flows = SeenFlows(idle_timeout=60.0, max_flows=2)
    a, b, c = (SpoofedPacket("s", 17, "198.18.0.6", port, "192.0.2.10", 7) for port in (1, 2, 3))
    assert flows.is_new(a, 0.0)
    assert not flows.is_new(a, 30.0)  # a retransmission, the next datagram
    assert not flows.is_new(a, 89.0)  # still active: the timeout counts from the last one
    assert flows.is_new(a, 150.0)
    assert flows.is_new(b, 151.0) and flows.is_new(c, 152.0)  # a is forgotten first
    assert flows.is_new(a, 153.0)


def test_each_spoofed_tcp_or_udp_flow_is_one_unknown_agent_record(tmp_path):
    path = tmp_path / "records.jsonl"
    writer = RecordWriter("clrk-dialer", path=str(path))
    state = DialerState(DialerConfig(manifests=[], gateway="default/gw"), writer)
    state.apply(compile_yaml(POLICY_YAML).gateways[("default", "gw")])
    spoof_log = SpoofLog(state, 7011, idle_timeout=60.0)
    udp = SpoofedPacket("clrk-r-p1-1", 17, "198.18.0.6", 5000, "192.0.2.10", 7)
    ping = SpoofedPacket("clrk-r-p1-1", 1, "198.18.0.6", 0, "192.0.2.10", 0)
    for now in (0.0, 1.0, 2.0):
        spoof_log.handle(udp, now)
        spoof_log.handle(ping, now)
    writer.shutdown()
    logs = [r for r in iter_records(str(path)) if r["signal"] == "log"]
    assert len(logs) == 1
    attrs = logs[0]["attributes"]
    assert attrs["clrk.egress.deny_reason"] == "unknown_agent"
    assert (attrs["agent.name"], attrs["network.transport"]) == ("", "udp")
    assert (attrs["network.peer.address"], attrs["network.peer.port"]) == ("192.0.2.10", 7)
    assert attrs["client.address"] == "198.18.0.6:5000"
