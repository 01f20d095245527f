"""The addresses of the network namespace this process runs in, kept current (issue 11).

Every address on every interface, IPv4 and IPv6, is one of the gateway's own: a
connection there reaches the gateway itself (its listeners, Envoy's admin, whatever the
host runs), never an upstream, so the dialer and Envoy's guard chain block them all.

Read over rtnetlink, not by polling `ip -j addr`: the kernel announces every added or
removed address on the RTMGRP_*_IFADDR groups the moment it happens, so a new address is
blocked within milliseconds, nothing runs a process every second, and nothing depends on
iproute2 being installed.  An announcement is only a trigger: each one (or a lost one,
ENOBUFS) makes a full dump, so no incremental state can drift from the kernel's.
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

from clrk_runtime.logs import fields

log = logging.getLogger("clrk.host_addresses")

_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x10, 0x100
SETTLE = 0.05  # seconds: a burst of announcements (an interface going up) makes one dump


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_messages(data: bytes) -> tuple[list[str], bool]:
    """(addresses of the RTM_NEWADDR messages in `data`, whether NLMSG_DONE was seen).

    IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
    point-to-point link, so it counts only when there is no IFA_LOCAL (IPv6 sends only
    IFA_ADDRESS).  OSError for a netlink error message."""
    out: list[str] = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            break  # truncated: the kernel never sends that; stop rather than misread
        body = data[offset + _NLMSG.size : offset + length]
        offset += _align(length)
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", body)
            if code:
                raise OSError(-code, os.strerror(-code))
            continue
        if kind != RTM_NEWADDR or len(body) < _IFADDRMSG.size:
            continue
        family = body[0]
        attrs: dict[int, bytes] = {}
        at = _IFADDRMSG.size
        while at + _RTATTR.size <= len(body):
            alen, atype = _RTATTR.unpack_from(body, at)
            if alen < _RTATTR.size:
                break
            attrs[atype] = body[at + _RTATTR.size : at + alen]
            at += _align(alen)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if family == socket.AF_INET and raw is not None and len(raw) == 4:
            out.append(str(ipaddress.IPv4Address(raw)))
        elif family == socket.AF_INET6 and raw is not None and len(raw) == 16:
            out.append(str(ipaddress.IPv6Address(raw)))
    return out, False


def dump() -> tuple[str, ...]:
    """Every address of this network namespace, sorted, each once."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        header = _NLMSG.pack(
            _NLMSG.size + _IFADDRMSG.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        sock.send(header + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        found: list[str] = []
        done = False
        while not done:
            addresses, done = parse_messages(sock.recv(1 << 16))
            found += addresses
    return tuple(sorted(set(found), key=_order))


def _order(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    return address.version, int(address)


def _subscribe() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HostAddresses:
    """This namespace's addresses plus `static` ones (given by the operator), as one
    sorted tuple, `current`; `follow` keeps it current and reports every change."""

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
            await self._refresh(changed)
            while True:
                try:
                    await loop.sock_recv(sock, 1 << 16)
                except OSError as exc:  # ENOBUFS: announcements were lost; dump anyway
                    log.warning("address announcements lost", extra=fields(error=str(exc)))
                await asyncio.sleep(SETTLE)
                with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                    while sock.recv(1 << 16):  # drain the burst; the dump covers it
                        pass
                await self._refresh(changed)
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
