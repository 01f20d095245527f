"""The gRPC shell over real sockets on loopback: a grpc.aio client speaks the Envoy
protocols (ext_proc Process, AccessLogService StreamAccessLogs) as Envoy would."""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
import pytest
from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue, Node
from envoy_data_plane.envoy.data.accesslog.v3 import (
    AccessLogCommon,
    AccessLogType,
    HttpAccessLogEntry,
    HttpRequestProperties,
    HttpResponseProperties,
)
from envoy_data_plane.envoy.data.accesslog.v3 import TcpAccessLogEntry as Entry
from envoy_data_plane.envoy.service.accesslog.v3 import (
    StreamAccessLogsMessage,
    StreamAccessLogsMessageHttpAccessLogEntries,
    StreamAccessLogsMessageIdentifier,
    StreamAccessLogsMessageTcpAccessLogEntries,
)
from envoy_data_plane.envoy.service.ext_proc.v3 import (
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from clrk.wire import (
    CHAIN_ROUTE_TAG,
    DENY_REASON_HEADER,
    MISUSE_ROUTE_PREFIX,
    ChainFacts,
    TlvType,
    tlv_tag,
)
from clrk_extproc.server import ACCESS_LOG_SERVICE, EXT_PROC_SERVICE, ExtProcService
from clrk_xds.translate_l7 import ACCESS_LOG_BUFFER

PROCESS = f"/{EXT_PROC_SERVICE}/Process"
ACCESS_LOGS = f"/{ACCESS_LOG_SERVICE}/StreamAccessLogs"
TRUNCATED = b"\x12\x03\x0a\x09x"  # a field that claims more bytes than there are


def headers(pairs) -> HttpHeaders:
    values = [HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    return HttpHeaders(headers=HeaderMap(headers=values), end_of_stream=True)


REQUEST = ProcessingRequest(
    request_headers=headers([(":method", "GET"), (":authority", "a.test"), (":path", "/x")])
)
RESPONSE = ProcessingRequest(response_headers=headers([(":status", "200")]))


async def _with_server(body, emit=None):
    records = []
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(ExtProcService(emit or records.append).handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await body(channel), records
    finally:
        await server.stop(None)


def run(body):
    return asyncio.run(_with_server(body))


async def process(channel, messages, metadata) -> list[ProcessingResponse] | grpc.StatusCode:
    call = channel.stream_stream(PROCESS, request_serializer=bytes, response_deserializer=None)
    stream = call(iter(messages), metadata=metadata)
    try:
        return [ProcessingResponse.parse(raw) async for raw in stream]
    except grpc.aio.AioRpcError as err:
        return err.code()


def test_deny_chain_gets_an_immediate_response() -> None:
    facts = ChainFacts("default/gw", "web", "default/p", 0, "default/no", 451, "gone ✓")

    async def body(channel):
        return await process(channel, [REQUEST], facts.metadata())

    (answer,), records = run(body)
    immediate = answer.immediate_response
    assert immediate is not None
    assert int(immediate.status.code) == 451
    assert immediate.body == "gone ✓".encode()
    got = {h.header.key: h.header.raw_value for h in immediate.headers.set_headers}
    assert got[DENY_REASON_HEADER] == b"deny_policy"
    (record,) = records
    assert record.attributes["clrk.egress.deny_reason"] == "deny_policy"


def test_allowed_request_continues_and_records_once() -> None:
    facts = ChainFacts("default/gw", "web", "default/r", 0)

    async def body(channel):
        return await process(channel, [REQUEST, RESPONSE], facts.metadata())

    answers, records = run(body)
    assert [a.request_headers is not None for a in answers] == [True, False]
    assert answers[1].response_headers is not None
    (record,) = records
    assert record.attributes["http.response.status_code"] == 200
    assert record.attributes["url.path"] == "/x"


def test_missing_metadata_or_bad_bytes_end_the_stream_not_the_server() -> None:
    facts = ChainFacts("default/gw", "web")

    async def body(channel):
        no_metadata = await process(channel, [REQUEST], ())
        garbage = await process(channel, [TRUNCATED], facts.metadata())
        empty = await process(channel, [ProcessingRequest()], facts.metadata())
        still = await process(channel, [REQUEST, RESPONSE], facts.metadata())
        return no_metadata, garbage, empty, still

    (no_metadata, garbage, empty, still), records = run(body)
    assert no_metadata == garbage == empty == grpc.StatusCode.INVALID_ARGUMENT
    assert len(still) == 2 and len(records) == 1


def _bytes(message):
    return message if isinstance(message, bytes) else bytes(message)


def test_access_log_stream_end_entries_become_records() -> None:
    def tcp(kind) -> Entry:
        return Entry(
            common_properties=AccessLogCommon(access_log_type=kind, custom_tags={"route": "a/b"})
        )

    first = StreamAccessLogsMessage(
        identifier=StreamAccessLogsMessageIdentifier(node=Node(id="team/gw"), log_name="clrk.tcp"),
        tcp_logs=StreamAccessLogsMessageTcpAccessLogEntries(
            log_entry=[tcp(AccessLogType.TcpUpstreamConnected), tcp(AccessLogType.TcpConnectionEnd)]
        ),
    )
    second = StreamAccessLogsMessage(
        tcp_logs=StreamAccessLogsMessageTcpAccessLogEntries(
            log_entry=[tcp(AccessLogType.TcpConnectionEnd)]
        )
    )

    async def body(channel):
        call = channel.stream_unary(ACCESS_LOGS, request_serializer=_bytes)
        ok = await call(iter([first, second]))
        try:
            await call(iter([TRUNCATED]))
            bad = None
        except grpc.aio.AioRpcError as err:
            bad = err.code()
        return ok, bad

    (ok, bad), records = run(body)
    assert ok == b"" and bad == grpc.StatusCode.INVALID_ARGUMENT
    assert [r.attributes["clrk.egress.gateway"] for r in records] == ["team/gw", "team/gw"]


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])  # off the wire; parsed
def test_access_log_stream_http_entries_make_one_record_each_of_theirs(level, caplog) -> None:
    caplog.set_level(level, logger="clrk_extproc")

    def http(route_name: str = "", **tags: str) -> HttpAccessLogEntry:
        return HttpAccessLogEntry(
            common_properties=AccessLogCommon(route_name=route_name, custom_tags=tags),
            request=HttpRequestProperties(authority="a.test", path="/x"),
            response=HttpResponseProperties(response_code=200),
        )

    deny = tlv_tag(TlvType.DENY_POLICY)
    entries = [
        http(**{CHAIN_ROUTE_TAG: "team/a", deny: "-"}),  # allowed: its record
        http(**{CHAIN_ROUTE_TAG: "team/a", deny: "team/no"}),  # ext_proc recorded it
        http(MISUSE_ROUTE_PREFIX + "team/key"),  # the tripwire: its deny record
        http(),  # a chain with ext_proc: recorded there
        HttpAccessLogEntry(),  # no common properties
    ]
    message = StreamAccessLogsMessage(
        identifier=StreamAccessLogsMessageIdentifier(node=Node(id="team/gw")),
        http_logs=StreamAccessLogsMessageHttpAccessLogEntries(log_entry=entries),
    )

    async def body(channel):
        return await channel.stream_unary(ACCESS_LOGS, request_serializer=_bytes)(iter([message]))

    ok, records = run(body)
    assert ok == b""
    assert [(r.attributes.get("clrk.egress.route"), r.severity) for r in records] == [
        ("team/a", "INFO"),
        (None, "WARN"),
    ]
    assert all(r.attributes["clrk.egress.gateway"] == "team/gw" for r in records)


def test_a_batch_as_large_as_envoy_sends_is_taken_whole() -> None:
    """Envoy sends up to ACCESS_LOG_BUFFER bytes of entries in one message, with the entry
    that passed it: a path as long as its request headers may be (60 KiB)."""
    route = {CHAIN_ROUTE_TAG: "team/a", tlv_tag(TlvType.DENY_POLICY): "-"}

    def entry(path: str) -> HttpAccessLogEntry:
        return HttpAccessLogEntry(
            common_properties=AccessLogCommon(custom_tags=route),
            request=HttpRequestProperties(authority="a.test", path=path),
        )

    entries = [entry("/" + "x" * 1000) for _ in range(ACCESS_LOG_BUFFER // 1000)]
    entries.append(entry("/" + "y" * 60 * 1024))
    message = StreamAccessLogsMessage(
        http_logs=StreamAccessLogsMessageHttpAccessLogEntries(log_entry=entries)
    )
    assert len(bytes(message)) > ACCESS_LOG_BUFFER + 60 * 1024

    async def body(channel):
        return await channel.stream_unary(ACCESS_LOGS, request_serializer=_bytes)(iter([message]))

    ok, records = run(body)
    assert ok == b"" and len(records) == len(entries)


def test_ext_proc_answers_while_an_access_log_batch_is_being_recorded() -> None:
    """A batch holds hundreds of entries: recording it must not hold up the deny answers
    (here it cannot end before the answer is in)."""
    started, answered, records = threading.Event(), threading.Event(), []
    batch_ended_first = []

    def emit(record) -> None:
        if threading.current_thread() is not threading.main_thread():  # the batch's
            started.set()
            batch_ended_first.append(not answered.wait(5))
        records.append(record)

    route = {CHAIN_ROUTE_TAG: "team/a", tlv_tag(TlvType.DENY_POLICY): "-"}
    entry = HttpAccessLogEntry(common_properties=AccessLogCommon(custom_tags=route))
    message = StreamAccessLogsMessage(
        http_logs=StreamAccessLogsMessageHttpAccessLogEntries(log_entry=[entry])
    )
    facts = ChainFacts("default/gw", "web", "default/p", 0, "default/no", 451, "no")

    async def body(channel):
        logs = asyncio.ensure_future(
            channel.stream_unary(ACCESS_LOGS, request_serializer=_bytes)(iter([message]))
        )
        assert await asyncio.to_thread(started.wait, 5)
        (answer,) = await process(channel, [REQUEST], facts.metadata())
        answered.set()
        return answer, await logs

    (answer, ok), _ = asyncio.run(_with_server(body, emit))
    assert int(answer.immediate_response.status.code) == 451 and ok == b""
    assert batch_ended_first == [False] and len(records) == 2


def test_the_deny_record_is_in_the_records_file_when_envoy_gets_the_answer(tmp_path) -> None:
    from clrk.records.query import iter_records
    from clrk_runtime.records_writer import RecordWriter

    facts = ChainFacts("default/gw", "web", "default/p", 0, "default/no", 403, "no")
    path = tmp_path / "records.jsonl"

    async def main():
        with RecordWriter("clrk-extproc", path=str(path)) as writer:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers(ExtProcService(writer.emit).handlers())
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    call = channel.stream_stream(
                        PROCESS, request_serializer=bytes, response_deserializer=None
                    )
                    async for _answer in call(iter([REQUEST]), metadata=facts.metadata()):
                        # The 403 is here: its record must already be on disk.
                        return [r["name"] for r in iter_records(str(path))]
            finally:
                await server.stop(None)

    assert asyncio.run(main()) == ["egress.http", "egress.http"]  # its span and its log


def test_each_access_log_stream_end_is_logged_with_how_it_ended_and_what_it_carried(
    caplog,
) -> None:
    """Envoy counts entries flushed once they are on its stream; when a stream breaks, this
    line is what tells how many arrived on it."""
    caplog.set_level(logging.INFO, logger="clrk_extproc")
    end = Entry(common_properties=AccessLogCommon(access_log_type=AccessLogType.TcpConnectionEnd))
    message = StreamAccessLogsMessage(
        tcp_logs=StreamAccessLogsMessageTcpAccessLogEntries(log_entry=[end, end])
    )

    def ends() -> list[tuple]:
        lines = [r for r in caplog.records if r.msg == "accesslog.stream_end"]
        return [(r.fields["how"], r.fields["messages"], r.fields["entries"]) for r in lines]

    async def body(channel):
        call = channel.stream_unary(ACCESS_LOGS, request_serializer=_bytes)
        await call(iter([message, message]))
        with pytest.raises(grpc.aio.AioRpcError):
            await call(iter([message, TRUNCATED]))

        async def held_open():
            yield message
            await asyncio.sleep(60)

        broken = call(held_open())
        await asyncio.sleep(0.3)  # the server reads the message
        broken.cancel()  # a reset, as when Envoy drops the stream
        for _ in range(300):
            if len(ends()) == 3:
                break
            await asyncio.sleep(0.01)

    run(body)
    assert ends() == [("ended", 2, 4), ("aborted", 2, 2), ("ended", 1, 2)]
