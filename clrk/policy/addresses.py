"""Destination addresses as (version, int): parsing, normalisation, always-blocked ranges.

Integers keep decide() fast and make range tests plain shifts.  IPv4-mapped IPv6
becomes IPv4 (SPEC 4 step 1).  An address is always blocked when it is loopback,
unspecified, link-local, multicast, broadcast or one of the gateway's own, or an IPv6
form that embeds such an IPv4 address (NAT64, 6to4, Teredo).  An explicit CIDR inside
one of these ranges opens it, except the gateway's own (`OwnAddresses`): nothing does.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

Range = tuple[int, int, int]  # (version, network as int, prefix length)

_V4_BLOCKED: tuple[tuple[int, int], ...] = (
    (0x00000000, 8),  # "this network", incl. 0.0.0.0
    (0x7F000000, 8),  # loopback
    (0xA9FE0000, 16),  # link-local, cloud metadata 169.254.169.254
    (0xE0000000, 4),  # multicast
    (0xFFFFFFFF, 32),  # limited broadcast
)
_V6_BLOCKED: tuple[tuple[int, int], ...] = (
    (0, 128),  # unspecified ::
    (1, 128),  # loopback ::1
    (0xFE80 << 112, 10),  # link-local
    (0xFF00 << 112, 8),  # multicast
)
_MAPPED_PREFIX = 0xFFFF << 32
_NAT64 = 0x0064FF9B << 96  # 64:ff9b::/96
_SIX_TO_FOUR = 0x2002  # 2002::/16
_TEREDO = 0x20010000  # 2001:0::/32
_M32 = 0xFFFFFFFF


def parse_ip(text: str) -> tuple[int, int]:
    """'10.0.0.1' -> (4, int); '::ffff:10.0.0.1' -> (4, int); '2001:db8::1' -> (6, int)."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        pass
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    if value >> 32 == _MAPPED_PREFIX >> 32:
        return 4, value & _M32
    return 6, value


def _parse_network(text: str) -> tuple[int, int, int]:
    """'192.0.2.7' -> (4, int, 32); '127.0.0.0/8' -> (4, int, 8), host bits cleared;
    an IPv4-mapped IPv6 network becomes IPv4, as addresses do."""
    if "/" not in text:
        version, value = parse_ip(text)
        return version, value, 32 if version == 4 else 128
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address or network") from None
    value = int(net.network_address)
    if net.version == 6 and net.prefixlen >= 96 and value >> 32 == _MAPPED_PREFIX >> 32:
        return 4, value & _M32, net.prefixlen - 96
    return net.version, value, net.prefixlen


@dataclass(frozen=True, slots=True)
class OwnAddresses:
    """What the gateway's namespace delivers to itself: its addresses and local ranges
    (loopback's 127.0.0.0/8 under `clrk up`).  Always blocked (SPEC 4 step 2), and
    unlike the other always-blocked ranges no CIDR opens them: a connection there
    reaches the gateway itself, never an upstream.

    A runtime input of decide(), next to the compiled policy and never part of it: only
    the host the dialer runs on knows them.  Hosts are sets (the common case, one
    lookup); wider ranges are (network, prefix length) pairs.
    """

    v4: frozenset[int] = frozenset()
    v6: frozenset[int] = frozenset()
    v4_nets: tuple[tuple[int, int], ...] = ()
    v6_nets: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str]) -> OwnAddresses:
        """Addresses and networks ('192.0.2.7', '127.0.0.0/8'); ValueError names one
        that does not parse."""
        hosts: dict[int, set[int]] = {4: set(), 6: set()}
        nets: dict[int, set[tuple[int, int]]] = {4: set(), 6: set()}
        for entry in entries:
            version, value, plen = _parse_network(entry)
            if plen == (32 if version == 4 else 128):
                hosts[version].add(value)
            else:
                nets[version].add((value, plen))
        return cls(
            frozenset(hosts[4]),
            frozenset(hosts[6]),
            tuple(sorted(nets[4], key=lambda n: n[1])),
            tuple(sorted(nets[6], key=lambda n: n[1])),
        )

    def including(self, address: str) -> OwnAddresses:
        """These and `address` (ValueError if it does not parse)."""
        version, value = parse_ip(address)
        if version == 4:
            return OwnAddresses(self.v4 | {value}, self.v6, self.v4_nets, self.v6_nets)
        return OwnAddresses(self.v4, self.v6 | {value}, self.v4_nets, self.v6_nets)

    def _holds4(self, value: int) -> bool:
        return value in self.v4 or any(
            plen == 0 or value >> (32 - plen) == net >> (32 - plen) for net, plen in self.v4_nets
        )

    def holds(self, version: int, value: int) -> bool:
        """Whether the (normalised) address is one of these, also as an IPv6 form that
        embeds one of the IPv4 ones (NAT64, 6to4, a Teredo server or client)."""
        if version == 4:
            return self._holds4(value)
        if value in self.v6 or any(
            plen == 0 or value >> (128 - plen) == net >> (128 - plen) for net, plen in self.v6_nets
        ):
            return True
        if not (self.v4 or self.v4_nets):
            return False
        if value >> 32 == _NAT64 >> 32:
            return self._holds4(value & _M32)
        if value >> 112 == _SIX_TO_FOUR:
            return self._holds4((value >> 80) & _M32)
        if value >> 96 == _TEREDO:
            return self._holds4((value >> 64) & _M32) or self._holds4(~value & _M32)
        return False

    def networks(self) -> tuple[str, ...]:
        """Every entry as text, hosts without a prefix length: for Envoy's guard."""
        out = [str(ipaddress.IPv4Address(v)) for v in sorted(self.v4)]
        out += [f"{ipaddress.IPv4Address(n)}/{p}" for n, p in self.v4_nets]
        out += [str(ipaddress.IPv6Address(v)) for v in sorted(self.v6)]
        out += [f"{ipaddress.IPv6Address(n)}/{p}" for n, p in self.v6_nets]
        return tuple(out)


NO_OWN_ADDRESSES = OwnAddresses()


def normalise_name(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _v4_hits(value: int) -> list[tuple[int, int]]:
    return [(net, plen) for net, plen in _V4_BLOCKED if value >> (32 - plen) == net >> (32 - plen)]


def blocked_ranges(version: int, value: int) -> tuple[Range, ...]:
    """The always-blocked ranges that contain the address; empty when it is not blocked.
    (The gateway's own addresses are `OwnAddresses.holds`: no CIDR opens those.)

    An explicit destinationCIDRs entry opens a blocked address only if it lies inside
    one of these ranges, so 0.0.0.0/0 never opens loopback or the metadata service.
    """
    if version == 4:
        if (
            value >> 24 not in (0, 127)
            and value >> 16 != 0xA9FE
            and value >> 28 != 0xE
            and value != _M32
        ):
            return ()
        return tuple((4, net, plen) for net, plen in _v4_hits(value))
    out: list[Range] = [
        (6, net, plen) for net, plen in _V6_BLOCKED if value >> (128 - plen) == net >> (128 - plen)
    ]
    if value >> 32 == _NAT64 >> 32:
        out += [(6, _NAT64 | net, 96 + plen) for net, plen in _v4_hits(value & _M32)]
    if value >> 112 == _SIX_TO_FOUR:
        embedded = (value >> 80) & _M32
        out += [
            (6, (_SIX_TO_FOUR << 112) | (net << 80), 16 + plen) for net, plen in _v4_hits(embedded)
        ]
    if value >> 96 == _TEREDO:
        server = (value >> 64) & _M32
        out += [(6, (_TEREDO << 96) | (net << 64), 32 + plen) for net, plen in _v4_hits(server)]
        # The client address is stored inverted in the low 32 bits; no CIDR narrower
        # than the Teredo prefix can describe "all servers, this client".
        if _v4_hits(~value & _M32):
            out.append((6, _TEREDO << 96, 32))
    return tuple(out)


def within(version: int, net: int, plen: int, ranges: tuple[Range, ...]) -> bool:
    """Whether the network (version, net, plen) lies inside one of `ranges`."""
    bits = 32 if version == 4 else 128
    return any(
        v == version and plen >= rp and net >> (bits - rp) == rn >> (bits - rp)
        for v, rn, rp in ranges
    )
