"""TCP and HTTP access-log messages read off the wire, fuzzed against envoy_data_plane's
full parse (the reference: whatever the reader answers must be what the full parse
gives, and so must the records made from it)."""

from __future__ import annotations

import datetime

import pytest
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    Node,
    Pipe,
    RequestMethod,
    SocketAddress,
)
from envoy_data_plane.envoy.data.accesslog.v3 import (
    AccessLogCommon,
    AccessLogType,
    ConnectionProperties,
    HttpAccessLogEntry,
    HttpRequestProperties,
    HttpResponseProperties,
    TcpAccessLogEntry,
    TlsProperties,
)
from envoy_data_plane.envoy.service.accesslog.v3 import (
    StreamAccessLogsMessage,
    StreamAccessLogsMessageHttpAccessLogEntries,
    StreamAccessLogsMessageIdentifier,
    StreamAccessLogsMessageTcpAccessLogEntries,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk.wire import (
    CHAIN_ROUTE_TAG,
    CHAIN_RULE_TAG,
    CHAIN_TAG,
    METHOD_TAG,
    MISUSE_ROUTE_PREFIX,
    TlvType,
    tlv_tag,
)
from clrk_extproc.access_log_wire import END, Scanned, scan
from clrk_extproc.http_log import entry_facts, entry_record, facts_record
from clrk_extproc.tcp_log import end_facts

texts = st.text(max_size=12)
ports = st.integers(min_value=0, max_value=65535)
addresses = st.none() | st.builds(
    lambda ip, port: Address(socket_address=SocketAddress(address=ip, port_value=port)),
    texts,
    ports,
)
moments = st.none() | st.datetimes(
    min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)
).map(lambda d: d.replace(tzinfo=datetime.UTC))
durations = st.none() | st.timedeltas(
    min_value=datetime.timedelta(0), max_value=datetime.timedelta(days=30)
)
kinds = st.sampled_from(list(AccessLogType))
chain_names = st.sampled_from(
    ["route/team/db/rule/0", "default/allow-all", "deny/team/db/rule/0", "blocked_address", "-"]
)
commons = st.none() | st.builds(
    AccessLogCommon,
    access_log_type=kinds,
    downstream_remote_address=addresses,
    downstream_local_address=addresses,
    upstream_remote_address=addresses,
    start_time=moments,
    duration=durations,
    # The chain tag decides whether a listener's entry counts: often a chain name.
    custom_tags=st.dictionaries(texts | st.just(CHAIN_TAG), texts | chain_names, max_size=8),
    upstream_cluster=texts,
    sample_rate=st.floats(allow_nan=False),
    downstream_wire_bytes_sent=st.integers(min_value=0, max_value=2**64 - 1),
)
connections = st.none() | st.builds(
    ConnectionProperties,
    received_bytes=st.integers(min_value=0, max_value=2**64 - 1),
    sent_bytes=st.integers(min_value=0, max_value=2**64 - 1),
)
entries = st.builds(TcpAccessLogEntry, common_properties=commons, connection_properties=connections)
identifiers = st.none() | st.builds(
    StreamAccessLogsMessageIdentifier,
    node=st.none() | st.builds(Node, id=texts, cluster=texts),
    log_name=texts,
)
tcp_logs = st.builds(
    StreamAccessLogsMessageTcpAccessLogEntries, log_entry=st.lists(entries, max_size=4)
)
# HTTP entries: the tags and route names a record reads often, any other value too.
http_tag_names = st.sampled_from(
    [CHAIN_ROUTE_TAG, CHAIN_RULE_TAG, METHOD_TAG, tlv_tag(TlvType.DENY_POLICY),
     tlv_tag(TlvType.AGENT_NAME), tlv_tag(TlvType.AUTHORITY), tlv_tag(TlvType.ROUTE)]
)  # fmt: skip
route_names = texts | st.sampled_from(
    [MISUSE_ROUTE_PREFIX + "team/key", "injected/team/key", "injected/", "route/team/api"]
)
http_commons = st.builds(
    AccessLogCommon,
    access_log_type=kinds,
    downstream_remote_address=addresses,
    downstream_direct_remote_address=st.none() | st.just(Address(pipe=Pipe(path="/x.sock"))),
    tls_properties=st.none() | st.builds(TlsProperties, tls_sni_hostname=texts),
    start_time=moments,
    time_to_first_downstream_tx_byte=durations,
    duration=durations,
    route_name=route_names,
    custom_tags=st.dictionaries(texts | http_tag_names, texts | st.just("-"), max_size=10),
    upstream_cluster=texts,
    stream_id=texts,
)
requests = st.builds(
    HttpRequestProperties,
    request_method=st.sampled_from(list(RequestMethod)) | st.integers(-(2**31), 2**31 - 1),
    authority=texts,
    path=texts,
    scheme=texts,
    request_headers_bytes=st.integers(min_value=0, max_value=2**64 - 1),
)
responses = st.builds(
    HttpResponseProperties,
    response_code=st.none() | st.integers(min_value=0, max_value=2**32 - 1),
    response_code_details=texts,
)
http_entries = st.builds(
    HttpAccessLogEntry,
    common_properties=st.none() | http_commons,
    request=st.none() | requests,
    response=st.none() | responses,
)
http_logs = st.builds(
    StreamAccessLogsMessageHttpAccessLogEntries, log_entry=st.lists(http_entries, max_size=4)
)
messages = st.one_of(
    st.builds(StreamAccessLogsMessage, identifier=identifiers, tcp_logs=st.none() | tcp_logs),
    st.builds(StreamAccessLogsMessage, identifier=identifiers, http_logs=http_logs),
)


def reference(raw: bytes) -> Scanned:
    msg = StreamAccessLogsMessage.parse(raw)
    node = None
    if msg.identifier is not None and msg.identifier.node is not None:
        node = msg.identifier.node.id
    got = msg.tcp_logs.log_entry if msg.tcp_logs is not None else []
    ends = [facts for entry in got if (facts := end_facts(entry)) is not None]
    http = msg.http_logs.log_entry if msg.http_logs is not None else []
    return Scanned(node, ends, len(got), [entry_facts(entry) for entry in http])


def records(raw: bytes) -> list:
    """The HTTP records of a message the full way, or None where it cannot make them."""
    msg = StreamAccessLogsMessage.parse(raw)
    http = msg.http_logs.log_entry if msg.http_logs is not None else []
    try:
        return [entry_record(entry, "team/gw") for entry in http]
    except (ValueError, TypeError, OverflowError):  # the server logs such an entry
        return None


def scanned_records(scanned: Scanned) -> list:
    try:
        return [facts_record(facts, "team/gw") for facts in scanned.http]
    except (ValueError, TypeError, OverflowError):
        return None


@settings(max_examples=300, deadline=None)
@given(messages)
def test_what_envoy_could_send_reads_as_the_full_parse_reads_it(msg) -> None:
    raw = bytes(msg)
    assert scan(raw) == reference(raw)
    assert scanned_records(scan(raw)) == records(raw)


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_cut_or_altered_bytes_are_read_as_the_full_parse_reads_them_or_left_to_it(
    msg, data
) -> None:
    raw = bytearray(bytes(msg))
    if raw:
        cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        if data.draw(st.booleans()):
            raw = raw[:cut]
        else:
            raw[cut] = data.draw(st.integers(min_value=0, max_value=255))
    raw = bytes(raw)
    got = scan(raw)
    if got is None:
        return  # the full parse decides
    try:
        expected = reference(raw)
    except Exception:  # the full parse refuses what the reader only skipped over
        return
    assert got == expected
    assert scanned_records(got) == records(raw)


def test_a_connection_end_entry_is_read_with_everything_its_record_uses() -> None:
    start = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
    entry = TcpAccessLogEntry(
        common_properties=AccessLogCommon(
            access_log_type=AccessLogType.TcpConnectionEnd,
            downstream_remote_address=Address(
                socket_address=SocketAddress(address="198.18.0.2", port_value=40000)
            ),
            downstream_local_address=Address(
                socket_address=SocketAddress(address="192.0.2.10", port_value=8080)
            ),
            start_time=start,
            duration=datetime.timedelta(milliseconds=1500),
            custom_tags={"clrk.route": "team/db", "clrk.authority": "-"},
        ),
        connection_properties=ConnectionProperties(received_bytes=10, sent_bytes=20),
    )
    connected = TcpAccessLogEntry(
        common_properties=AccessLogCommon(access_log_type=AccessLogType.TcpUpstreamConnected)
    )
    raw = bytes(
        StreamAccessLogsMessage(
            identifier=StreamAccessLogsMessageIdentifier(node=Node(id="team/gw")),
            tcp_logs=StreamAccessLogsMessageTcpAccessLogEntries(log_entry=[connected, entry]),
        )
    )
    got = scan(raw)
    assert got is not None and got.node_id == "team/gw" and got.entries == 2
    (facts,) = got.ends
    assert facts.tags == {"clrk.route": "team/db", "clrk.authority": "-"}
    assert (facts.received, facts.sent) == (10, 20)
    assert (facts.local, facts.remote) == (("192.0.2.10", 8080), ("198.18.0.2", 40000))
    assert (facts.start, facts.duration) == (start, datetime.timedelta(milliseconds=1500))


def test_a_listener_entry_counts_only_for_a_connection_a_proxying_chain_took() -> None:
    def listener_entry(chain: str | None) -> TcpAccessLogEntry:
        tags = {"route": "team/db"} | ({CHAIN_TAG: chain} if chain is not None else {})
        return TcpAccessLogEntry(
            common_properties=AccessLogCommon(custom_tags=tags),  # Envoy sets no type
            connection_properties=ConnectionProperties(received_bytes=3, sent_bytes=4),
        )

    counted = ["route/team/db/rule/0", "default/allow-all"]
    passed = ["deny/team/db/rule/0", "blocked_address", "default/deny-all", "-", "", None]
    raw = bytes(_tcp(*map(listener_entry, counted + passed)))
    got = scan(raw)
    assert got is not None and got.entries == len(counted + passed)
    assert [f.tags[CHAIN_TAG] for f in got.ends] == counted
    assert got == reference(raw)


def _tcp(*entries: TcpAccessLogEntry) -> StreamAccessLogsMessage:
    return StreamAccessLogsMessage(
        tcp_logs=StreamAccessLogsMessageTcpAccessLogEntries(log_entry=list(entries))
    )


def test_an_http_entry_is_read_with_everything_its_record_uses() -> None:
    start = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
    tags = {CHAIN_ROUTE_TAG: "team/api", CHAIN_RULE_TAG: "1", METHOD_TAG: "get"}
    entry = HttpAccessLogEntry(
        common_properties=AccessLogCommon(
            start_time=start,
            time_to_first_downstream_tx_byte=datetime.timedelta(microseconds=626),
            duration=datetime.timedelta(microseconds=641),
            route_name="injected/team/key",
            custom_tags=tags,
        ),
        request=HttpRequestProperties(
            request_method=RequestMethod.GET, authority="api.test", path="/v1"
        ),
        response=HttpResponseProperties(response_code=451),
    )
    raw = bytes(
        StreamAccessLogsMessage(
            identifier=StreamAccessLogsMessageIdentifier(node=Node(id="team/gw")),
            http_logs=StreamAccessLogsMessageHttpAccessLogEntries(
                log_entry=[entry, HttpAccessLogEntry()]
            ),
        )
    )
    got = scan(raw)
    assert got is not None and got.node_id == "team/gw" and got.ends == []
    facts, no_common = got.http
    assert no_common is None
    assert (facts.tags, facts.route_name, facts.start) == (tags, "injected/team/key", start)
    assert (facts.first_tx, facts.duration) == (
        datetime.timedelta(microseconds=626),
        datetime.timedelta(microseconds=641),
    )
    assert (facts.method, facts.authority, facts.path, facts.status) == (
        int(RequestMethod.GET), "api.test", "/v1", 451,
    )  # fmt: skip
    assert got == reference(raw)
    assert facts_record(facts, "team/gw") == entry_record(entry, "team/gw") is not None


def test_a_message_with_both_kinds_of_entries_which_protobuf_keeps_one_of_is_left_to_it() -> None:
    http = bytes(
        StreamAccessLogsMessage(
            http_logs=StreamAccessLogsMessageHttpAccessLogEntries(log_entry=[HttpAccessLogEntry()])
        )
    )
    tcp = bytes(_tcp(TcpAccessLogEntry()))
    assert scan(http) == Scanned(None, [], 0, [None])
    assert scan(http + tcp) is None and scan(tcp + http) is None


def test_a_time_past_what_a_datetime_holds_is_left_to_the_full_parse() -> None:
    def field(key: bytes, body: bytes) -> bytes:
        return key + bytes([len(body)]) + body

    duration = b"\x08" + b"\x80" * 8 + b"\x40"  # Duration.seconds = 2**62
    common = field(b"\xba\x01", duration)  # AccessLogCommon.duration (23)
    raw = field(b"\x12", field(b"\x0a", field(b"\x0a", common)))  # http_logs, entry, common
    assert scan(raw) is None


def test_a_pipe_address_is_left_to_the_full_parse() -> None:
    entry = TcpAccessLogEntry(
        common_properties=AccessLogCommon(
            access_log_type=AccessLogType.TcpConnectionEnd,
            downstream_remote_address=Address(pipe=Pipe(path="/run/x.sock")),
        )
    )
    assert scan(bytes(_tcp(entry))) is None


def test_a_singular_message_sent_twice_which_protobuf_merges_is_left_to_the_full_parse() -> None:
    raw = bytes(_tcp(TcpAccessLogEntry()))
    assert scan(raw) == Scanned(None, [], 1, [])
    assert scan(raw + raw) is None


def test_a_group_or_a_truncated_field_is_left_to_the_full_parse() -> None:
    assert scan(b"\x0b") is None  # field 1, wire type 3 (start group)
    assert scan(b"\x1a\x05\x0a") is None  # tcp_logs says 5 bytes, 1 follows
    assert scan(b"\x08\xff") is None  # a varint cut short


def test_tags_of_any_length_and_in_any_order_read_as_the_full_parse_reads_them() -> None:
    def entry(tags: dict[str, str]) -> TcpAccessLogEntry:
        return TcpAccessLogEntry(
            common_properties=AccessLogCommon(
                access_log_type=AccessLogType.TcpConnectionEnd, custom_tags=tags
            )
        )

    long_tags = {"k" * 200: "v" * 127, "short": "x" * 128, "": "", "empty": ""}
    raw = bytes(_tcp(entry(long_tags)))
    assert scan(raw) == reference(raw)
    assert scan(raw).ends[0].tags == long_tags
    # A map entry written value first, or with a field of its own: the general way.
    for odd in (b"\x12\x01v\x0a\x01k", b"\x0a\x01k\x12\x01v\x18\x01"):
        common = b"\x88\x02" + bytes([END]) + b"\xb2\x01" + bytes([len(odd)]) + odd  # type, tag
        log_entry = b"\x0a" + bytes([len(common)]) + common
        raw = b"\x1a" + bytes([len(log_entry) + 2]) + b"\x0a" + bytes([len(log_entry)]) + log_entry
        assert scan(raw) == reference(raw)
        assert scan(raw).ends[0].tags == {"k": "v"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    """A varint field (an int) or a length-delimited one (bytes), by hand: a writer
    (ours checks enums) would refuse the numbers these tests need."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _with_method(number: int) -> bytes:
    """A message of one HTTP entry (StreamAccessLogsMessage.http_logs = 2, its log_entry =
    1; the entry's common_properties = 1, request = 3) whose request_method (1) is
    `number`, path (5) "/v1"."""
    common = bytes(AccessLogCommon(custom_tags={CHAIN_ROUTE_TAG: "team/api"}))
    request = _field(1, number & (2**64 - 1)) + _field(5, b"/v1")
    return _field(2, _field(1, _field(1, common) + _field(3, request)))


def _with_log_type(number: int) -> bytes:
    """A message of one TCP entry (tcp_logs = 3, log_entry = 1, common_properties = 1)
    whose access_log_type (33) is `number`."""
    return _field(3, _field(1, _field(1, _field(33, number & (2**64 - 1)))))


@pytest.mark.parametrize("number", [2**31, 2**32 + 1, 2**35 + 3, 2**64 - 2**31 - 1])
def test_an_enum_number_past_int32_is_left_to_the_full_parse(number) -> None:
    """No writer makes one; protobuf would keep its low 32 bits (2**32 + 1 reading as
    GET), the full parse the whole number: neither reading is taken as the record's."""
    http = _with_method(number)
    (entry,) = StreamAccessLogsMessage.parse(http).http_logs.log_entry
    assert entry.request.request_method % 2**64 == number  # the bytes say what the test means
    assert scan(http) is None
    assert scan(_with_log_type(number)) is None


@pytest.mark.parametrize("number", [-1, -(2**31), 2**31 - 1, int(RequestMethod.GET)])
def test_an_enum_number_within_int32_is_read_as_the_full_parse_reads_it(number) -> None:
    for raw in (_with_method(number), _with_log_type(number)):
        assert scan(raw) is not None
        assert scan(raw) == reference(raw)


def test_a_path_or_host_that_is_not_utf8_keeps_the_batch_and_its_records() -> None:
    """The agent writes Host and path.  The full parse refuses a message with such bytes,
    which would end the stream and cost every entry of the batch its record."""
    common = bytes(AccessLogCommon(custom_tags={CHAIN_ROUTE_TAG: "team/api"}))
    request = _field(1, int(RequestMethod.GET)) + _field(3, b"h\xffst") + _field(5, b"/a\xfe")
    good = _field(1, _field(1, common) + _field(3, _field(1, 1) + _field(5, b"/ok")))
    raw = _field(2, _field(1, _field(1, common) + _field(3, request)) + good)
    with pytest.raises(Exception):  # noqa: B017 - whatever the full parse raises
        StreamAccessLogsMessage.parse(raw)
    scanned = scan(raw)
    assert scanned is not None
    assert [(h.authority, h.path) for h in scanned.http] == [("h\ufffdst", "/a\ufffd"), ("", "/ok")]
