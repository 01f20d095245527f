"""SNI from a TLS ClientHello (SPEC 5.5), read incrementally and bounded.

parse_client_hello() is a pure function of the bytes the agent has sent so far; the shell
calls it after each read until the outcome is no longer NEED_MORE, then forwards those
bytes unchanged. It never raises: whatever the agent sends is an outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from clrk_worker_dialer._normalise import evidence_name

MAX_CLIENT_HELLO_BYTES = 16 * 1024  # what the dialer is willing to buffer before deciding
_RECORD_HEADER = 5
_MAX_RECORD_LENGTH = 1 << 14  # RFC 8446 5.1: a plaintext fragment is at most 2^14 bytes
_HANDSHAKE_RECORD = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_HOST_NAME = 0x00


class SniOutcome(Enum):
    NEED_MORE = "need_more"  # a valid prefix of a ClientHello; read more
    FOUND = "found"  # a ClientHello with a host_name server_name
    NO_SNI = "no_sni"  # a complete, well-formed ClientHello without one
    NOT_TLS = "not_tls"  # not a well-formed TLS ClientHello
    TOO_LARGE = "too_large"  # still incomplete at MAX_CLIENT_HELLO_BYTES


@dataclass(frozen=True)
class SniResult:
    outcome: SniOutcome
    sni: str | None = None  # lower-cased, no trailing dot; set only when FOUND


NEED_MORE = SniResult(SniOutcome.NEED_MORE)
NO_SNI = SniResult(SniOutcome.NO_SNI)
NOT_TLS = SniResult(SniOutcome.NOT_TLS)
TOO_LARGE = SniResult(SniOutcome.TOO_LARGE)


class _Malformed(Exception):
    pass


class _Reader:
    """Bounds-checked big-endian reads; running off the end means a malformed message."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Malformed
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        return _Reader(self.take(self.uint(length_size)))

    def done(self) -> bool:
        return self.pos == len(self.data)


def _record_header_ok(header: bytes) -> bool:
    """Whether the (possibly partial) record header can start a handshake record."""
    if header[:1] and header[0] != _HANDSHAKE_RECORD:
        return False
    # legacy_record_version is 3.x (SSL 3.0 .. TLS 1.3); SSLv2-style hellos are not TLS.
    return not (header[1:2] and header[1] != 3) and not (header[2:3] and header[2] > 4)


def _handshake_bytes(data: bytes) -> bytes | SniResult:
    """The handshake stream carried by the leading records, up to the end of the
    ClientHello (or as far as data goes), or an early outcome."""
    handshake = bytearray()
    pos = 0
    while True:
        header = data[pos : pos + _RECORD_HEADER]
        if not _record_header_ok(header):
            return NOT_TLS
        if len(header) < _RECORD_HEADER:
            return bytes(handshake)
        length = int.from_bytes(header[3:5], "big")
        # RFC 8446 5.1: no zero-length handshake fragments.
        if length == 0 or length > _MAX_RECORD_LENGTH:
            return NOT_TLS
        fragment = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        if not fragment:
            return bytes(handshake)
        handshake += fragment
        pos += _RECORD_HEADER + len(fragment)
        if handshake[0] != _CLIENT_HELLO:
            return NOT_TLS
        if len(handshake) >= 4:
            needed = 4 + int.from_bytes(handshake[1:4], "big")
            if _RECORD_HEADER + needed > MAX_CLIENT_HELLO_BYTES:
                return TOO_LARGE  # cannot fit even in a single record: do not wait for it
            if len(handshake) >= needed:
                return bytes(handshake[:needed])
        if len(fragment) < length:
            return bytes(handshake)


def _server_name(extension: _Reader) -> str | None:
    """RFC 6066 3: the host_name entry of a ServerNameList."""
    names = extension.vector(2)
    if not extension.done() or names.done():
        raise _Malformed
    host_name = None
    while not names.done():
        name_type, name = names.uint(1), names.vector(2).data
        if name_type == _HOST_NAME:
            if host_name is not None:
                raise _Malformed  # two host_names: which one would the server use?
            host_name = evidence_name(name.decode("ascii", "replace"))
            if host_name is None:
                raise _Malformed
    return host_name


def _sni_of_client_hello(body: bytes) -> SniResult:
    hello = _Reader(body)
    if hello.uint(1) != 3:  # legacy_version major
        raise _Malformed
    hello.take(1 + 32)  # legacy_version minor, random
    if len(hello.vector(1).data) > 32:  # legacy_session_id
        raise _Malformed
    suites = hello.vector(2).data
    if not suites or len(suites) % 2:
        raise _Malformed
    if hello.vector(1).done():  # compression methods: at least one
        raise _Malformed
    if hello.done():
        return NO_SNI  # pre-extension hellos are still TLS
    extensions = hello.vector(2)
    if not hello.done():
        raise _Malformed
    seen: set[int] = set()
    sni = None
    while not extensions.done():
        ext_type, ext = extensions.uint(2), extensions.vector(2)
        # RFC 8446 4.2: an extension type appears at most once; a second server_name
        # is a classic way to make the gateway and the server see different names.
        if ext_type in seen:
            raise _Malformed
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            sni = _server_name(ext)
    return NO_SNI if sni is None else SniResult(SniOutcome.FOUND, sni)


def parse_client_hello(data: bytes) -> SniResult:
    """The SNI outcome of the bytes a client has sent so far. Never raises."""
    prefix = bytes(data[:MAX_CLIENT_HELLO_BYTES])
    handshake = _handshake_bytes(prefix)
    if isinstance(handshake, SniResult):
        return handshake
    if len(handshake) < 4 or len(handshake) < 4 + int.from_bytes(handshake[1:4], "big"):
        return TOO_LARGE if len(data) >= MAX_CLIENT_HELLO_BYTES else NEED_MORE
    try:
        return _sni_of_client_hello(handshake[4:])
    except _Malformed:
        return NOT_TLS
