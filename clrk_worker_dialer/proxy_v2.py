"""PROXY protocol v2 codec (SPEC 6): the header the dialer puts in front of an allowed
connection so Envoy learns the agent, the original destination and the policy verdict.

Pure functions over bytes. Encoding is what the dialer sends; decoding serves the tests
and anything that has to read the dialer's output (the LOCAL command and UDP families
are decoded so that a health check or a relayed datagram header is understood too).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from clrk.wire import TlvType

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_LENGTH = 16  # signature, version/command, family/transport, 2-byte length
MAX_HEADER_LENGTH = FIXED_LENGTH + 0xFFFF
_VERSION = 0x2
_ADDRESS_LENGTH = {1: 12, 2: 36}  # family -> bytes of src addr, dst addr, src port, dst port
_UNSPEC = 0x00  # family and transport byte of a LOCAL header that carries no addresses


class ProxyHeaderError(ValueError):
    """A header that cannot be encoded, or bytes that are not a valid v2 header."""


class Command(IntEnum):
    LOCAL = 0x0
    PROXY = 0x1


class Transport(IntEnum):
    STREAM = 0x1  # TCP
    DGRAM = 0x2  # UDP


Tlv = tuple[int, bytes]


@dataclass(frozen=True)
class ProxyHeader:
    """One v2 header. Addresses are None only for a LOCAL header without addresses.

    An empty TLV value means "absent" (SPEC 6), so empty values are dropped here and
    decode(encode(h)) == h holds for every header that encodes.
    """

    source_ip: str | None
    source_port: int
    destination_ip: str | None
    destination_port: int
    tlvs: tuple[Tlv, ...] = ()
    command: Command = Command.PROXY
    transport: Transport = Transport.STREAM

    def __post_init__(self) -> None:
        object.__setattr__(self, "tlvs", tuple((t, bytes(v)) for t, v in self.tlvs if v))

    def tlv(self, tlv_type: int) -> bytes | None:
        """The first value of that type, or None."""
        return next((value for t, value in self.tlvs if t == tlv_type), None)

    def _text(self, tlv_type: TlvType) -> str | None:
        value = self.tlv(tlv_type)
        return None if value is None else value.decode("utf-8", "surrogateescape")

    @property
    def authority(self) -> str | None:
        return self._text(TlvType.AUTHORITY)

    @property
    def agent_namespace(self) -> str | None:
        return self._text(TlvType.AGENT_NAMESPACE)

    @property
    def agent_name(self) -> str | None:
        return self._text(TlvType.AGENT_NAME)

    @property
    def route(self) -> str | None:
        return self._text(TlvType.ROUTE)

    @property
    def deny_policy(self) -> str | None:
        return self._text(TlvType.DENY_POLICY)

    @property
    def connection_id(self) -> str | None:
        return self._text(TlvType.CONNECTION_ID)


def clrk_tlvs(
    *,
    authority: str | None = None,
    agent_namespace: str | None = None,
    agent_name: str | None = None,
    route: str | None = None,
    deny_policy: str | None = None,
    connection_id: str | None = None,
) -> tuple[Tlv, ...]:
    """The clrk TLVs in a fixed order, omitting absent and empty values."""
    values = (
        (TlvType.AUTHORITY, authority),
        (TlvType.AGENT_NAMESPACE, agent_namespace),
        (TlvType.AGENT_NAME, agent_name),
        (TlvType.ROUTE, route),
        (TlvType.DENY_POLICY, deny_policy),
        (TlvType.CONNECTION_ID, connection_id),
    )
    return tuple((int(t), v.encode("utf-8", "surrogateescape")) for t, v in values if v)


# --- encoding -------------------------------------------------------------------------

# Each clrk TLV must say one thing: a second AUTHORITY that one reader takes and another
# ignores would split the verdict between the dialer and Envoy.
_SINGLE_VALUED = frozenset(int(t) for t in TlvType)


def _check_single_valued(tlvs: list[Tlv] | tuple[Tlv, ...], tlv_type: int) -> None:
    if tlv_type in _SINGLE_VALUED and any(t == tlv_type for t, _ in tlvs):
        raise ProxyHeaderError(f"TLV 0x{tlv_type:02x} appears twice")


def _parse_ip(text: str, role: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return _ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"{role} address {text!r} is not an IP address") from None


# The dialer encodes a header per allowed connection, from a few agents to a few
# destinations: parsing their addresses again each time was a third of the encoding.
# (A refused text raises, and is not kept.)
_ip_address = functools.lru_cache(maxsize=1024)(ipaddress.ip_address)


def _address_block(header: ProxyHeader) -> tuple[int, bytes]:
    """(family/transport byte, address bytes)."""
    if header.source_ip is None and header.destination_ip is None:
        if header.command != Command.LOCAL:
            raise ProxyHeaderError("a PROXY header needs source and destination addresses")
        return _UNSPEC, b""
    if header.source_ip is None or header.destination_ip is None:
        raise ProxyHeaderError("give both addresses or neither")
    family, addresses = _addresses(
        header.source_ip, header.source_port, header.destination_ip, header.destination_port
    )
    return (family << 4) | header.transport, addresses


def _addresses(src_ip: str, src_port: int, dst_ip: str, dst_port: int) -> tuple[int, bytes]:
    """(family, address bytes) of both ends."""
    src = _parse_ip(src_ip, "source")
    dst = _parse_ip(dst_ip, "destination")
    if src.version != dst.version:
        raise ProxyHeaderError(f"mixed address families: {src} and {dst}")
    for role, port in (("source", src_port), ("destination", dst_port)):
        if not 0 <= port <= 0xFFFF:
            raise ProxyHeaderError(f"{role} port {port} is out of range 0..65535")
    ports = src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big")
    return 1 if src.version == 4 else 2, src.packed + dst.packed + ports


def _tlv_block(tlvs: tuple[Tlv, ...]) -> bytes:
    out = bytearray()
    for i, (tlv_type, value) in enumerate(tlvs):
        _check_single_valued(tlvs[:i], tlv_type)
        if not 0 <= tlv_type <= 0xFF:
            raise ProxyHeaderError(f"TLV type {tlv_type} does not fit in a byte")
        if len(value) > 0xFFFF:
            raise ProxyHeaderError(f"TLV 0x{tlv_type:02x} value is {len(value)} bytes; max 65535")
        out += bytes((tlv_type,)) + len(value).to_bytes(2, "big") + value
    return bytes(out)


_COMMANDS, _TRANSPORTS = frozenset(Command), frozenset(Transport)


def encode(header: ProxyHeader) -> bytes:
    """The wire form of header; ProxyHeaderError if it cannot be represented."""
    if header.command not in _COMMANDS or header.transport not in _TRANSPORTS:
        raise ProxyHeaderError(f"unknown command {header.command} or transport {header.transport}")
    family_transport, addresses = _address_block(header)
    return _framed(header.command, family_transport, addresses + _tlv_block(header.tlvs))


def _framed(command: int, family_transport: int, body: bytes) -> bytes:
    """The signature, version and command, family and transport, length, then `body`."""
    if len(body) > 0xFFFF:
        raise ProxyHeaderError(f"header body is {len(body)} bytes; the length field allows 65535")
    return (
        SIGNATURE
        + bytes(((_VERSION << 4) | command, family_transport))
        + len(body).to_bytes(2, "big")
        + body
    )


def encode_clrk(
    source_ip: str,
    source_port: int,
    destination_ip: str,
    destination_port: int,
    *,
    authority: str | None = None,
    agent_namespace: str | None = None,
    agent_name: str | None = None,
    route: str | None = None,
    deny_policy: str | None = None,
    connection_id: str | None = None,
) -> bytes:
    """`encode` of a TCP PROXY header with `clrk_tlvs`, byte for byte, for the dialer's
    every allowed connection: the TLVs before the connection id are the same for all of
    an agent's connections on a route, so they are built (and checked) once."""
    family, addresses = _addresses(source_ip, source_port, destination_ip, destination_port)
    body = addresses + _clrk_tlv_block(authority, agent_namespace, agent_name, route, deny_policy)
    if connection_id:
        body += _tlv_block(clrk_tlvs(connection_id=connection_id))
    return _framed(Command.PROXY, (family << 4) | Transport.STREAM, body)


@functools.lru_cache(maxsize=1024)
def _clrk_tlv_block(
    authority: str | None,
    agent_namespace: str | None,
    agent_name: str | None,
    route: str | None,
    deny_policy: str | None,
) -> bytes:
    """The clrk TLVs but the connection id (the last of them), encoded.  (A value that
    cannot be encoded raises, and is not kept.)"""
    return _tlv_block(
        clrk_tlvs(
            authority=authority,
            agent_namespace=agent_namespace,
            agent_name=agent_name,
            route=route,
            deny_policy=deny_policy,
        )
    )


# --- decoding -------------------------------------------------------------------------


def _check_fixed_part(data: bytes) -> None:
    """Reject as early as the available bytes allow, so garbage is never waited on."""
    prefix = data[: len(SIGNATURE)]
    if prefix != SIGNATURE[: len(prefix)]:
        raise ProxyHeaderError("not a PROXY protocol v2 signature")
    if len(data) <= 12:
        return
    version, command = data[12] >> 4, data[12] & 0xF
    if version != _VERSION:
        raise ProxyHeaderError(f"version {version} is not 2")
    if command not in (Command.LOCAL, Command.PROXY):
        raise ProxyHeaderError(f"unknown command 0x{command:x}")
    if len(data) <= 13:
        return
    family, transport = data[13] >> 4, data[13] & 0xF
    if data[13] == _UNSPEC and command == Command.LOCAL:
        return
    if family not in _ADDRESS_LENGTH or transport not in (Transport.STREAM, Transport.DGRAM):
        raise ProxyHeaderError(f"unsupported family/transport 0x{data[13]:02x}")


def _decode_tlvs(area: bytes) -> tuple[Tlv, ...]:
    tlvs: list[Tlv] = []
    pos = 0
    while pos < len(area):
        if pos + 3 > len(area):
            raise ProxyHeaderError("truncated TLV header")
        tlv_type, length = area[pos], int.from_bytes(area[pos + 1 : pos + 3], "big")
        end = pos + 3 + length
        if end > len(area):
            raise ProxyHeaderError(f"TLV 0x{tlv_type:02x} runs past the end of the header")
        _check_single_valued(tlvs, tlv_type)
        tlvs.append((tlv_type, area[pos + 3 : end]))
        pos = end
    return tuple(tlvs)


def decode(data: bytes) -> tuple[ProxyHeader, int] | None:
    """(header, bytes consumed) from the start of data, or None while more bytes are needed.

    Raises ProxyHeaderError as soon as the bytes cannot begin a valid header. Never needs
    more than MAX_HEADER_LENGTH bytes.
    """
    data = bytes(data[:MAX_HEADER_LENGTH])
    _check_fixed_part(data)
    if len(data) < FIXED_LENGTH:
        return None
    command, family, transport = Command(data[12] & 0xF), data[13] >> 4, data[13] & 0xF
    length = int.from_bytes(data[14:16], "big")
    address_length = _ADDRESS_LENGTH.get(family, 0)
    if length < address_length:
        raise ProxyHeaderError(f"length {length} is too short for the addresses")
    total = FIXED_LENGTH + length
    if len(data) < total:
        return None
    body = data[FIXED_LENGTH:total]
    tlvs = _decode_tlvs(body[address_length:])
    if family == 0:
        header = ProxyHeader(None, 0, None, 0, tlvs, command, Transport.STREAM)
        return header, total
    size = 4 if family == 1 else 16
    src = ipaddress.ip_address(body[:size])
    dst = ipaddress.ip_address(body[size : 2 * size])
    ports = body[2 * size : address_length]
    header = ProxyHeader(
        str(src),
        int.from_bytes(ports[:2], "big"),
        str(dst),
        int.from_bytes(ports[2:], "big"),
        tlvs,
        command,
        Transport(transport),
    )
    return header, total
