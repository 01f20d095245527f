"""The gRPC shell: ext_proc (`envoy.service.ext_proc.v3.ExternalProcessor/Process`) and
the access-log service (`envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`)
on one grpc.aio server.  Decisions live in `exchange`, `deny`, `tcp_log` and
`http_log`; this module parses bytes, answers and hands records to the writer.  Bad
bytes end one stream (Envoy then fails that request closed), never the server.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy_data_plane.envoy.config.core.v3 import HeaderValue, HeaderValueOption
from envoy_data_plane.envoy.service.accesslog.v3 import StreamAccessLogsMessage
from envoy_data_plane.envoy.service.ext_proc.v3 import (
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    HeadersResponse,
    HttpHeaders,
    ImmediateResponse,
    ProcessingRequest,
    ProcessingResponse,
    TrailersResponse,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus

from clrk.records.schema import Record
from clrk.wire import ChainFacts
from clrk_extproc.access_log_wire import scan
from clrk_extproc.deny import DenyAnswer
from clrk_extproc.exchange import Exchange
from clrk_extproc.http_log import entry_record, facts_record
from clrk_extproc.tcp_log import end_record, is_end, tcp_record
from clrk_runtime.logs import fields

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
ACCESS_LOG_SERVICE = "envoy.service.accesslog.v3.AccessLogService"

log = logging.getLogger("clrk_extproc")

Emit = Callable[[Record], None]


def header_pairs(headers: HttpHeaders | None) -> list[tuple[str, str]]:
    """(name, value) pairs; Envoy sends values in raw_value (bytes), older ones in value."""
    if headers is None or headers.headers is None:
        return []
    out = []
    for h in headers.headers.headers:
        value = h.raw_value.decode("utf-8", errors="replace") if h.raw_value else h.value
        out.append((h.key, value))
    return out


def immediate(answer: DenyAnswer) -> ProcessingResponse:
    set_headers = [
        HeaderValueOption(header=HeaderValue(key=k, raw_value=v.encode()))
        for k, v in answer.headers
    ]
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=answer.status),  # any 400..599, not only the enum's names
            headers=HeaderMutation(set_headers=set_headers),
            body=answer.body,
            details="clrk_deny_policy",
        )
    )


def _continue(kind: str) -> ProcessingResponse:
    if kind in ("request_headers", "response_headers"):
        return ProcessingResponse(**{kind: HeadersResponse(response=CommonResponse())})
    if kind in ("request_body", "response_body"):
        return ProcessingResponse(**{kind: BodyResponse(response=CommonResponse())})
    return ProcessingResponse(**{kind: TrailersResponse()})


PHASES = (
    "request_headers",
    "response_headers",
    "request_body",
    "response_body",
    "request_trailers",
    "response_trailers",
)


class ExtProcService:
    def __init__(self, emit: Emit) -> None:
        self.emit = emit

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        ext_proc = grpc.method_handlers_generic_handler(
            EXT_PROC_SERVICE,
            {
                "Process": grpc.stream_stream_rpc_method_handler(
                    self.process, request_deserializer=None, response_serializer=bytes
                )
            },
        )
        access_log = grpc.method_handlers_generic_handler(
            ACCESS_LOG_SERVICE,
            {
                "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                    self.access_logs, request_deserializer=None, response_serializer=None
                )
            },
        )
        return [ext_proc, access_log]

    def _emit(self, record: Record | None) -> None:
        if record is not None:
            self.emit(record)

    def _record(self, build: Callable[[Any, str], Record | None], entry, gateway: str) -> None:
        """The record `build` makes of one access-log entry; an entry it cannot read is
        logged and skipped, never the end of the stream."""
        try:
            self._emit(build(entry, gateway))
        except (ValueError, TypeError, OverflowError) as exc:
            log.warning("accesslog.bad_entry", extra=fields(error=str(exc)))

    async def process(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            facts = ChainFacts.from_metadata(context.invocation_metadata() or ())
        except ValueError as exc:
            log.warning("extproc.bad_metadata", extra=fields(error=str(exc)))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no clrk chain metadata")
        exchange = Exchange()
        async for raw in requests:
            try:
                msg = ProcessingRequest.parse(raw)
            except Exception as exc:  # bad bytes: end this stream, Envoy fails closed
                log.warning("extproc.bad_request", extra=fields(error=str(exc)))
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad ProcessingRequest")
            phase = next((p for p in PHASES if getattr(msg, p) is not None), None)
            if phase is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty ProcessingRequest")
            if phase == "request_headers":
                answer, record = exchange.request(header_pairs(msg.request_headers), facts)
                self._emit(record)
                if answer is not None:
                    yield bytes(immediate(answer))
                    return
            elif phase == "response_headers":
                self._emit(exchange.response(header_pairs(msg.response_headers)))
            yield bytes(_continue(phase))
        # The client went away before any response: the request still gets its record.
        self._emit(exchange.response([]))

    async def access_logs(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        # Envoy counts an entry flushed once it is on a stream: a stream that breaks loses
        # what was in flight without a trace on its side (as does one whose connect fails,
        # before it ever gets here), so say here how far each stream got.
        tally = [0, 0]  # messages; HTTP and connection-end entries
        ended = "failed"
        try:
            await self._access_logs(requests, context, tally)
            ended = "ended"  # no more messages: Envoy went, or reset the stream
        except grpc.aio.AbortError:
            ended = "aborted"  # bad bytes
            raise
        except asyncio.CancelledError:
            ended = "stopped"  # this server stops
            raise
        finally:
            log.info(
                "accesslog.stream_end",
                extra=fields(how=ended, messages=tally[0], entries=tally[1]),
            )
        return b""  # StreamAccessLogsResponse has no fields

    async def _access_logs(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, tally: list[int]
    ) -> None:
        gateway = ""
        async for raw in requests:
            tally[0] += 1
            # A message is a batch of up to some 256 KiB (hundreds of entries), read and
            # recorded in a thread: on the loop it would hold up the ext_proc answers
            # for tens of milliseconds, in a thread no longer than a switch interval.
            read = await asyncio.to_thread(self._message, raw, gateway)
            if read is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad StreamAccessLogsMessage")
            gateway, entries = read
            tally[1] += entries

    def _message(self, raw: bytes, gateway: str) -> tuple[str, int] | None:
        """Record one access-log message's entries; the gateway it names (else
        `gateway`), and how many entries it had; None when it cannot be parsed."""
        # Envoy's entries straight off the wire; anything else (what the reader does
        # not expect, debugging) the full parse reads.
        scanned = None if log.isEnabledFor(logging.DEBUG) else scan(raw)
        if scanned is not None:
            if scanned.node_id is not None:
                gateway = scanned.node_id
            for http_facts in scanned.http:
                self._record(facts_record, http_facts, gateway)
            for facts in scanned.ends:
                self._record(end_record, facts, gateway)
            return gateway, len(scanned.http) + len(scanned.ends)
        try:
            msg = StreamAccessLogsMessage.parse(raw)
        except Exception as exc:
            log.warning("accesslog.bad_message", extra=fields(error=str(exc)))
            return None
        if msg.identifier is not None and msg.identifier.node is not None:
            gateway = msg.identifier.node.id
        count = 0
        for http_entry in msg.http_logs.log_entry if msg.http_logs is not None else []:
            count += 1
            self._record(entry_record, http_entry, gateway)
        entries = msg.tcp_logs.log_entry if msg.tcp_logs is not None else []
        for entry in entries:
            if log.isEnabledFor(logging.DEBUG):
                common = entry.common_properties
                kind = str(common.access_log_type) if common is not None else None
                log.debug("accesslog.entry", extra=fields(gateway=gateway, type=kind))
            if not is_end(entry):
                continue  # the connected entry: the end entry carries everything
            count += 1
            self._record(tcp_record, entry, gateway)
        return gateway, count


async def serve(listen: str, emit: Emit, stop: asyncio.Event) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(ExtProcService(emit).handlers())
    try:
        bound = server.add_insecure_port(listen)
    except RuntimeError as exc:  # grpcio reports a failed bind this way
        raise OSError(f"cannot listen on {listen}") from exc
    if bound == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    log.info("extproc.listening", extra=fields(address=listen))
    await stop.wait()
    await server.stop(grace=1.0)
    log.info("extproc.stopped")


async def main(listen: str, emit: Emit) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(listen, emit, stop)
