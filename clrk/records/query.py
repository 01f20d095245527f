"""Read records back from an OTLP/JSON lines file (writer.py, or a Collector's file
exporter) as flat dicts, and select among them.

A FlatRecord is a plain dict:

    {"signal": "span" | "log", "name": str, "time": int (Unix ns; span start, log
     time or else observed time), "end_time": int | None (spans), "attributes": {...},
     "severity": "WARN" | "INFO" | ... | None (logs), "status": "ERROR" | "OK" |
     "UNSET" (spans) | None (logs), "service": str | None, "trace_id": str | None,
     "span_id": str | None}

A log record's name is its event name; logs without one fall back to a string body
(the writer sets both to the record name).  Attribute values are decoded to Python
(intValue strings become ints; arrays lists, kvlists dicts, bytes stay base64).

Reading is tolerant: a line that is not JSON, is cut short (a writer mid-append), or
holds something else is skipped; inside a good line, a malformed span or log record
is skipped alone.  The reader never raises on file content.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

FlatRecord = dict[str, Any]

_SPAN_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
_STATUS_NAMES = {"STATUS_CODE_UNSET": "UNSET", "STATUS_CODE_OK": "OK", "STATUS_CODE_ERROR": "ERROR"}
# OTLP severity numbers: 1-4 TRACE, 5-8 DEBUG, 9-12 INFO, 13-16 WARN, 17-20 ERROR, 21-24 FATAL.
_SEVERITY_BANDS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_MAX_DEPTH = 16


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _any_value(value: Any, depth: int = 0) -> Any:
    """An OTLP AnyValue as Python; None for anything unrecognised."""
    if not isinstance(value, dict) or depth > _MAX_DEPTH:
        return None
    if "stringValue" in value:
        v = value["stringValue"]
        return v if isinstance(v, str) else None
    if "boolValue" in value:
        v = value["boolValue"]
        return v if isinstance(v, bool) else None
    if "intValue" in value:
        return _int(value["intValue"])
    if "doubleValue" in value:
        v = value["doubleValue"]
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
    if "arrayValue" in value:
        inner = value["arrayValue"]
        items = inner.get("values", []) if isinstance(inner, dict) else []
        return [_any_value(v, depth + 1) for v in items] if isinstance(items, list) else None
    if "kvlistValue" in value:
        inner = value["kvlistValue"]
        items = inner.get("values", []) if isinstance(inner, dict) else []
        return _attributes(items, depth + 1)
    if "bytesValue" in value:
        v = value["bytesValue"]
        return v if isinstance(v, str) else None
    return None


def _attributes(items: Any, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(items, list):
        return out
    for kv in items:
        if isinstance(kv, dict) and isinstance(kv.get("key"), str):
            out[kv["key"]] = _any_value(kv.get("value"), depth)
    return out


def _list(node: Any, key: str) -> list[Any]:
    value = node.get(key) if isinstance(node, dict) else None
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _service(node: Any) -> str | None:
    """service.name of a resourceSpans/resourceLogs entry."""
    resource = node.get("resource") if isinstance(node, dict) else None
    attrs = _attributes(resource.get("attributes")) if isinstance(resource, dict) else {}
    return _str(attrs.get("service.name"))


def _span_status(status: Any) -> str:
    code = status.get("code", 0) if isinstance(status, dict) else 0
    if isinstance(code, str):
        return _STATUS_NAMES.get(code, "UNSET")
    return _SPAN_STATUS.get(_int(code) or 0, "UNSET")


def _flat_span(span: dict[str, Any], service: str | None) -> FlatRecord | None:
    name = _str(span.get("name"))
    if name is None:
        return None
    return {
        "signal": "span",
        "name": name,
        "time": _int(span.get("startTimeUnixNano")),
        "end_time": _int(span.get("endTimeUnixNano")),
        "attributes": _attributes(span.get("attributes")),
        "severity": None,
        "status": _span_status(span.get("status")),
        "service": service,
        "trace_id": _str(span.get("traceId")),
        "span_id": _str(span.get("spanId")),
    }


def _severity(record: dict[str, Any]) -> str | None:
    text = _str(record.get("severityText"))
    if text:
        return text
    number = _int(record.get("severityNumber"))
    if number is None or not 1 <= number <= 24:
        return None
    return _SEVERITY_BANDS[(number - 1) // 4]


def _flat_log(record: dict[str, Any], service: str | None) -> FlatRecord | None:
    name = _str(record.get("eventName")) or _str(_any_value(record.get("body")))
    if name is None:
        return None
    time_ns = _int(record.get("timeUnixNano")) or _int(record.get("observedTimeUnixNano"))
    return {
        "signal": "log",
        "name": name,
        "time": time_ns,
        "end_time": None,
        "attributes": _attributes(record.get("attributes")),
        "severity": _severity(record),
        "status": None,
        "service": service,
        "trace_id": _str(record.get("traceId")) or None,
        "span_id": _str(record.get("spanId")) or None,
    }


def _flatten(doc: Any) -> Iterator[FlatRecord]:
    for resource_spans in _list(doc, "resourceSpans"):
        service = _service(resource_spans)
        for scope in _list(resource_spans, "scopeSpans"):
            for span in _list(scope, "spans"):
                flat = _flat_span(span, service) if isinstance(span, dict) else None
                if flat is not None:
                    yield flat
    for resource_logs in _list(doc, "resourceLogs"):
        service = _service(resource_logs)
        for scope in _list(resource_logs, "scopeLogs"):
            for record in _list(scope, "logRecords"):
                flat = _flat_log(record, service) if isinstance(record, dict) else None
                if flat is not None:
                    yield flat


def records_from_line(line: str | bytes) -> list[FlatRecord]:
    """The records in one OTLP/JSON line; [] for a line that is not one."""
    try:
        return list(_flatten(json.loads(line)))
    except (ValueError, RecursionError, TypeError):
        return []


def iter_lines(lines: Iterable[str | bytes]) -> Iterator[FlatRecord]:
    for line in lines:
        yield from records_from_line(line)


def iter_records(path: str) -> Iterator[FlatRecord]:
    """Every record in the file at `path`, in file order."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from iter_lines(fh)


def _text(value: Any) -> str:
    # `where` values come from a command line: compare with the JSON spelling.
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def select(
    records: Iterable[FlatRecord],
    where: Mapping[str, str] | None = None,
    name: str | None = None,
    signal: str | None = None,
) -> Iterator[FlatRecord]:
    """Records whose attributes equal every `where` item (compared as text)."""
    where = where or {}
    for record in records:
        if name is not None and record["name"] != name:
            continue
        if signal is not None and record["signal"] != signal:
            continue
        attrs = record["attributes"]
        if all(key in attrs and _text(attrs[key]) == want for key, want in where.items()):
            yield record
