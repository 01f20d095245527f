"""One Record as one span and one log record, encoded directly: OTLP/JSON lines for the
records file, OTLP protobuf export requests for the spool.

No OpenTelemetry SDK objects per record: a record has one schema (`clrk.records.schema`),
so building the wire form straight from it costs a few microseconds where the SDK's
span, log, processor and exporter objects cost most of a millisecond.  The output is
what the SDK wrote before: the same resource (`service.name`), scope (`clrk.records`),
span (kind INTERNAL, status ERROR with the deny reason for a denial) and log record
(severity, body and event name = the record name, the span's ids).
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass

from clrk.records.schema import DENY_REASON, AttrValue, Record
from clrk_runtime import random_bytes

SCOPE = "clrk.records"
SEVERITY_NUMBER = {"WARN": 13, "INFO": 9}  # OTLP: 9 INFO, 13 WARN
SPAN_KIND_INTERNAL = 1
STATUS_ERROR = 2
TRACE_FLAGS_SAMPLED = 1

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_string = json.encoder.encode_basestring  # what `_dumps` does with a str, minus a call


@dataclass(frozen=True, slots=True)
class Ids:
    """A record's span identity and times, fixed once so every encoding agrees."""

    trace_id: bytes
    span_id: bytes
    start_ns: int
    end_ns: int
    observed_ns: int

    @classmethod
    def new(cls, record: Record) -> Ids:
        now = time.time_ns()
        start = record.start_ns if record.start_ns is not None else now
        end = record.end_ns if record.end_ns is not None else start
        random = random_bytes.take(24)  # one call for both ids
        return cls(random[:16], random[16:], start, end, now)


def _severity(record: Record) -> int:
    try:
        return SEVERITY_NUMBER[record.severity]
    except KeyError:
        raise ValueError(f"record {record.name}: unknown severity {record.severity!r}") from None


def _json_value(value: AttrValue) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, int):
        return f'{{"intValue":"{value}"}}'
    if isinstance(value, str):
        return '{"stringValue":' + _dumps(value) + "}"
    raise ValueError(f"attribute value {value!r} is not a str, int or bool")


# An attribute's `{"key":...,"value":` by key: keys are the schema's few dozen names.
_KEY_PREFIXES: dict[str, str] = {}
_KEY_PREFIXES_MAX = 1024


def _key_prefix(key: str) -> str:
    prefix = '{"key":' + _dumps(key) + ',"value":'
    if len(_KEY_PREFIXES) < _KEY_PREFIXES_MAX:
        _KEY_PREFIXES[key] = prefix
    return prefix


def _json_attributes(record: Record) -> str:
    # Written out for the common types: this runs on every denial before the reset.
    parts = []
    for key, value in record.attributes.items():
        prefix = _KEY_PREFIXES.get(key) or _key_prefix(key)
        kind = type(value)
        if kind is str:
            parts.append(prefix + '{"stringValue":' + _encode_string(value) + "}}")
        elif kind is int:
            parts.append(f'{prefix}{{"intValue":"{value}"}}}}')
        else:
            parts.append(prefix + _json_value(value) + "}")
    return ",".join(parts)


class JsonEncoder:
    """Two OTLP/JSON lines per record, the Collector file exporter's format:
    `{"resourceSpans":[...]}` and `{"resourceLogs":[...]}`."""

    def __init__(self, service_name: str) -> None:
        self._resource = (
            '{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":'
            + _dumps(service_name)
            + "}}]},"
        )
        self._scope = '"scope":{"name":' + _dumps(SCOPE) + "},"

    def lines(self, record: Record, ids: Ids) -> bytes:
        severity = _severity(record)
        name = _dumps(record.name)
        attributes = _json_attributes(record)
        trace_id, span_id = ids.trace_id.hex(), ids.span_id.hex()
        # Empty fields are left out, as protobuf's JSON mapping does.
        attributes = f',"attributes":[{attributes}]' if attributes else ""
        if record.error:
            reason = str(record.attributes.get(DENY_REASON, ""))
            message = f',"message":{_dumps(reason)}' if reason else ""
            status = f',"status":{{"code":{STATUS_ERROR}{message}}}'
        else:
            status = ""
        span = (
            f'{{"resourceSpans":[{self._resource}"scopeSpans":[{{{self._scope}"spans":[{{'
            f'"traceId":"{trace_id}","spanId":"{span_id}","name":{name},'
            f'"kind":{SPAN_KIND_INTERNAL},"startTimeUnixNano":"{ids.start_ns}",'
            f'"endTimeUnixNano":"{ids.end_ns}"{attributes}{status}}}]}}]}}]}}\n'
        )
        log = (
            f'{{"resourceLogs":[{self._resource}"scopeLogs":[{{{self._scope}"logRecords":[{{'
            f'"timeUnixNano":"{ids.end_ns}","observedTimeUnixNano":"{ids.observed_ns}",'
            f'"severityNumber":{severity},"severityText":"{record.severity}",'
            f'"body":{{"stringValue":{name}}}{attributes},'
            f'"flags":{TRACE_FLAGS_SAMPLED},"traceId":"{trace_id}","spanId":"{span_id}",'
            f'"eventName":{name}}}]}}]}}]}}\n'
        )
        return (span + log).encode()


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    value &= (1 << 64) - 1  # int64: a negative value is ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    return _ONE_BYTE[field << 3 | 2] + _varint(len(payload)) + payload  # fields < 16


def _str(field: int, text: str) -> bytes:
    return _len(field, text.encode())


def _fixed64(field: int, value: int) -> bytes:
    return _ONE_BYTE[field << 3 | 1] + struct.pack("<Q", value)


def _enum(field: int, value: int) -> bytes:
    return _ONE_BYTE[field << 3] + _varint(value)


def _pb_value(value: AttrValue) -> bytes:
    # AnyValue: string_value = 1, bool_value = 2, int_value = 3
    if isinstance(value, bool):
        return _enum(2, int(value))
    if isinstance(value, int):
        return _enum(3, value)
    if isinstance(value, str):
        return _str(1, value)
    raise ValueError(f"attribute value {value!r} is not a str, int or bool")


_KEYS: dict[str, bytes] = {}  # KeyValue.key = 1, encoded once per attribute name


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _str(1, key)
        if len(_KEYS) < 1024:  # the schema's names; never grows without bound
            _KEYS[key] = encoded
    return encoded


def _pb_key_values(record: Record) -> list[bytes]:
    """Each attribute as a KeyValue message (key = 1, value = 2)."""
    return [_key(key) + _len(2, _pb_value(value)) for key, value in record.attributes.items()]


def _repeated(field: int, messages: list[bytes]) -> bytes:
    return b"".join([_len(field, message) for message in messages])


class ProtobufEncoder:
    """One serialized ExportTraceServiceRequest and one ExportLogsServiceRequest per
    record, written field by field (opentelemetry-proto's field numbers; a test parses
    them back with its classes).  Serialized requests of one type concatenate into one
    request (protobuf merges repeated fields), so the spool's shipper batches without
    decoding."""

    def __init__(self, service_name: str) -> None:
        # Resource: attributes = 1; InstrumentationScope: name = 1.
        resource = _len(1, _str(1, "service.name") + _len(2, _str(1, service_name)))
        self._resource = _len(1, resource)  # ResourceSpans/ResourceLogs: resource = 1
        self._scope = _len(1, _str(1, SCOPE))  # ScopeSpans/ScopeLogs: scope = 1

    def requests(self, record: Record, ids: Ids) -> tuple[bytes, bytes]:
        severity = _severity(record)
        name = record.name.encode()
        key_values = _pb_key_values(record)
        span = (
            _len(1, ids.trace_id)
            + _len(2, ids.span_id)
            + _len(5, name)
            + _enum(6, SPAN_KIND_INTERNAL)
            + _fixed64(7, ids.start_ns)
            + _fixed64(8, ids.end_ns)
            + _repeated(9, key_values)
        )
        if record.error:  # Status: message = 2, code = 3
            reason = str(record.attributes.get(DENY_REASON, ""))
            span += _len(15, (_str(2, reason) if reason else b"") + _enum(3, STATUS_ERROR))
        log = (
            _fixed64(1, ids.end_ns)
            + _enum(2, severity)
            + _str(3, record.severity)
            + _len(5, _len(1, name))
            + _repeated(6, key_values)
            + _varint(8 << 3 | 5)  # flags: fixed32
            + struct.pack("<I", TRACE_FLAGS_SAMPLED)
            + _len(9, ids.trace_id)
            + _len(10, ids.span_id)
            + _fixed64(11, ids.observed_ns)
            + _len(12, name)
        )
        # Export*ServiceRequest: resource_* = 1; Resource*: scope_* = 2; Scope*: items = 2.
        traces = _len(1, self._resource + _len(2, self._scope + _len(2, span)))
        logs = _len(1, self._resource + _len(2, self._scope + _len(2, log)))
        return traces, logs
