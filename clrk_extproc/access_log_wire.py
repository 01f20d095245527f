"""What `egress.tcp` and `egress.http` records need from Envoy's access-log stream
messages, read straight off the protobuf wire (pure).

Parsing a `StreamAccessLogsMessage` into envoy_data_plane's classes costs about a
millisecond of CPU per entry here, more than the dialer and Envoy spend on the
connection or the request itself, on the two cores Envoy shares with clrk_extproc; a
record needs a dozen fields of an entry.  `scan` reads just those: of a TCP
connection-end entry, and of every HTTP entry.  Whatever it does not expect (a
singular field sent twice, which protobuf would merge, a group, a wrong wire type,
bytes that are not UTF-8, a truncated field, a time out of range) makes it answer None,
and the caller parses the message the full way: what each record says, and whether a
message is refused, stay what the full parse gives.  (Fields it does not read it only
skips: a value the full parse would refuse there, say a string that is not UTF-8, is
passed over here; Envoy, the only peer, sends none.)  The tests fuzz it against the
full parse.
"""

from __future__ import annotations

import datetime
from typing import NamedTuple

from envoy_data_plane.envoy.data.accesslog.v3 import AccessLogType

from clrk.wire import CHAIN_TAG, proxying_chain

END = int(AccessLogType.TcpConnectionEnd)
LISTENER_LOG = int(AccessLogType.NotSet)  # a listener's log: Envoy gives it no type
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

# Field numbers (envoy/service/accesslog/v3/als.proto, envoy/data/accesslog/v3/accesslog.proto,
# envoy/config/core/v3/{base,address}.proto, google/protobuf/{timestamp,duration}.proto).
MSG_IDENTIFIER, MSG_HTTP_LOGS, MSG_TCP_LOGS = 1, 2, 3
IDENTIFIER_NODE, NODE_ID = 1, 1
ENTRIES_LOG_ENTRY = 1
ENTRY_COMMON, ENTRY_CONNECTION = 1, 2
HTTP_COMMON, HTTP_REQUEST, HTTP_RESPONSE = 1, 3, 4
REQUEST_METHOD, REQUEST_AUTHORITY, REQUEST_PATH = 1, 3, 5
RESPONSE_CODE, WRAPPED_VALUE = 1, 1  # a google.protobuf.UInt32Value
COMMON_REMOTE, COMMON_LOCAL, COMMON_START, COMMON_FIRST_TX = 2, 3, 5, 11
COMMON_ROUTE_NAME, COMMON_TAGS, COMMON_DURATION, COMMON_TYPE = 19, 22, 23, 33
CONNECTION_RECEIVED, CONNECTION_SENT = 1, 2
ADDRESS_SOCKET, ADDRESS_PIPE, ADDRESS_INTERNAL = 1, 2, 3
SOCKET_ADDRESS, SOCKET_PORT = 2, 3
SECONDS, NANOS = 1, 2
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
# The common properties' fields each kind of entry reads.
TCP_COMMON_READ = frozenset(
    {COMMON_TAGS, COMMON_TYPE, COMMON_REMOTE, COMMON_LOCAL, COMMON_START, COMMON_DURATION}
)
HTTP_COMMON_READ = frozenset(
    {COMMON_TAGS, COMMON_START, COMMON_FIRST_TX, COMMON_DURATION, COMMON_ROUTE_NAME}
)


class Unexpected(ValueError):
    """Not what Envoy sends for an access log: leave it to the full parse."""


class EndFacts(NamedTuple):
    """What a connection-end entry says that a record uses (None: the field is absent)."""

    tags: dict[str, str]
    received: int
    sent: int
    local: tuple[str, int] | None  # the original destination
    remote: tuple[str, int] | None  # the agent
    start: datetime.datetime | None
    duration: datetime.timedelta | None


class HttpFacts(NamedTuple):
    """What an HTTP entry with common properties says that its record uses (a request's
    or a response's field that is absent reads as protobuf's default)."""

    tags: dict[str, str]
    route_name: str
    start: datetime.datetime | None
    first_tx: datetime.timedelta | None  # to the first byte sent to the agent
    duration: datetime.timedelta | None
    method: int  # envoy.config.core.v3.RequestMethod, perhaps no member of it
    authority: str
    path: str
    status: int


class Scanned(NamedTuple):
    node_id: str | None  # None: the message names no node
    ends: list[EndFacts]  # the connection-end entries, in order
    entries: int  # all TCP entries, connection-end or not
    http: list[HttpFacts | None]  # every HTTP entry, in order; None: no common properties


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise Unexpected("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int, only=None):
    """(field number, wire type, value or (start, end) of a length-delimited field); of
    the field numbers in `only` when given (the others are checked alike, not yielded:
    an entry has some thirty fields and a record reads a few)."""
    pos = start
    while pos < end:
        # A one-byte varint (most keys, lengths and values here) read in line: what
        # `_varint` reads, without a call per byte of the hundred or so in an entry;
        # and a two-byte key (fields 16 to 2047: most of an HTTP entry's common ones).
        key = buf[pos]
        if key < 0x80:
            pos += 1
        elif pos + 1 < end and buf[pos + 1] < 0x80:
            key, pos = (key & 0x7F) | (buf[pos + 1] << 7), pos + 2
        else:
            key, pos = _varint(buf, pos, end)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise Unexpected("field number 0")
        if kind == VARINT:
            if pos < end and buf[pos] < 0x80:
                value, pos = buf[pos], pos + 1
            else:
                value, pos = _varint(buf, pos, end)
        elif kind == LENGTH:
            if pos < end and buf[pos] < 0x80:
                size, pos = buf[pos], pos + 1
            else:
                size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise Unexpected("truncated field")
            value, pos = (pos, pos + size), pos + size
        elif kind in (FIXED64, FIXED32):
            pos += 8 if kind == FIXED64 else 4
            if pos > end:
                raise Unexpected("truncated field")
            value = None
        else:
            raise Unexpected(f"wire type {kind}")
        if only is None or number in only:
            yield number, kind, value


def _once(seen: set[int], number: int, kind: int, expected: int) -> None:
    if kind != expected or number in seen:
        raise Unexpected(f"field {number}")
    seen.add(number)


def _text(buf: bytes, span: tuple[int, int]) -> str:
    try:
        return buf[span[0] : span[1]].decode()
    except UnicodeDecodeError as exc:
        raise Unexpected("not UTF-8") from exc


def _agents_text(buf: bytes, span: tuple[int, int]) -> str:
    """Text the agent wrote (Host, path): bytes that are not UTF-8 are replaced, as other
    readers of what agents send do, rather than costing the whole batch its records (the
    full parse refuses the message, and the stream ends)."""
    return buf[span[0] : span[1]].decode("utf-8", errors="replace")


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _enum(value: int) -> int:
    """An enum's number, which protobuf writes as a sign-extended int32.  A varint past
    that is one no writer makes; protobuf would keep its low 32 bits, the full parse the
    whole number, so it is left to the full parse rather than read as another value."""
    value &= (1 << 64) - 1
    if (1 << 31) <= value < (1 << 64) - (1 << 31):
        raise Unexpected("enum past int32")
    return _signed(value, 32)


def _singular(buf: bytes, span: tuple[int, int], wanted: dict[int, int]) -> dict:
    """The fields of `wanted` (number -> wire type) a message has, each at most once."""
    found: dict = {}
    for number, kind, value in _fields(buf, *span, wanted):
        if kind != wanted[number] or number in found:
            raise Unexpected(f"field {number}")
        found[number] = value
    return found


def _seconds_nanos(buf: bytes, span: tuple[int, int]) -> tuple[int, int]:
    # As protobuf writes one: seconds, then nanos, each if not 0; else the general way.
    pos, end = span
    seconds = nanos = 0
    if pos < end and buf[pos] == 0x08:  # field 1, varint
        seconds, pos = _varint(buf, pos + 1, end)
    if pos < end and buf[pos] == 0x10:  # field 2, varint
        nanos, pos = _varint(buf, pos + 1, end)
    if pos != end:
        got = _singular(buf, span, {SECONDS: VARINT, NANOS: VARINT})
        seconds, nanos = got.get(SECONDS, 0), got.get(NANOS, 0)
    return _signed(seconds, 64), _signed(nanos, 32)


def _moment(buf: bytes, span: tuple[int, int]) -> datetime.datetime:
    """A google.protobuf.Timestamp, as envoy_data_plane reads it."""
    seconds, nanos = _seconds_nanos(buf, span)
    return EPOCH + datetime.timedelta(seconds=seconds, microseconds=nanos // 1000)


def _duration(buf: bytes, span: tuple[int, int]) -> datetime.timedelta:
    """A google.protobuf.Duration, as envoy_data_plane reads it."""
    seconds, nanos = _seconds_nanos(buf, span)
    return datetime.timedelta(seconds=seconds, microseconds=nanos / 1e3)


def _socket(buf: bytes, span: tuple[int, int]) -> tuple[str, int] | None:
    """An Address's socket address, None without one; as envoy_data_plane reads it."""
    for number, _kind, _value in _fields(buf, *span):
        if number in (ADDRESS_PIPE, ADDRESS_INTERNAL):
            raise Unexpected("not a socket address")  # a oneof: the last one set counts
    address = _singular(buf, span, {ADDRESS_SOCKET: LENGTH})
    if ADDRESS_SOCKET not in address:
        return None
    got = _singular(buf, address[ADDRESS_SOCKET], {SOCKET_ADDRESS: LENGTH, SOCKET_PORT: VARINT})
    text = _text(buf, got[SOCKET_ADDRESS]) if SOCKET_ADDRESS in got else ""
    return text, got.get(SOCKET_PORT, 0) & 0xFFFFFFFF


def _tag(buf: bytes, span: tuple[int, int]) -> tuple[str, str]:
    """A custom_tags map entry: key 1, value 2."""
    start, end = span
    # As Envoy writes one: the key, then the value, each shorter than 128 bytes (a
    # one-byte length) and nothing else; any other layout takes the general way.
    if end - start >= 4 and buf[start] == 0x0A and buf[start + 1] < 0x80:
        value = start + 2 + buf[start + 1]
        if (
            value + 2 <= end
            and buf[value] == 0x12
            and buf[value + 1] < 0x80
            and value + 2 + buf[value + 1] == end
        ):
            return _text(buf, (start + 2, value)), _text(buf, (value + 2, end))
    got = _singular(buf, span, {1: LENGTH, 2: LENGTH})
    key, value = (_text(buf, got[n]) if n in got else "" for n in (1, 2))
    return key, value


# How each singular field of AccessLogCommon a record uses is read, and its wire type.
_COMMON_READERS = {
    COMMON_TYPE: (VARINT, lambda buf, value: _enum(value)),
    COMMON_REMOTE: (LENGTH, _socket),
    COMMON_LOCAL: (LENGTH, _socket),
    COMMON_START: (LENGTH, _moment),
    COMMON_FIRST_TX: (LENGTH, _duration),
    COMMON_DURATION: (LENGTH, _duration),
    COMMON_ROUTE_NAME: (LENGTH, _text),
}


def _common(buf: bytes, span: tuple[int, int], read: frozenset) -> tuple[dict[str, str], dict]:
    """The custom tags of an entry's common properties, and the fields of `read` it has
    (field number -> value; each at most once, of its wire type)."""
    tags: dict[str, str] = {}
    found: dict = {}
    seen: set[int] = set()
    for number, kind, value in _fields(buf, *span, read):
        if number == COMMON_TAGS:
            if kind != LENGTH:
                raise Unexpected("custom_tags")
            key, text = _tag(buf, value)
            tags[key] = text
        else:
            expected, reader = _COMMON_READERS[number]
            _once(seen, number, kind, expected)
            found[number] = reader(buf, value)
    return tags, found


def _entry(buf: bytes, span: tuple[int, int]) -> EndFacts | None:
    """A TCP entry's facts when it is a connection end, else None."""
    parts = _singular(buf, span, {ENTRY_COMMON: LENGTH, ENTRY_CONNECTION: LENGTH})
    if ENTRY_COMMON not in parts:
        return None
    tags, read = _common(buf, parts[ENTRY_COMMON], TCP_COMMON_READ)
    if not counted(read.get(COMMON_TYPE, 0), tags):
        return None
    connection = parts.get(ENTRY_CONNECTION)
    counts = (
        {}
        if connection is None
        else _singular(buf, connection, {CONNECTION_RECEIVED: VARINT, CONNECTION_SENT: VARINT})
    )
    received, sent = (counts.get(n, 0) for n in (CONNECTION_RECEIVED, CONNECTION_SENT))
    return EndFacts(
        tags,
        received,
        sent,
        *(read.get(n) for n in (COMMON_LOCAL, COMMON_REMOTE, COMMON_START)),
        read.get(COMMON_DURATION),
    )


def _http_entry(buf: bytes, span: tuple[int, int]) -> HttpFacts | None:
    """An HTTP entry's facts; None when it has no common properties."""
    parts = _singular(buf, span, {HTTP_COMMON: LENGTH, HTTP_REQUEST: LENGTH, HTTP_RESPONSE: LENGTH})
    if HTTP_COMMON not in parts:
        return None
    tags, read = _common(buf, parts[HTTP_COMMON], HTTP_COMMON_READ)
    method, authority, path, status = 0, "", "", 0
    if HTTP_REQUEST in parts:
        request = _singular(
            buf,
            parts[HTTP_REQUEST],
            {REQUEST_METHOD: VARINT, REQUEST_AUTHORITY: LENGTH, REQUEST_PATH: LENGTH},
        )
        method = _enum(request.get(REQUEST_METHOD, 0))
        if REQUEST_AUTHORITY in request:
            authority = _agents_text(buf, request[REQUEST_AUTHORITY])
        if REQUEST_PATH in request:
            path = _agents_text(buf, request[REQUEST_PATH])
    if HTTP_RESPONSE in parts:
        response = _singular(buf, parts[HTTP_RESPONSE], {RESPONSE_CODE: LENGTH})
        if RESPONSE_CODE in response:
            code = _singular(buf, response[RESPONSE_CODE], {WRAPPED_VALUE: VARINT})
            status = code.get(WRAPPED_VALUE, 0) & 0xFFFFFFFF
    return HttpFacts(
        tags, read.get(COMMON_ROUTE_NAME, ""),
        *(read.get(n) for n in (COMMON_START, COMMON_FIRST_TX, COMMON_DURATION)),
        method, authority, path, status,
    )  # fmt: skip


def counted(kind: int, tags: dict[str, str]) -> bool:
    """Whether an entry of this log type and these tags is a connection's record: a
    chain's connection-end entry, or a listener's entry for a connection a proxying
    chain took (clrk.wire.CHAIN_TAG)."""
    if kind == END:
        return True
    return kind == LISTENER_LOG and proxying_chain(tags.get(CHAIN_TAG))


def _node_id(buf: bytes, span: tuple[int, int]) -> str | None:
    identifier = _singular(buf, span, {IDENTIFIER_NODE: LENGTH})
    if IDENTIFIER_NODE not in identifier:
        return None
    node = _singular(buf, identifier[IDENTIFIER_NODE], {NODE_ID: LENGTH})
    return _text(buf, node[NODE_ID]) if NODE_ID in node else ""


def scan(raw: bytes) -> Scanned | None:
    """The node, the TCP connection-end entries and the HTTP entries of an access-log
    stream message; None when only the full parse may say what it is (see the module
    docstring)."""
    try:
        node_id, ends, count, http = None, [], 0, []
        seen: set[int] = set()
        for number, kind, value in _fields(raw, 0, len(raw)):
            if number == MSG_IDENTIFIER:
                _once(seen, number, kind, LENGTH)
                node_id = _node_id(raw, value)
            elif number == MSG_TCP_LOGS:
                _once(seen, number, kind, LENGTH)
                if MSG_HTTP_LOGS in seen:
                    raise Unexpected("both kinds of entries")
                for field, wire, entry in _fields(raw, *value):
                    if field != ENTRIES_LOG_ENTRY:
                        continue
                    if wire != LENGTH:
                        raise Unexpected("log_entry")
                    count += 1
                    if (facts := _entry(raw, entry)) is not None:
                        ends.append(facts)
            elif number == MSG_HTTP_LOGS:
                _once(seen, number, kind, LENGTH)
                if MSG_TCP_LOGS in seen:
                    raise Unexpected("both kinds of entries")  # a oneof: the last counts
                for field, wire, entry in _fields(raw, *value):
                    if field != ENTRIES_LOG_ENTRY:
                        continue
                    if wire != LENGTH:
                        raise Unexpected("log_entry")
                    http.append(_http_entry(raw, entry))
        return Scanned(node_id, ends, count, http)
    except (Unexpected, OverflowError):  # OverflowError: a time past datetime's range
        return None
