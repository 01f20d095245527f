"""Normal forms of the hostname and address evidence the dialer collects (SPEC 4, step 1).

Names are lower-cased without a trailing dot; IPv4-mapped IPv6 addresses become IPv4.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from clrk.policy.addresses import normalise_name

# Evidence is lenient where policy patterns are strict: '_' occurs in real DNS names and
# can never match a pattern, so accepting it only avoids refusing odd but honest names.
_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")  # labels of 1..63
MAX_NAME_LENGTH = 253


def evidence_name(raw: str) -> str | None:
    """'API.Example.COM.' -> 'api.example.com'; None when it is not a plain hostname."""
    name = normalise_name(raw)
    if not name or len(name) > MAX_NAME_LENGTH or not name.isascii():
        return None
    return name if _NAME.fullmatch(name) else None


def is_evidence_name(name: str) -> bool:
    """Whether `name` is in evidence_name's normal form already (evidence_name(name) ==
    name), without making that form: lower-case, no final dot, labels of the pattern."""
    return len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


@functools.lru_cache(maxsize=4096)  # on every connection; addresses repeat
def normalise_ip(raw: str) -> str:
    """Canonical text of an address; '::ffff:192.0.2.1' -> '192.0.2.1'. ValueError if invalid."""
    addr = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
