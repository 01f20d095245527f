"""RecordWriter: one span and one log per record, written before emit() returns, to an
OTLP/JSON file or through an on-disk spool over OTLP/gRPC.

The gRPC tests run a real grpcio server in this process implementing the OTLP trace and
logs collector services, so the writer's shipper talks real gRPC over loopback.
"""

from __future__ import annotations

import contextlib
import json
import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from clrk.policy import Agent, Decision, Reason
from clrk.records.query import iter_records
from clrk.records.schema import Record, dial_denied
from clrk_runtime.records_writer import RecordWriter

BOT = Agent("default", "bot")
DENY = Decision(Reason.POLICY, "default/gw", "default/bot", "deny-all")


def denial(port: int) -> Record:
    return dial_denied(
        DENY, agent=BOT, dst_ip="192.0.2.1", dst_port=port, transport="tcp", dst_name="x.example"
    )


def read_lines(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def spans_and_logs(path):
    spans, logs = [], []
    for doc in read_lines(path):
        for rs in doc.get("resourceSpans", []):
            for ss in rs["scopeSpans"]:
                spans.extend(ss["spans"])
        for rl in doc.get("resourceLogs", []):
            for sl in rl["scopeLogs"]:
                logs.extend(sl["logRecords"])
    return spans, logs


def attrs(item):
    return {kv["key"]: next(iter(kv["value"].values())) for kv in item["attributes"]}


def test_n_records_are_exactly_n_spans_and_n_logs_in_the_file_when_emit_returns(tmp_path):
    path = tmp_path / "records.jsonl"
    writer = RecordWriter("clrk-dialer", path=str(path))
    try:
        for port in range(1000, 1050):
            writer.emit(denial(port))
        spans, logs = spans_and_logs(path)  # no flush: each emit wrote before returning
    finally:
        writer.shutdown()
    assert len(spans) == len(logs) == 50
    assert sorted(int(attrs(s)["network.peer.port"]) for s in spans) == list(range(1000, 1050))
    span = spans[0]
    assert span["name"] == "egress.dial.denied"
    assert span["status"] == {"code": 2, "message": "policy"}
    assert attrs(span)["clrk.egress.deny_reason"] == "policy"
    assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16
    log = logs[0]
    assert (log["eventName"], log["body"], log["severityText"], log["severityNumber"]) == (
        "egress.dial.denied",
        {"stringValue": "egress.dial.denied"},
        "WARN",
        13,
    )
    assert attrs(log)["clrk.egress.deny_reason"] == "policy"
    # The log carries the ids of its span, so the two can be joined.
    assert {(s["traceId"], s["spanId"]) for s in spans} == {
        (lg["traceId"], lg["spanId"]) for lg in logs
    }


def test_the_file_is_otlp_json_with_the_service_name_as_resource(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter("clrk-dialer", path=str(path)) as writer:
        writer.emit(denial(1))
    docs = read_lines(path)
    assert sorted(next(iter(d)) for d in docs) == ["resourceLogs", "resourceSpans"]
    for doc in docs:
        (resource,) = next(iter(doc.values()))
        assert {"key": "service.name", "value": {"stringValue": "clrk-dialer"}} in resource[
            "resource"
        ]["attributes"]


def test_record_times_are_kept(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter("t", path=str(path)) as writer:
        writer.emit(Record("egress.tcp", {"a": 1}, "INFO", False, 1_000, 5_000))
    span, log = sorted(iter_records(str(path)), key=lambda r: r["signal"])[::-1]
    assert (span["signal"], span["time"], span["end_time"], span["status"]) == (
        "span",
        1_000,
        5_000,
        "UNSET",
    )
    assert (log["signal"], log["time"], log["severity"]) == ("log", 5_000, "INFO")


def test_shutdown_is_idempotent_and_later_emits_and_flushes_do_nothing(tmp_path):
    path = tmp_path / "records.jsonl"
    writer = RecordWriter("t", path=str(path))
    writer.emit(denial(1))
    writer.shutdown()
    writer.shutdown()
    writer.emit(denial(2))
    assert writer.flush() is False
    spans, logs = spans_and_logs(path)
    assert (len(spans), len(logs)) == (1, 1)


def test_a_removed_or_rotated_file_is_created_again_for_the_next_record(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter("t", path=str(path)) as writer:
        writer.emit(denial(1))
        path.rename(tmp_path / "records.jsonl.1")
        writer.emit(denial(2))
        second = spans_and_logs(path)[0]
        path.unlink()
        writer.emit(denial(3))
    ports = [
        [attrs(s)["network.peer.port"] for s in spans]
        for spans in (
            spans_and_logs(tmp_path / "records.jsonl.1")[0],
            second,
            spans_and_logs(path)[0],
        )
    ]
    assert ports == [["1"], ["2"], ["3"]]


def test_an_unwritable_destination_never_raises_into_the_caller(tmp_path):
    directory = tmp_path / "gone"
    writer = RecordWriter("t", path=str(directory / "records.jsonl"))
    (directory / "records.jsonl").unlink()
    directory.rmdir()
    writer.emit(denial(1))
    writer.flush()
    writer.shutdown()
    assert not directory.exists()


def test_a_malformed_record_is_dropped_without_raising(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter("t", path=str(path)) as writer:
        writer.emit(Record("bad", {}, "LOUD", False))  # type: ignore[arg-type]
        writer.emit(denial(7))
    names = [r["name"] for r in iter_records(str(path))]
    assert names == ["egress.dial.denied"] * 2  # neither the span nor the log of "bad"


def test_a_writer_needs_somewhere_to_write():
    with pytest.raises(ValueError, match="otlp_endpoint or a path"):
        RecordWriter("t")


def test_an_otlp_endpoint_needs_a_spool_directory_and_a_spool_an_endpoint(tmp_path):
    with pytest.raises(ValueError, match="needs a spool directory"):
        RecordWriter("t", otlp_endpoint="127.0.0.1:4317")
    with pytest.raises(ValueError, match="only for an OTLP endpoint"):
        RecordWriter("t", path=str(tmp_path / "r.jsonl"), spool_dir=str(tmp_path / "spool"))


def test_writers_leave_the_global_providers_alone(tmp_path):
    before = trace.get_tracer_provider()
    with RecordWriter("t", path=str(tmp_path / "r.jsonl")):
        assert trace.get_tracer_provider() is before


def test_two_writers_on_one_file_from_many_threads_never_interleave_lines(tmp_path):
    path = tmp_path / "records.jsonl"
    writers = [RecordWriter(f"w{i}", path=str(path)) for i in range(2)]

    def work(writer):
        for port in range(200):
            writer.emit(denial(port))

    threads = [threading.Thread(target=work, args=(w,)) for w in writers for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in writers:
        w.shutdown()
    spans, logs = spans_and_logs(path)  # json.loads on every line: none is torn
    assert len(spans) == len(logs) == 800


class Collector(
    trace_service_pb2_grpc.TraceServiceServicer, logs_service_pb2_grpc.LogsServiceServicer
):
    """The receiving half of OTLP/gRPC: keeps every request it gets."""

    def __init__(self):
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.logs: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.received = threading.Condition()

    def Export(self, request, context):  # both services name their method Export
        with self.received:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.traces.append(request)
                reply = trace_service_pb2.ExportTraceServiceResponse()
            else:
                self.logs.append(request)
                reply = logs_service_pb2.ExportLogsServiceResponse()
            self.received.notify_all()
        return reply


@contextlib.contextmanager
def serving(servicer: Collector):
    """A real OTLP trace and logs collector on loopback: its endpoint."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


@pytest.fixture
def collector():
    servicer = Collector()
    with serving(servicer) as endpoint:
        yield servicer, endpoint


def test_with_an_endpoint_the_span_and_log_arrive_over_otlp_grpc(collector, tmp_path):
    servicer, endpoint = collector
    writer = RecordWriter("clrk-dialer", otlp_endpoint=endpoint, spool_dir=str(tmp_path / "s"))
    try:
        writer.emit(denial(443))
        assert writer.flush()
    finally:
        writer.shutdown()
    (treq,) = servicer.traces
    (lreq,) = servicer.logs
    span = treq.resource_spans[0].scope_spans[0].spans[0]
    log = lreq.resource_logs[0].scope_logs[0].log_records[0]
    assert span.name == "egress.dial.denied"
    assert span.status.code == 2  # STATUS_CODE_ERROR
    assert {kv.key: kv.value.string_value for kv in span.attributes}[
        "clrk.egress.deny_reason"
    ] == "policy"
    assert log.event_name == "egress.dial.denied"
    assert log.severity_text == "WARN"
    assert {kv.key: kv.value.int_value for kv in log.attributes}["network.peer.port"] == 443
    assert (log.trace_id, log.span_id) == (span.trace_id, span.span_id)


class RefusingLogs(Collector):
    """Takes the traces, refuses the logs for good (INVALID_ARGUMENT)."""

    def Export(self, request, context):
        if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")
        return super().Export(request, context)


def test_records_the_collector_refuses_for_good_count_refused_never_shipped(tmp_path):
    spool = tmp_path / "s"
    with serving(RefusingLogs()) as endpoint:
        writer = RecordWriter("clrk-dialer", otlp_endpoint=endpoint, spool_dir=str(spool))
        try:
            writer.emit(denial(443))
            assert writer.flush()  # dropped for good is delivered as far as the spool goes
            shipper = writer.shipper
            assert shipper is not None and (shipper.shipped, shipper.refused) == (0, 1)
            shipper._sync()
            metrics = (spool / "metrics.prom").read_text()
        finally:
            writer.shutdown()
    assert "clrk_records_refused_total 1\n" in metrics
    assert "clrk_records_shipped_total 0\n" in metrics


def test_a_unix_socket_endpoint_exports_in_plaintext(tmp_path):
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{tmp_path}/otlp.sock")
    server.start()
    try:
        with RecordWriter(
            "clrk-dialer", otlp_endpoint=f"unix://{tmp_path}/otlp.sock", spool_dir=str(tmp_path)
        ) as writer:
            writer.emit(denial(443))
            assert writer.flush()
    finally:
        server.stop(grace=None).wait()
    assert len(servicer.traces) == len(servicer.logs) == 1


def test_an_unreachable_endpoint_never_raises_into_the_caller(unused_tcp_port, tmp_path):
    writer = RecordWriter(
        "t",
        otlp_endpoint=f"http://127.0.0.1:{unused_tcp_port}",
        spool_dir=str(tmp_path),
        export_timeout_s=0.2,
    )
    writer.emit(denial(1))
    assert writer.flush(200) is False
    writer.shutdown()


@pytest.fixture
def unused_tcp_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(servicer: Collector, address: str) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    server.start()
    return server


def received_ports(servicer: Collector) -> tuple[list[int], list[int]]:
    spans = [
        {kv.key: kv.value.int_value for kv in span.attributes}["network.peer.port"]
        for req in servicer.traces
        for rs in req.resource_spans
        for span in rs.scope_spans[0].spans
        if span.name == "egress.dial.denied"
    ]
    logs = [
        {kv.key: kv.value.int_value for kv in lr.attributes}["network.peer.port"]
        for req in servicer.logs
        for rl in req.resource_logs
        for lr in rl.scope_logs[0].log_records
        if lr.event_name == "egress.dial.denied"
    ]
    return spans, logs


EMIT_AND_DIE = """
import os, sys
from clrk_runtime.records_writer import RecordWriter
from tests.records.test_writer import denial
writer = RecordWriter("clrk-dialer", otlp_endpoint=sys.argv[1], spool_dir=sys.argv[2])
for port in range(300):
    writer.emit(denial(port))
print("emitted", flush=True)
sys.stdin.read()  # killed here, before any shutdown
"""


def test_records_of_a_killed_process_wait_for_a_collector_that_was_down_then_arrive_once(
    tmp_path,
):
    import signal
    import subprocess
    import sys

    socket_path = tmp_path / "otlp.sock"  # nothing listens yet: the collector is down
    spool = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-c", EMIT_AND_DIE, f"unix://{socket_path}", str(spool)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "emitted"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    servicer = Collector()
    server = serve(servicer, f"unix:{socket_path}")
    try:
        with RecordWriter(
            "clrk-dialer", otlp_endpoint=f"unix://{socket_path}", spool_dir=str(spool)
        ) as writer:
            writer.emit(denial(300))
            assert writer.flush(20_000)
            spans, logs = received_ports(servicer)
            assert sorted(spans) == sorted(logs) == list(range(301))  # none lost, none twice
            assert len(servicer.traces) < 10  # shipped in batches, not one call per record
        with RecordWriter(
            "clrk-dialer", otlp_endpoint=f"unix://{socket_path}", spool_dir=str(spool)
        ) as writer:
            assert writer.flush(5_000)
        assert len(received_ports(servicer)[0]) == 301  # a restart sends nothing again
    finally:
        server.stop(grace=None).wait()


def test_a_full_spool_says_so_in_a_log_a_metric_and_a_record_and_again_when_it_has_room(
    tmp_path, caplog, unused_tcp_port
):
    spool = tmp_path / "spool"
    address = f"127.0.0.1:{unused_tcp_port}"
    writer = RecordWriter(
        "clrk-dialer", otlp_endpoint=address, spool_dir=str(spool), spool_max_bytes=256 << 10
    )
    try:
        for port in range(800):  # about twice what fits while the collector is down
            writer.emit(denial(port))
        assert writer.spool.dropped > 0
        assert "is full" in caplog.text
        servicer = Collector()
        server = serve(servicer, address)
        try:
            assert writer.flush(30_000)
            writer.emit(denial(10_000))
            assert writer.flush(10_000)
        finally:
            server.stop(grace=None).wait()
        writer.shipper._sync()
        metrics = (spool / "metrics.prom").read_text()
    finally:
        writer.shutdown()
    assert f"clrk_records_spool_dropped_total {writer.spool.dropped}" in metrics
    assert "has room again" in caplog.text
    notes = [
        {kv.key: next(iter(kv.value.ListFields()))[1] for kv in span.attributes}
        for req in servicer.traces
        for rs in req.resource_spans
        for span in rs.scope_spans[0].spans
        if span.name == "clrk.records.spool_full"
    ]
    assert [n["clrk.records.spool.full"] for n in notes] == [True, False]
    assert notes[1]["clrk.records.dropped"] == writer.spool.dropped
    delivered = len(received_ports(servicer)[0])
    assert delivered + writer.spool.dropped == 801  # every record delivered or counted
