"""Record filters, --since durations and the line buffer of the records tail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clrk_xds.admin_records import LineBuffer, RecordFilter, parse_since, record_table


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), (" 5M ", 300)],
)
def test_parse_since(text, seconds):
    assert parse_since(text) == seconds * 10**9


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "ten minutes", "1h 30m", "-5m", "1.5h"])
def test_parse_since_rejects(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_since(text)


def rec(**attrs):
    return {"signal": "log", "name": "egress.dial.denied", "time": 100, "attributes": attrs}


def test_filters():
    r = rec(**{"agent.name": "bot", "agent.namespace": "team", "clrk.egress.deny_reason": "policy",
               "clrk.egress.gateway": "default/gw"})  # fmt: skip
    assert RecordFilter().matches(r)
    assert RecordFilter(agent="bot", deny_reason="policy", gateway="gw").matches(r)
    assert RecordFilter(agent="team/bot", name="egress.dial.denied").matches(r)
    assert not RecordFilter(agent="default/bot").matches(r)
    assert not RecordFilter(agent="other").matches(r)
    assert not RecordFilter(deny_reason="no_listener").matches(r)
    assert not RecordFilter(gateway="default/other").matches(r)
    assert not RecordFilter(name="egress.tcp").matches(r)
    assert RecordFilter(since_ns=100).matches(r) and not RecordFilter(since_ns=101).matches(r)
    assert not RecordFilter().matches({**r, "signal": "span"})
    assert RecordFilter(signal="all").matches({**r, "signal": "span"})
    assert not RecordFilter(since_ns=1).matches({**r, "time": None})
    with pytest.raises(ValueError, match="signal"):
        RecordFilter(signal="metric")


def test_enforced_and_reported_denials_are_told_apart():
    enforced = rec(**{"clrk.egress.deny_reason": "policy", "clrk.egress.enforced": True})
    older = rec(**{"clrk.egress.deny_reason": "policy"})  # before Report mode existed
    reported = rec(**{"clrk.egress.deny_reason": "policy", "clrk.egress.enforced": False})
    allowed = rec(**{"clrk.egress.reason": "allowed"})
    pick = RecordFilter(enforcement="reported").matches
    assert [pick(r) for r in (enforced, older, reported, allowed)] == [False, False, True, False]
    pick = RecordFilter(enforcement="enforced").matches
    assert [pick(r) for r in (enforced, older, reported, allowed)] == [True, True, False, False]
    assert "policy (reported)" in record_table([reported])
    with pytest.raises(ValueError, match="enforcement"):
        RecordFilter(enforcement="maybe")


@given(
    st.lists(st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b), max_size=10),
    st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=20),
)
def test_line_buffer_gives_whole_lines_whatever_the_chunking(lines, cuts):
    data = b"".join(line + b"\n" for line in lines)
    buf, got, pos, i = LineBuffer(), [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        got += buf.feed(data[pos : pos + step])
        pos, i = pos + step, i + 1
    assert got == lines


def test_line_buffer_drops_an_overlong_line_and_keeps_going():
    buf = LineBuffer(max_line=8)
    assert buf.feed(b"ok\n0123456789") == [b"ok"]
    assert buf.feed(b"more-of-it\nnext\n") == [b"next"]


def test_table_handles_missing_fields():
    out = record_table([{"name": "egress.http", "attributes": {}, "time": None}])
    assert out.splitlines()[1].split() == ["-", "egress.http", "-", "-", "-", "-"]
