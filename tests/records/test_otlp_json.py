"""OTLP protobuf → OTLP/JSON: the two rules that differ from plain protobuf JSON."""

from __future__ import annotations

import json

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from clrk.records.otlp_json import to_otlp_dict, to_otlp_line


def request() -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.name = "egress.dial.denied"
    span.trace_id = bytes(range(16))
    span.span_id = bytes(range(8))
    span.parent_span_id = b"\xff" * 8
    span.kind = Span.SPAN_KIND_INTERNAL
    span.status.code = Status.STATUS_CODE_ERROR
    return req


def test_ids_are_lower_case_hex_and_enums_are_integers():
    span = to_otlp_dict(request())["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "000102030405060708090a0b0c0d0e0f"
    assert span["spanId"] == "0001020304050607"
    assert span["parentSpanId"] == "ffffffffffffffff"
    assert (span["kind"], span["status"]) == (1, {"code": 2})


def test_a_line_is_one_compact_json_object_and_a_newline():
    line = to_otlp_line(request())
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == to_otlp_dict(request())
