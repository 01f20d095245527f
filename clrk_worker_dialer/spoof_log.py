"""Packets a sandbox sent from an address that is not its own (issue 11, item 4).

The raw-table rules of every sandbox link (`redirect_rules`) drop such a packet before
connection tracking sees it, and hand a copy to NFLOG (nfnetlink_log) with the sandbox
name as prefix.  The dialer of that host namespace listens on the NFLOG group and writes
one `egress.dial.denied` record with reason `unknown_agent` per spoofed flow, so a
denial is never silent.  Dropping before conntrack also means a spoofed packet can never
join a connection of the agent whose address it claims.

Pure parts: the netlink messages that bind the group, and the parser of what the kernel
sends (attacker-controlled packet bytes inside: bounded, never raises).  The shell is a
non-blocking netlink socket on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from clrk.policy import Decision, Reason
from clrk_runtime import netlink
from clrk_runtime.logs import fields

log = logging.getLogger("clrk.dialer.spoof")

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10

COPY_RANGE = 128  # bytes of each packet: the IP header, extension headers and ports
TCP, UDP = 6, 17
_IPV6_EXTENSIONS = {0, 43, 60}  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
MAX_FLOWS = 4096
READS_PER_WAKEUP = 64


@dataclass(frozen=True, slots=True)
class SpoofedPacket:
    """One dropped packet: the sandbox whose link it came from (the NFLOG prefix) and
    what it claimed.  Ports are 0 for protocols without them and for later fragments."""

    sandbox: str
    protocol: int
    src: str
    src_port: int
    dst: str
    dst_port: int

    @property
    def transport(self) -> str | None:
        return {TCP: "tcp", UDP: "udp"}.get(self.protocol)


# --- netlink messages (pure) -----------------------------------------------------------------


def config_message(group: int, attributes: list[tuple[int, bytes]], seq: int) -> bytes:
    """An NFULNL_MSG_CONFIG request for `group`, asking for an acknowledgement."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group))
    body += b"".join(netlink.attribute(kind, value) for kind, value in attributes)
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return netlink.message(kind, netlink.NLM_F_REQUEST | netlink.NLM_F_ACK, seq, body)


def bind_messages(group: int, copy_range: int = COPY_RANGE) -> list[bytes]:
    """Bind the group to this socket, then ask for the first `copy_range` bytes of each
    packet."""
    return [
        config_message(group, [(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))], 1),
        config_message(
            group, [(NFULA_CFG_MODE, struct.pack("!IBB", copy_range, NFULNL_COPY_PACKET, 0))], 2
        ),
    ]


def acknowledgement(data: bytes) -> int | None:
    """The errno of the first NLMSG_ERROR in `data` (0: success), or None if none."""
    for kind, payload in netlink.messages(data):
        if kind == netlink.NLMSG_ERROR and (code := netlink.error_code(payload)) is not None:
            return code
    return None


def _ports(packet: bytes, offset: int) -> tuple[int, int]:
    if offset + 4 > len(packet):
        return 0, 0
    return struct.unpack_from("!HH", packet, offset)


def parse_ip(packet: bytes) -> tuple[int, str, int, str, int] | None:
    """(protocol, src, src port, dst, dst port) of an IPv4 or IPv6 packet's first bytes,
    or None when they are not one."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            return None
        protocol = packet[9]
        src = str(ipaddress.IPv4Address(packet[12:16]))
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        later_fragment = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF
        ports = (0, 0) if later_fragment or protocol not in (TCP, UDP) else _ports(packet, ihl)
        return protocol, src, ports[0], dst, ports[1]
    if version == 6 and len(packet) >= 40:
        src = str(ipaddress.IPv6Address(packet[8:24]))
        dst = str(ipaddress.IPv6Address(packet[24:40]))
        protocol, offset = packet[6], 40
        for _ in range(8):  # a bounded walk over extension headers
            if protocol in _IPV6_EXTENSIONS and offset + 2 <= len(packet):
                protocol, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
            elif protocol == _IPV6_FRAGMENT and offset + 8 <= len(packet):
                later = struct.unpack_from("!H", packet, offset + 2)[0] & 0xFFF8
                protocol, offset = packet[offset], offset + 8
                if later:
                    return protocol, src, 0, dst, 0
            else:
                break
        ports = _ports(packet, offset) if protocol in (TCP, UDP) else (0, 0)
        return protocol, src, ports[0], dst, ports[1]
    return None


def parse_datagram(data: bytes) -> Iterator[SpoofedPacket]:
    """The logged packets of one netlink datagram from nfnetlink_log."""
    packet_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
    for kind, payload in netlink.messages(data):
        if kind != packet_type or len(payload) < 4:
            continue
        attributes = netlink.attributes(payload, 4)  # after struct nfgenmsg
        ip = parse_ip(attributes.get(NFULA_PAYLOAD, b""))
        if ip is None:
            continue
        prefix = attributes.get(NFULA_PREFIX, b"").split(b"\0", 1)[0]
        yield SpoofedPacket(prefix.decode("ascii", "replace"), *ip)


# --- which packets start a flow (pure) ---------------------------------------------------------


class SeenFlows:
    """One record per spoofed flow: a flow is new unless the same (sandbox, protocol,
    addresses, ports) was seen within `idle_timeout`.  Bounded: the least recently seen
    flow is forgotten first."""

    def __init__(self, idle_timeout: float, max_flows: int = MAX_FLOWS) -> None:
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self._seen: OrderedDict[SpoofedPacket, float] = OrderedDict()

    def is_new(self, packet: SpoofedPacket, now: float) -> bool:
        last = self._seen.pop(packet, None)
        self._seen[packet] = now
        while len(self._seen) > self.max_flows:
            self._seen.popitem(last=False)
        return last is None or now - last >= self.idle_timeout


# --- the shell ---------------------------------------------------------------------------------


class SpoofLog:
    """Listens on an NFLOG group of this network namespace (needs CAP_NET_ADMIN) and
    records what it hears through the dialer's state."""

    def __init__(self, state, group: int, idle_timeout: float) -> None:
        self.state = state
        self.group = group
        self.flows = SeenFlows(idle_timeout)
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Bind the group; OSError naming it when that fails (another listener has it:
        EBUSY; no privilege: EPERM)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, 0))
            sock.settimeout(2.0)
            for message in bind_messages(self.group):
                sock.send(message)
                code = acknowledgement(sock.recv(65536))
                if code:
                    raise OSError(code, f"NFLOG group {self.group}: {os.strerror(code)}")
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        log.info("listening for spoofed packets", extra=fields(nflog_group=self.group))

    def close(self) -> None:
        if self.sock is None:
            return
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None

    def _readable(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel dropped log messages (a flood); the packets were dropped too.
                    log.warning("spoofed packets came faster than they could be recorded")
                    continue
                log.error("NFLOG socket failed", extra=fields(error=str(exc)))
                return
            for packet in parse_datagram(data):
                self.handle(packet, time.monotonic())

    def handle(self, packet: SpoofedPacket, now: float) -> None:
        if not self.flows.is_new(packet, now):
            return
        log.warning(
            "packet from a sandbox with an address not its own: dropped",
            extra=fields(
                sandbox=packet.sandbox,
                protocol=packet.protocol,
                src=f"{packet.src}:{packet.src_port}",
                dst=f"{packet.dst}:{packet.dst_port}",
            ),
        )
        policy = self.state.policy
        if packet.transport is None or policy is None:
            return  # no egress without TCP or UDP: the log line above is the record
        decision = Decision(Reason.UNKNOWN_AGENT, policy.ref, None, policy.default_policy)
        self.state.record_dial_denied(
            decision,
            agent=None,
            dst=(packet.dst, packet.dst_port),
            transport=packet.transport,
            dst_name="",
            src=(packet.src, packet.src_port),
        )
