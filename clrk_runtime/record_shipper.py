"""Ships the records spool to an OTLP/gRPC collector, from the spool's offset on.

One thread reads batches of frames, sends their concatenated trace requests and then
their log requests as raw bytes over one gRPC channel, and commits the offset only
after the collector accepted both.  An unreachable collector is retried with backoff
for as long as it takes (the spool holds the records meanwhile); a batch the collector
refuses for good (a non-retryable status, OTLP's rule) is dropped and counted.

A second thread syncs the spool to disk once a second.  It must not wait on the first,
which sits in retries, or in calls to a collector that does not answer, for as long as
an outage lasts.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from clrk_runtime.record_spool import Position, Spool

log = logging.getLogger("clrk.records.shipper")

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
BATCH_RECORDS = 512
BATCH_BYTES = 1 << 20
SYNC_INTERVAL = 1.0  # seconds: the most a power loss takes from the spool
BACKOFF = (0.2, 5.0)


def channel_for(endpoint: str) -> grpc.Channel:
    """ "host:port" / "http://..." plaintext, "https://..." TLS, "unix:///path" plaintext."""
    if endpoint.startswith("unix:"):
        return grpc.insecure_channel(endpoint)
    if endpoint.startswith("https://"):
        return grpc.secure_channel(endpoint[len("https://") :], grpc.ssl_channel_credentials())
    return grpc.insecure_channel(endpoint.removeprefix("http://"))


class Shipper:
    def __init__(self, spool: Spool, endpoint: str, timeout_s: float = 5.0) -> None:
        self.spool = spool
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._channel = channel_for(endpoint)
        self._traces = self._channel.unary_unary(
            TRACES, request_serializer=None, response_deserializer=None
        )
        self._logs = self._channel.unary_unary(
            LOGS, request_serializer=None, response_deserializer=None
        )
        self.position = spool.load_offset()
        self.shipped = 0  # records the collector accepted, since start
        self.refused = 0  # records in batches it refused for good
        self.failures = 0  # failed attempts
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="clrk-records-shipper", daemon=True)
        self._syncer = threading.Thread(
            target=self._sync_loop, name="clrk-records-sync", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        self._syncer.start()

    def stop(self, drain_s: float = 2.0) -> None:
        """Ship what is spooled for up to `drain_s`, then stop; the rest waits on disk."""
        self.wait_until_shipped(drain_s)
        self._stopping.set()
        with self.spool.appended:
            self.spool.appended.notify_all()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 1)
        if self._syncer.is_alive():
            self._syncer.join(self.timeout_s + 1)
        self._channel.close()

    def wait_until_shipped(self, timeout_s: float) -> bool:
        """True once everything appended so far is delivered."""
        deadline = time.monotonic() + timeout_s
        with self._progress:
            while not self.spool.at_end(self.position):
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._progress.wait(min(left, 0.05))
        return True

    # --- the thread ------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self._stopping.wait(SYNC_INTERVAL):
            self._sync()
        self._sync()  # the last metrics; the spool's close syncs the segment itself

    def _run(self) -> None:
        backoff = BACKOFF[0]
        while not self._stopping.is_set():
            batch = self.spool.read(self.position, BATCH_RECORDS, BATCH_BYTES)
            if batch.records == 0:
                if batch.end != self.position:
                    self._commit(batch.end)  # damaged bytes skipped
                    continue
                with self.spool.appended:
                    if self.spool.at_end(self.position) and not self._stopping.is_set():
                        self.spool.appended.wait(SYNC_INTERVAL)
                continue
            if self._deliver(batch.traces, batch.logs, batch.records):
                backoff = BACKOFF[0]
                self._commit(batch.end)
            else:
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF[1])

    def _sync(self) -> None:
        try:
            self.spool.sync()
            self.spool.write_metrics(self.shipped, self.refused, self.failures)
        except OSError as exc:
            log.warning("records spool %s: %s", self.spool.dir, exc)

    def _commit(self, end: Position) -> None:
        try:
            self.spool.commit(end)
        except OSError as exc:  # the offset stays behind: a restart sends these again
            log.warning("records spool %s: cannot store the offset: %s", self.spool.dir, exc)
        with self._progress:
            self.position = end
            self._progress.notify_all()

    def _deliver(self, traces: bytes, logs: bytes, records: int) -> bool:
        """Both requests accepted, or refused for good (then dropped): True.  Traces
        already accepted are not sent again while the logs are retried.  Records refused
        count as refused, never as shipped."""
        refused = False
        for name, call, request, response_type in (
            ("traces", self._traces, traces, ExportTraceServiceResponse),
            ("logs", self._logs, logs, ExportLogsServiceResponse),
        ):
            while True:
                try:
                    reply = response_type.FromString(call(request, timeout=self.timeout_s))
                except grpc.RpcError as exc:
                    code = exc.code() if hasattr(exc, "code") else None
                    self.failures += 1
                    if code in RETRYABLE or code is None:
                        if self.failures == 1 or self.failures % 50 == 0:
                            log.warning(
                                "records collector %s unreachable (%s): %d records wait; retrying",
                                self.endpoint, code, records,
                            )  # fmt: skip
                        if self._stopping.wait(BACKOFF[0]):
                            return False
                        if name == "traces":
                            return False  # nothing accepted yet: re-read and retry all
                        continue  # traces are in: retry the logs alone
                    log.error(
                        "records collector %s refused %d %s for good (%s): dropped",
                        self.endpoint, records, name, code,
                    )  # fmt: skip
                    refused = True
                    break
                rejected = (
                    reply.partial_success.rejected_spans
                    if name == "traces"
                    else (reply.partial_success.rejected_log_records)
                )
                if rejected:
                    log.error(
                        "records collector %s rejected %d of %d %s: %s",
                        self.endpoint, rejected, records, name, reply.partial_success.error_message,
                    )  # fmt: skip
                break
        if refused:
            self.refused += records
        else:
            self.shipped += records
        return True
