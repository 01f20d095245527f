"""Netlink framing, pure: the messages of one datagram and the attributes of one message.

rtnetlink (the gateway's own addresses) and nfnetlink_log (spoofed packets) both read
it.  The kernel writes these bytes, but nfnetlink_log carries an agent's packet inside,
so neither function trusts a length: anything malformed ends the walk, nothing raises.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id (host order)
ATTRIBUTE = struct.Struct("=HH")  # length, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


def align(n: int) -> int:
    return (n + 3) & ~3


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


def attribute(kind: int, value: bytes) -> bytes:
    length = ATTRIBUTE.size + len(value)
    return ATTRIBUTE.pack(length, kind) + value + b"\0" * (-length % 4)


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each message in one datagram; stops at a truncated one."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            return
        yield kind, data[offset + HEADER.size : offset + length]
        offset += align(length)


def attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """Type -> value of the attributes from `offset` on; the first of a repeated type
    counts; stops at a truncated one."""
    out: dict[int, bytes] = {}
    while offset + ATTRIBUTE.size <= len(data):
        length, kind = ATTRIBUTE.unpack_from(data, offset)
        if length < ATTRIBUTE.size or offset + length > len(data):
            break
        out.setdefault(kind & NLA_TYPE_MASK, data[offset + ATTRIBUTE.size : offset + length])
        offset += align(length)
    return out


def error_code(payload: bytes) -> int | None:
    """The errno of an NLMSG_ERROR payload (0: an acknowledgement); None if too short."""
    if len(payload) < 4:
        return None
    return -struct.unpack_from("=i", payload)[0]
