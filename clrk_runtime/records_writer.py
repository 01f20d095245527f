"""RecordWriter: each Record becomes one span and one log record (SPEC 8).

Spans and logs go through private OpenTelemetry SDK providers (never the global ones:
several writers may live in one process) with batch processors, so `emit` only queues
and the export happens on the SDK's worker threads.  Destinations:

- `otlp_endpoint` ("host:port" or "http://host:port" = plaintext, "https://..." = TLS,
  "unix:///path" = a collector's Unix socket, plaintext): OTLP/gRPC exporters for traces
  and logs.
- `path`: OTLP/JSON lines appended to a local file, one `{"resourceSpans": [...]}` or
  `{"resourceLogs": [...]}` object per line (the format of the Collector's file
  exporter), which `clrk records` and a Collector's file receiver read.

Both may be given.  The log record's event name and body are the record name.
Nothing here raises into a caller after construction: a failing export is logged by
the SDK and the batch is dropped.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.span import Span

from clrk.records.otlp_json import to_otlp_line
from clrk.records.schema import DENY_REASON, Record

log = logging.getLogger(__name__)

SCOPE = "clrk.records"
_SEVERITY = {"WARN": SeverityNumber.WARN, "INFO": SeverityNumber.INFO}


class JsonLinesFile:
    """Appends whole lines to `path`; safe across threads and processes.

    The file is opened per batch (batches are at most a few per second), so a rotated or
    removed file is simply recreated.  Each line goes out in one O_APPEND write under an
    exclusive flock, so concurrent writers never interleave inside a line.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = threading.Lock()
        self._append(b"")  # fail at construction, not on the worker thread

    def _append(self, data: bytes) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)  # also releases the flock

    def write_line(self, line: bytes) -> bool:
        try:
            self._append(line)
            return True
        except OSError as exc:
            log.warning("cannot append records to %s: %s", self.path, exc)
            return False


class FileSpanExporter(SpanExporter):
    def __init__(self, sink: JsonLinesFile) -> None:
        self._sink = sink

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self._sink.write_line(to_otlp_line(encode_spans(spans)))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class FileLogExporter(LogRecordExporter):
    def __init__(self, sink: JsonLinesFile) -> None:
        self._sink = sink

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        ok = self._sink.write_line(to_otlp_line(encode_logs(batch)))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _grpc_exporters(endpoint: str, timeout_s: float) -> tuple[SpanExporter, LogRecordExporter]:
    # Imported here: grpc channels are only needed when an endpoint is configured.
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    insecure = None  # the exporters decide by the scheme: TLS unless http://
    if endpoint.startswith("unix:"):
        insecure = True  # a collector's Unix socket (unix:///path): local, plaintext
    elif "://" not in endpoint:
        endpoint = "http://" + endpoint  # a bare host:port is a local, plaintext collector
    return (
        OTLPSpanExporter(endpoint=endpoint, insecure=insecure, timeout=timeout_s),
        OTLPLogExporter(endpoint=endpoint, insecure=insecure, timeout=timeout_s),
    )


def _shutdown(tracer_provider: TracerProvider, logger_provider: LoggerProvider) -> None:
    for provider in (tracer_provider, logger_provider):
        try:
            provider.shutdown()
        except Exception:  # never raise out of shutdown or interpreter exit
            log.exception("records: shutdown failed")


class RecordWriter:
    def __init__(
        self,
        service_name: str,
        *,
        otlp_endpoint: str | None = None,
        path: str | None = None,
        schedule_delay_ms: float = 150,
        export_timeout_s: float = 5.0,
        max_queue_size: int = 8192,
    ) -> None:
        if otlp_endpoint is None and path is None:
            raise ValueError("RecordWriter needs an otlp_endpoint or a path")
        resource = Resource.create({"service.name": service_name})
        self._tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        exporters: list[tuple[SpanExporter, LogRecordExporter]] = []
        if path is not None:
            sink = JsonLinesFile(path)
            exporters.append((FileSpanExporter(sink), FileLogExporter(sink)))
        if otlp_endpoint is not None:
            exporters.append(_grpc_exporters(otlp_endpoint, export_timeout_s))
        for span_exporter, log_exporter in exporters:
            self._tracer_provider.add_span_processor(
                BatchSpanProcessor(
                    span_exporter,
                    max_queue_size=max_queue_size,
                    schedule_delay_millis=schedule_delay_ms,
                )
            )
            self._logger_provider.add_log_record_processor(
                BatchLogRecordProcessor(
                    log_exporter,
                    schedule_delay_millis=schedule_delay_ms,
                    max_queue_size=max_queue_size,
                )
            )
        self._tracer = self._tracer_provider.get_tracer(SCOPE)
        self._logger = self._logger_provider.get_logger(SCOPE)
        # Runs once: on shutdown(), when the writer is collected, or at interpreter exit,
        # so queued records are written even if the owner forgets to shut down.
        self._finalizer = weakref.finalize(
            self, _shutdown, self._tracer_provider, self._logger_provider
        )

    def emit(self, record: Record) -> None:
        """Queue one span and one log record.  Never raises."""
        if not self._finalizer.alive:
            return
        try:
            self._emit(record)
        except Exception:
            log.exception("records: cannot emit %s", record.name)

    def _emit(self, record: Record) -> None:
        severity = _SEVERITY[record.severity]  # before the span: a bad record emits nothing
        start = record.start_ns if record.start_ns is not None else time.time_ns()
        end = record.end_ns if record.end_ns is not None else start
        attributes = dict(record.attributes)
        span: Span = self._tracer.start_span(
            record.name, kind=SpanKind.INTERNAL, attributes=attributes, start_time=start
        )
        if record.error:
            span.set_status(Status(StatusCode.ERROR, str(attributes.get(DENY_REASON, ""))))
        span.end(end_time=end)
        self._logger.emit(
            timestamp=end,
            observed_timestamp=time.time_ns(),
            context=set_span_in_context(span),  # the log carries the span's ids
            severity_number=severity,
            severity_text=record.severity,
            body=record.name,
            attributes=attributes,
            event_name=record.name,
        )

    def flush(self, timeout_ms: int = 10_000) -> bool:
        """Export everything emitted so far before returning; False if that failed."""
        if not self._finalizer.alive:
            return False
        try:
            spans = self._tracer_provider.force_flush(timeout_ms)
            logs = self._logger_provider.force_flush(timeout_ms)
            return bool(spans and logs)
        except Exception:
            log.exception("records: flush failed")
            return False

    def shutdown(self) -> None:
        """Flush and stop; later calls (and emits) do nothing."""
        self._finalizer()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
