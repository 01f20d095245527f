"""Destination addresses as (version, int): parsing, normalisation, always-blocked ranges.

Integers keep decide() fast and make range tests plain shifts.  IPv4-mapped IPv6
becomes IPv4 (SPEC 4 step 1).  An address is always blocked when it is loopback,
unspecified, link-local, multicast, broadcast or one of the gateway's own, or an IPv6
form that embeds such an IPv4 address (NAT64, 6to4, Teredo).
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class OwnAddresses:
    """The gateway host's own addresses, always blocked (SPEC 4 step 2).

    A runtime input of decide(), next to the compiled policy and never part of it: only
    the host the dialer runs on knows them.
    """

    v4: frozenset[int] = frozenset()
    v6: frozenset[int] = frozenset()

    @classmethod
    def of(cls, addresses: Iterable[str]) -> OwnAddresses:
        """ValueError names an address that does not parse."""
        parsed = [parse_ip(a) for a in addresses]
        return cls(
            frozenset(v for version, v in parsed if version == 4),
            frozenset(v for version, v in parsed if version == 6),
        )

    def including(self, address: str) -> OwnAddresses:
        """These and `address` (ValueError if it does not parse)."""
        version, value = parse_ip(address)
        if version == 4:
            return OwnAddresses(self.v4 | {value}, self.v6)
        return OwnAddresses(self.v4, self.v6 | {value})


NO_OWN_ADDRESSES = OwnAddresses()


def normalise_name(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _v4_hits(value: int, own: frozenset[int]) -> list[tuple[int, int]]:
    hits = [(net, plen) for net, plen in _V4_BLOCKED if value >> (32 - plen) == net >> (32 - plen)]
    if value in own:
        hits.append((value, 32))
    return hits


def blocked_ranges(
    version: int, value: int, own4: frozenset[int] = frozenset(), own6: frozenset[int] = frozenset()
) -> tuple[Range, ...]:
    """The always-blocked ranges that contain the address; empty when it is not blocked.

    An explicit destinationCIDRs entry opens a blocked address only if it lies inside
    one of these ranges, so 0.0.0.0/0 never opens loopback or the metadata service.
    """
    if version == 4:
        if (
            value >> 24 not in (0, 127)
            and value >> 16 != 0xA9FE
            and value >> 28 != 0xE
            and value != _M32
            and value not in own4
        ):
            return ()
        return tuple((4, net, plen) for net, plen in _v4_hits(value, own4))
    out: list[Range] = [
        (6, net, plen) for net, plen in _V6_BLOCKED if value >> (128 - plen) == net >> (128 - plen)
    ]
    if value in own6:
        out.append((6, value, 128))
    if value >> 32 == _NAT64 >> 32:
        out += [(6, _NAT64 | net, 96 + plen) for net, plen in _v4_hits(value & _M32, own4)]
    if value >> 112 == _SIX_TO_FOUR:
        embedded = (value >> 80) & _M32
        out += [
            (6, (_SIX_TO_FOUR << 112) | (net << 80), 16 + plen)
            for net, plen in _v4_hits(embedded, own4)
        ]
    if value >> 96 == _TEREDO:
        server = (value >> 64) & _M32
        out += [
            (6, (_TEREDO << 96) | (net << 64), 32 + plen) for net, plen in _v4_hits(server, own4)
        ]
        # The client address is stored inverted in the low 32 bits; no CIDR narrower
        # than the Teredo prefix can describe "all servers, this client".
        if _v4_hits(~value & _M32, own4):
            out.append((6, _TEREDO << 96, 32))
    return tuple(out)


def within(version: int, net: int, plen: int, ranges: tuple[Range, ...]) -> bool:
    """Whether the network (version, net, plen) lies inside one of `ranges`."""
    bits = 32 if version == 4 else 128
    return any(
        v == version and plen >= rp and net >> (bits - rp) == rn >> (bits - rp)
        for v, rn, rp in ranges
    )
