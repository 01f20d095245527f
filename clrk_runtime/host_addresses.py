"""What the network namespace this process runs in delivers to itself, kept current
(issue 11): every destination of its `local` routing table, IPv4 and IPv6.

That is every address on every interface, and more: an address on loopback makes its
whole prefix local (127.0.0.1/8 on `lo` answers all of 127.0.0.0/8), and `ip route add
local PREFIX` (AnyIP) makes a prefix local with no address at all.  A connection there
reaches the gateway itself (its listeners, Envoy's admin, whatever the host runs), never
an upstream, so the dialer and Envoy's guard chain block them all, and no CIDR opens
them.  Broadcast and anycast entries of that table count too.

Read over rtnetlink, not by polling `ip -j addr`: the kernel announces every added or
removed address and route on the RTMGRP_* groups the moment it happens, so a new
address is blocked within milliseconds, nothing runs a process every second, and nothing
depends on iproute2 being installed.  An announcement is only a trigger: each one (or a
lost one, ENOBUFS) makes a full dump of the table, so no incremental state can drift
from the kernel's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable

from clrk_runtime import netlink
from clrk_runtime.logs import fields

log = logging.getLogger("clrk.host_addresses")

# family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG = struct.Struct("=BBBBBBBBI")
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTA_DST, RTA_TABLE = 1, 15
RT_TABLE_LOCAL = 255
RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_ANYCAST = 1, 2, 3, 4
OWN_TYPES = frozenset((RTN_LOCAL, RTN_BROADCAST, RTN_ANYCAST))
RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
GROUPS = RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
SETTLE = 0.05  # seconds: a burst of announcements (an interface going up) makes one dump
RETRY = 1.0  # seconds between tries when the addresses cannot be read


def _network(family: int, raw: bytes, prefix: int) -> str | None:
    """'198.18.0.5' for a host, '127.0.0.0/8' for a wider prefix; None if malformed."""
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if size is None or len(raw) != size or prefix > size * 8:
        return None
    if prefix == size * 8:
        return str(ipaddress.ip_address(raw))
    return str(ipaddress.ip_network((raw, prefix), strict=False))


def parse_messages(data: bytes) -> tuple[list[str], bool]:
    """(the own destinations among the RTM_NEWROUTE messages in `data`, whether
    NLMSG_DONE was seen): routes of the local table of type local, broadcast or
    anycast.  OSError for a netlink error message."""
    out: list[str] = []
    for kind, body in netlink.messages(data):
        if kind == netlink.NLMSG_DONE:
            return out, True
        if kind == netlink.NLMSG_ERROR:
            if code := netlink.error_code(body):
                raise OSError(code, os.strerror(code))
            continue
        if kind != RTM_NEWROUTE or len(body) < _RTMSG.size:
            continue
        family, dst_len, _src, _tos, table, _proto, _scope, rtype, _fl = _RTMSG.unpack_from(body)
        attrs = netlink.attributes(body, _RTMSG.size)
        if len(attrs.get(RTA_TABLE, b"")) == 4:
            (table,) = struct.unpack("=I", attrs[RTA_TABLE])
        if table != RT_TABLE_LOCAL or rtype not in OWN_TYPES or RTA_DST not in attrs:
            continue
        network = _network(family, attrs[RTA_DST], dst_len)
        if network is not None:
            out.append(network)
    return out, False


def dump() -> tuple[str, ...]:
    """Every own destination of this network namespace, sorted, each once."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        request = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
        flags = netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP
        sock.send(netlink.message(RTM_GETROUTE, flags, 1, request))
        found: list[str] = []
        done = False
        while not done:
            networks, done = parse_messages(sock.recv(1 << 16))
            found += networks
    return tuple(sorted(set(found), key=_order))


def _order(text: str) -> tuple[int, int, int]:
    network = ipaddress.ip_network(text)
    return network.version, int(network.network_address), network.prefixlen


def _subscribe() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, GROUPS))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HostAddresses:
    """This namespace's own destinations plus `static` ones (given by the operator), as
    one sorted tuple of addresses and networks, `current`; `follow` keeps it current and
    reports every change."""

    def __init__(self, static: Iterable[str] = ()) -> None:
        self.static = tuple(static)
        self.current: tuple[str, ...] = self._read()

    def _read(self) -> tuple[str, ...]:
        return tuple(sorted({*self.static, *dump()}, key=_order))

    async def follow(self, changed: Callable[[tuple[str, ...]], Awaitable[None] | None]) -> None:
        """Until cancelled: on every change, update `current` and call `changed(current)`.
        Subscribes before reading again, so nothing added meanwhile is missed."""
        loop = asyncio.get_running_loop()
        sock = _subscribe()
        try:
            while True:
                # A failed read (EMFILE: a flood holds descriptors) must not end the
                # following for good: a stale list would leave a new address open.
                try:
                    await self._refresh(changed)
                except OSError as exc:
                    log.error("cannot read own addresses; retrying", extra=fields(error=str(exc)))
                    await asyncio.sleep(RETRY)
                    continue
                try:
                    await loop.sock_recv(sock, 1 << 16)
                except OSError as exc:  # ENOBUFS: announcements were lost; dump anyway
                    log.warning("address announcements lost", extra=fields(error=str(exc)))
                await asyncio.sleep(SETTLE)
                with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                    while sock.recv(1 << 16):  # drain the burst; the dump covers it
                        pass
        finally:
            sock.close()

    async def _refresh(self, changed) -> None:
        now = self._read()
        if now == self.current:
            return
        log.info(
            "own addresses changed",
            extra=fields(
                added=sorted(set(now) - set(self.current)),
                removed=sorted(set(self.current) - set(now)),
            ),
        )
        self.current = now
        result = changed(now)
        if result is not None:
            await result
