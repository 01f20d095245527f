"""record_encoding: the JSON lines and the protobuf requests of one record say the same,
and both read back as the record (opentelemetry-proto's classes parse the hand-written
protobuf; `clrk.records.query` reads the JSON)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from clrk.records.otlp_json import to_otlp_dict
from clrk.records.query import records_from_line
from clrk.records.schema import Record
from clrk_runtime.record_encoding import Ids, JsonEncoder, ProtobufEncoder

values = st.one_of(st.text(), st.booleans(), st.integers(-(2**63), 2**63 - 1))
records = st.builds(
    Record,
    name=st.text(min_size=1),
    attributes=st.dictionaries(st.text(min_size=1), values, max_size=8),
    severity=st.sampled_from(["WARN", "INFO"]),
    error=st.booleans(),
    start_ns=st.one_of(st.none(), st.integers(1, 2**64 - 1)),
    end_ns=st.one_of(st.none(), st.integers(1, 2**64 - 1)),
)


@given(records, st.text(min_size=1))
def test_the_json_lines_are_the_protobuf_requests_in_otlp_json(record, service):
    ids = Ids.new(record)
    span_line, log_line, rest = JsonEncoder(service).lines(record, ids).split(b"\n")
    assert rest == b""
    traces, logs = ProtobufEncoder(service).requests(record, ids)
    assert json.loads(span_line) == to_otlp_dict(ExportTraceServiceRequest.FromString(traces))
    assert json.loads(log_line) == to_otlp_dict(ExportLogsServiceRequest.FromString(logs))


@given(records)
def test_what_is_read_back_is_the_record(record):
    ids = Ids.new(record)
    span_line, log_line, _ = JsonEncoder("svc").lines(record, ids).split(b"\n")
    (span,), (log,) = records_from_line(span_line), records_from_line(log_line)
    for flat in (span, log):
        assert flat["name"] == record.name
        assert flat["attributes"] == dict(record.attributes)
        assert flat["service"] == "svc"
        assert (flat["trace_id"], flat["span_id"]) == (ids.trace_id.hex(), ids.span_id.hex())
    assert (span["time"], span["end_time"]) == (ids.start_ns, ids.end_ns)
    assert span["status"] == ("ERROR" if record.error else "UNSET")
    assert (log["time"], log["severity"]) == (ids.end_ns, record.severity)


def test_concatenated_requests_are_one_request_of_every_record():
    encoder = ProtobufEncoder("svc")
    parts = [encoder.requests(Record(f"r{i}", {"i": i}), Ids.new(Record("x"))) for i in range(3)]
    traces = ExportTraceServiceRequest.FromString(b"".join(t for t, _ in parts))
    logs = ExportLogsServiceRequest.FromString(b"".join(lg for _, lg in parts))
    assert [rs.scope_spans[0].spans[0].name for rs in traces.resource_spans] == ["r0", "r1", "r2"]
    assert [rl.scope_logs[0].log_records[0].event_name for rl in logs.resource_logs] == [
        "r0", "r1", "r2",
    ]  # fmt: skip


def test_an_unknown_severity_or_value_type_is_refused():
    with pytest.raises(ValueError, match="severity"):
        JsonEncoder("s").lines(Record("r", {}, "LOUD"), Ids.new(Record("r")))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="str, int or bool"):
        ProtobufEncoder("s").requests(Record("r", {"f": 1.5}), Ids.new(Record("r")))  # type: ignore[dict-item]
