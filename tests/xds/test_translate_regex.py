"""Port and hostname patterns: checked with Python's `re`, whose reading of this syntax
subset (anchors, (?:), [a-b], {n}, (?i)) is the same as RE2's."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk_xds.translate_regex import (
    MAX_PORT,
    hostname_regex,
    intersect_ranges,
    port_regex,
)

port = st.integers(0, MAX_PORT)
interval = st.tuples(port, port).map(lambda t: (min(t), max(t)))
intervals = st.lists(interval, min_size=1, max_size=6)


def _inside(p: int, ranges) -> bool:
    return any(lo <= p <= hi for lo, hi in ranges)


def _edges(ranges) -> set[int]:
    out = {0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10000, MAX_PORT}
    for lo, hi in ranges:
        out |= {lo - 1, lo, lo + 1, hi - 1, hi, hi + 1}
    return {p for p in out if 0 <= p <= MAX_PORT}


@settings(max_examples=300, deadline=None)
@given(intervals, st.lists(port, max_size=30))
def test_port_regex_matches_exactly_the_ports_in_range(ranges, probes) -> None:
    pattern = re.compile(port_regex(ranges))
    for p in _edges(ranges) | set(probes):
        assert bool(pattern.fullmatch(str(p))) == _inside(p, ranges), (ranges, p)


@given(intervals, port)
def test_port_regex_rejects_non_canonical_forms(ranges, p) -> None:
    pattern = re.compile(port_regex(ranges))
    for text in (f"0{p}", f"+{p}", f"{p} ", f"{p}0" if p * 10 > MAX_PORT else "x", ""):
        assert not pattern.fullmatch(text)


@pytest.mark.parametrize(
    ("low", "high"), [(1, 65535), (0, 9), (8000, 8099), (17, 2345), (443, 443), (65535, 65535)]
)
def test_port_regex_exhaustive(low: int, high: int) -> None:
    pattern = re.compile(port_regex([(low, high)]))
    assert [p for p in range(MAX_PORT + 1) if pattern.fullmatch(str(p))] == list(
        range(low, high + 1)
    )


def test_port_regex_readable_forms() -> None:
    assert port_regex([(443, 443)]) == "^443$"
    assert port_regex([(8000, 8099), (443, 443)]) == "^(?:443|80[0-9][0-9])$"


@pytest.mark.parametrize("bad", [[], [(5, 4)], [(0, 65536)], [(-1, 3)]])
def test_port_regex_refuses_empty_or_invalid(bad) -> None:
    with pytest.raises(ValueError):
        port_regex(bad)


@given(intervals, intervals)
def test_intersect_ranges(a, b) -> None:
    both = intersect_ranges(a, b)
    for p in _edges(a) | _edges(b):
        assert _inside(p, both) == (_inside(p, a) and _inside(p, b))


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
name = st.lists(label, min_size=1, max_size=4).map(".".join)


@given(st.lists(name, min_size=1, max_size=4), name, label)
def test_hostname_regex_follows_gateway_api_wildcards(exact, base, extra) -> None:
    patterns = [*exact, f"*.{base}"]
    pattern = re.compile(hostname_regex(patterns))
    for n in exact:
        assert pattern.fullmatch(n)
        assert pattern.fullmatch(n.upper())
    assert pattern.fullmatch(f"{extra}.{base}")
    if base not in exact:
        assert not pattern.fullmatch(base)
    deeper = f"{extra}.{extra}.{base}"
    assert bool(pattern.fullmatch(deeper)) == (deeper in exact)


def test_hostname_regex_dots_are_literal() -> None:
    pattern = re.compile(hostname_regex(["api.example.com"]))
    assert not pattern.fullmatch("apiXexample.com")
    assert hostname_regex(["a.b", "*.c.d"]) == r"(?i)^(?:a\.b|[^.]+\.c\.d)$"


def test_hostname_regex_refuses_empty() -> None:
    with pytest.raises(ValueError):
        hostname_regex([])
