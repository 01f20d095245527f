"""Always-blocked destinations (SPEC 4 step 2) as CIDRs, for Envoy's re-check.

`clrk.policy.addresses.blocked_ranges` answers for one address; Envoy needs the whole
set as networks.  IPv6 forms that embed a blocked IPv4 address are listed per prefix
(mapped, NAT64, 6to4, a Teredo server).  Teredo also hides the client address inverted
in the low bits, which no CIDR can describe, so all of 2001::/32 is blocked here, and
no CIDR opens that blanket range: stricter than the dialer, never looser.  The
gateway's own addresses are a guard of their own (`own_networks`), which no CIDR opens.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32")
)
_V6 = tuple(ipaddress.IPv6Network(n) for n in ("::/128", "::1/128", "fe80::/10", "ff00::/8"))
# (prefix, bit offset of the embedded IPv4 address from the top)
_EMBEDDING = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), 96),  # IPv4-mapped
    (ipaddress.IPv6Network("64:ff9b::/96"), 96),  # NAT64
    (ipaddress.IPv6Network("2002::/16"), 16),  # 6to4
    (ipaddress.IPv6Network("2001::/32"), 32),  # Teredo server
)
_TEREDO = ipaddress.IPv6Network("2001::/32")


def _embedded(v4: Iterable[ipaddress.IPv4Network]) -> list[ipaddress.IPv6Network]:
    out = []
    for prefix, offset in _EMBEDDING:
        for net in v4:
            value = int(prefix.network_address) | (int(net.network_address) << (96 - offset))
            out.append(ipaddress.IPv6Network((value, offset + net.prefixlen)))
    return out


def always_blocked_networks() -> tuple[Network, ...]:
    """Every always-blocked network (SPEC 4 step 2) but the gateway's own."""
    v4 = list(_V4)
    return tuple(dict.fromkeys([*v4, *_V6, *_embedded(v4), _TEREDO]))


def own_networks(own: Iterable[str]) -> tuple[Network, ...]:
    """The gateway's own addresses and ranges ('192.0.2.7', '127.0.0.0/8'), with the
    IPv6 forms that embed the IPv4 ones: the guard no CIDR opens.  A Teredo client
    cannot be described by a CIDR, so with any IPv4 entry all of 2001::/32 is closed
    here too (stricter than decide(), never looser)."""
    nets = [ipaddress.ip_network(a, strict=False) for a in own]
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    return tuple(dict.fromkeys([*v4, *v6, *_embedded(v4), *([_TEREDO] if v4 else [])]))


def split_by_blocked(
    networks: Sequence[Network], blocked: Sequence[Network]
) -> tuple[list[Network], list[Network]]:
    """(ordinary, inside): CIDRs that lie inside a blocked network open it explicitly
    (SPEC 4); any other CIDR never opens a blocked address, even 0.0.0.0/0.  The blanket
    Teredo range opens for no CIDR: decide() opens a Teredo address for 2001::/32 only
    when its client is blocked, which Envoy cannot tell."""
    ordinary, inside = [], []
    if not networks:  # most routes name hosts only: spare the comparisons below
        return ordinary, inside
    openable = [b for b in blocked if b != _TEREDO]
    for net in networks:
        within = any(net.version == b.version and net.subnet_of(b) for b in openable)
        (inside if within else ordinary).append(net)
    return ordinary, inside
