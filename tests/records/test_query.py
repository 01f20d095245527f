"""Reading OTLP/JSON record files back: round trip through the real writer, tolerance of
damaged lines, and select()."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from clrk.policy import Agent, Decision, Reason
from clrk.records.query import iter_lines, iter_records, records_from_line, select
from clrk.records.schema import dial_denied, dns_denied, http_request
from clrk_runtime.records_writer import RecordWriter

BOT = Agent("default", "bot")
GW = "default/gw"


def write_sample(path):
    with RecordWriter("clrk-dialer", path=str(path)) as writer:
        writer.emit(
            dial_denied(
                Decision(Reason.POLICY, GW, "default/bot", "deny-all"),
                agent=BOT,
                dst_ip="192.0.2.1",
                dst_port=443,
                transport="tcp",
                dst_name="a.example",
                time_ns=1_000,
            )
        )
        writer.emit(
            dial_denied(
                Decision(Reason.UNKNOWN_AGENT, GW, None, "deny-all"),
                agent=None,
                dst_ip="192.0.2.2",
                dst_port=80,
                transport="udp",
                dst_name=None,
                time_ns=2_000,
            )
        )
        writer.emit(
            dns_denied(
                Decision(Reason.DNS_FILTERED, GW, "default/bot", "deny-all"),
                agent=BOT,
                query_name="leak.evil.example.",
                query_type="A",
                peer_address="198.18.0.1",
                peer_port=53,
                time_ns=3_000,
            )
        )
        writer.emit(
            http_request(
                gateway=GW,
                route="default/web",
                rule=0,
                listener="web",
                agent=BOT,
                method="GET",
                authority="a.example",
                path="/",
                status=200,
                start_ns=4_000,
                end_ns=5_000,
            )
        )


def test_records_round_trip_through_the_writer_and_reader(tmp_path):
    path = tmp_path / "records.jsonl"
    write_sample(path)
    records = list(iter_records(str(path)))
    assert sorted((r["signal"], r["name"]) for r in records) == sorted(
        (signal, name)
        for signal in ("span", "log")
        for name in ("egress.dial.denied", "egress.dial.denied", "egress.dns.denied", "egress.http")
    )
    spans = {r["time"]: r for r in records if r["signal"] == "span"}
    logs = {r["time"]: r for r in records if r["signal"] == "log"}
    assert spans[1_000]["attributes"] == logs[1_000]["attributes"]
    assert spans[1_000]["attributes"]["network.peer.port"] == 443  # ints come back as ints
    assert (spans[1_000]["status"], logs[1_000]["severity"]) == ("ERROR", "WARN")
    assert (spans[4_000]["status"], spans[4_000]["end_time"]) == ("UNSET", 5_000)
    assert logs[5_000]["severity"] == "INFO"  # a log is stamped with the record's end
    assert {r["service"] for r in records} == {"clrk-dialer"}
    assert (logs[1_000]["trace_id"], logs[1_000]["span_id"]) == (
        spans[1_000]["trace_id"],
        spans[1_000]["span_id"],
    )


def test_denials_are_found_by_deny_reason_alone(tmp_path):
    path = tmp_path / "records.jsonl"
    write_sample(path)
    records = list(iter_records(str(path)))
    found = list(select(records, {"clrk.egress.deny_reason": "unknown_agent"}, signal="log"))
    assert [r["attributes"]["network.peer.address"] for r in found] == ["192.0.2.2"]
    assert len(list(select(records, {"clrk.egress.deny_reason": "dns_filtered"}))) == 2
    dns = list(select(records, {"dns.question.name": "leak.evil.example"}, signal="span"))
    assert [r["name"] for r in dns] == ["egress.dns.denied"]


def test_select_compares_values_as_text_and_needs_every_key(tmp_path):
    path = tmp_path / "records.jsonl"
    write_sample(path)
    records = list(iter_records(str(path)))
    assert len(list(select(records, {"network.peer.port": "443"}))) == 2
    assert len(list(select(records, {"network.peer.port": "443", "agent.name": "x"}))) == 0
    assert len(list(select(records, {"no.such.key": ""}))) == 0
    assert len(list(select(records, name="egress.http", signal="span"))) == 1
    assert len(list(select(records))) == 8


def test_garbage_and_torn_lines_are_skipped(tmp_path):
    path = tmp_path / "records.jsonl"
    write_sample(path)
    good = path.read_bytes()
    torn = good.splitlines()[0][:50]
    path.write_bytes(
        b"not json\n\n[1,2]\n{}\nnull\n" + good + b'{"resourceSpans": 5}\n\xff\xfe\n' + torn
    )
    assert len(list(iter_records(str(path)))) == 8


def test_a_bad_span_inside_a_good_line_is_skipped_alone():
    line = json.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {"name": 5},
                                "x",
                                {"name": "ok", "attributes": [{"key": 1}, {"key": "k"}]},
                            ]
                        }
                    ]
                }
            ]
        }
    )
    (record,) = records_from_line(line)
    assert (record["name"], record["attributes"], record["service"]) == ("ok", {"k": None}, None)


def test_collector_style_enum_names_and_severity_numbers_are_understood():
    line = json.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "name": "egress.dial.denied",
                                    "startTimeUnixNano": 7,
                                    "status": {"code": "STATUS_CODE_ERROR"},
                                    "attributes": [
                                        {
                                            "key": "a",
                                            "value": {
                                                "arrayValue": {
                                                    "values": [
                                                        {"intValue": "1"},
                                                        {"boolValue": True},
                                                    ]
                                                }
                                            },
                                        },
                                        {
                                            "key": "b",
                                            "value": {
                                                "kvlistValue": {
                                                    "values": [
                                                        {"key": "c", "value": {"doubleValue": 1.5}}
                                                    ]
                                                }
                                            },
                                        },
                                    ],
                                }
                            ]
                        }
                    ]
                }
            ],
            "resourceLogs": [
                {
                    "scopeLogs": [
                        {
                            "logRecords": [
                                {
                                    "observedTimeUnixNano": "9",
                                    "severityNumber": 14,
                                    "body": {"stringValue": "egress.dial.denied"},
                                }
                            ]
                        }
                    ]
                }
            ],
        }
    )
    span, log = records_from_line(line)
    assert (span["status"], span["time"]) == ("ERROR", 7)
    assert span["attributes"] == {"a": [1, True], "b": {"c": 1.5}}
    assert (log["name"], log["severity"], log["time"]) == ("egress.dial.denied", "WARN", 9)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "resourceSpans",
                    "resourceLogs",
                    "scopeSpans",
                    "scopeLogs",
                    "spans",
                    "logRecords",
                    "name",
                    "attributes",
                    "key",
                    "value",
                    "stringValue",
                    "intValue",
                    "arrayValue",
                    "kvlistValue",
                    "values",
                    "status",
                    "code",
                    "eventName",
                    "body",
                    "severityNumber",
                    "severityText",
                    "resource",
                    "startTimeUnixNano",
                    "timeUnixNano",
                    "traceId",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40) | st.binary(max_size=40), max_size=5))
def test_the_reader_never_raises_on_arbitrary_lines(lines):
    for record in iter_lines(lines):
        assert record["signal"] in ("span", "log")


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_the_reader_never_raises_on_arbitrary_json(doc):
    for record in records_from_line(json.dumps(doc)):
        assert isinstance(record["name"], str) and isinstance(record["attributes"], dict)


def nested_line(depth: int) -> str:
    head = '{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"x","attributes":[{"key":"k",'
    value = '{"arrayValue":{"values":[' * depth + "]}}" * depth
    return head + '"value":' + value + "}]}]}]}]}"


def test_deep_nesting_is_cut_off_not_a_crash():
    (record,) = records_from_line(nested_line(100))  # within json's limits, past ours
    assert record["name"] == "x"
    assert records_from_line(nested_line(100_000)) == []  # past json's: the line is skipped
