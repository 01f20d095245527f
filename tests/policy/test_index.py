"""The lookup structures behind decide(): IntervalMap (CIDRs and port ranges),
parent_domain (the key of `*.parent` wildcards) and merge_intervals (a match's ports).

IntervalMap.lookup and merge_intervals are checked against brute-force scans.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk.policy.index import IntervalMap, merge_intervals, parent_domain

PROPERTY = settings(max_examples=250, deadline=None)


def identity(item):
    return item


def cidr(text: str) -> tuple[int, int]:
    net = ipaddress.ip_network(text)
    return int(net.network_address), int(net.broadcast_address)


# --- IntervalMap examples -------------------------------------------------------------


def test_an_empty_map_finds_nothing_anywhere():
    empty = IntervalMap([], identity)
    assert len(empty) == 0
    for key in (-1, 0, 1, 2**128):
        assert empty.lookup(key) == ()


@pytest.mark.parametrize(
    ("key", "found"),
    [(9, ()), (10, ("a",)), (15, ("a",)), (20, ("a",)), (21, ()), (-5, ()), (10**9, ())],
)
def test_a_closed_interval_contains_both_of_its_ends_and_nothing_outside(key, found):
    assert IntervalMap([(10, 20, "a")], identity).lookup(key) == found


@pytest.mark.parametrize(
    ("key", "found"),
    [(3, ()), (4, ("a",)), (5, ()), (6, ())],
)
def test_a_single_point_interval_contains_only_that_point(key, found):
    assert IntervalMap([(4, 4, "a")], identity).lookup(key) == found


@pytest.mark.parametrize(
    ("key", "found"),
    [(0, ("a",)), (4, ("a",)), (5, ("b",)), (9, ("b",)), (10, ())],
)
def test_adjacent_intervals_hand_over_at_the_boundary(key, found):
    assert IntervalMap([(0, 4, "a"), (5, 9, "b")], identity).lookup(key) == found


# CIDRs nest or are disjoint; items come back most specific first, as compile.py orders them.
CIDRS = [
    (*cidr("10.0.0.0/8"), (8, "ten")),
    (*cidr("10.20.0.0/16"), (16, "ten-twenty")),
    (*cidr("10.20.30.0/24"), (24, "ten-twenty-thirty")),
    (*cidr("192.168.0.0/16"), (16, "private")),
]
BY_SPECIFICITY = lambda item: -item[0]  # noqa: E731


@pytest.mark.parametrize(
    ("address", "names"),
    [
        ("10.20.30.40", ["ten-twenty-thirty", "ten-twenty", "ten"]),
        ("10.20.31.1", ["ten-twenty", "ten"]),
        ("10.0.0.0", ["ten"]),
        ("10.255.255.255", ["ten"]),
        ("11.0.0.0", []),
        ("9.255.255.255", []),
        ("192.168.1.1", ["private"]),
        ("0.0.0.0", []),
        ("255.255.255.255", []),
    ],
)
def test_nested_cidrs_come_back_most_specific_first(address, names):
    index = IntervalMap(CIDRS, BY_SPECIFICITY)
    found = index.lookup(int(ipaddress.ip_address(address)))
    assert [name for _, name in found] == names


def test_items_come_back_sorted_by_the_order_key_not_by_insertion():
    index = IntervalMap([(0, 10, 3), (0, 10, 1), (5, 10, 2), (0, 5, 0)], identity)
    assert index.lookup(5) == (0, 1, 2, 3)
    assert index.lookup(7) == (1, 2, 3)
    assert index.lookup(0) == (0, 1, 3)


def test_the_same_interval_can_carry_several_items_and_equal_items_are_all_kept():
    index = IntervalMap([(1, 3, "x"), (1, 3, "x"), (1, 3, "y")], identity)
    assert index.lookup(2) == ("x", "x", "y")
    assert index.lookup(4) == ()


def test_ipv6_sized_keys_work():
    low, high = cidr("2001:db8::/32")
    index = IntervalMap([(low, high, "doc"), (0, 2**128 - 1, "all")], lambda i: i != "doc")
    assert index.lookup(int(ipaddress.ip_address("2001:db8::1"))) == ("doc", "all")
    assert index.lookup(int(ipaddress.ip_address("2001:db9::"))) == ("all",)
    assert index.lookup(2**128 - 1) == ("all",)
    assert index.lookup(2**128) == ()


def test_port_ranges_with_any_port_cover_0_to_65535():
    index = IntervalMap([(0, 65535, "any"), (443, 443, "tls"), (8000, 8099, "alt")], identity)
    assert index.lookup(443) == ("any", "tls")
    assert index.lookup(8050) == ("alt", "any")
    assert index.lookup(65535) == ("any",)
    assert index.lookup(65536) == ()


def test_the_map_accepts_a_one_shot_iterator():
    index = IntervalMap(iter([(1, 2, "a"), (2, 3, "b")]), identity)
    assert index.lookup(2) == ("a", "b")


# --- IntervalMap against a brute-force scan ------------------------------------------


def _interval(bounds):
    low, high = sorted(bounds)
    return low, high


SMALL_INTERVAL = st.tuples(st.integers(-20, 60), st.integers(-20, 60)).map(_interval)
WIDE_INTERVAL = st.tuples(st.integers(0, 2**128), st.integers(0, 2**128)).map(_interval)
SMALL_KEY = st.integers(-30, 70)


def scan(intervals, key):
    return [item for low, high, item in intervals if low <= key <= high]


@PROPERTY
@given(st.lists(SMALL_INTERVAL, max_size=12), st.lists(SMALL_KEY, min_size=1, max_size=20))
def test_lookup_equals_a_scan_sorted_by_a_unique_order_key(bounds, keys):
    # Items are (order, tag) with distinct orders: the expected tuple is exact.
    intervals = [(low, high, (order, f"i{order}")) for order, (low, high) in enumerate(bounds)]
    shuffled = intervals[1::2] + intervals[0::2]
    index = IntervalMap(shuffled, lambda item: -item[0])
    for key in keys:
        expected = sorted(scan(intervals, key), key=lambda item: -item[0])
        assert index.lookup(key) == tuple(expected)


@PROPERTY
@given(
    st.lists(st.tuples(SMALL_INTERVAL, st.integers(0, 3)), max_size=12),
    st.lists(SMALL_KEY, min_size=1, max_size=20),
)
def test_lookup_equals_a_scan_as_a_multiset_and_is_ordered_when_keys_tie(spec, keys):
    # Orders repeat here, so only the multiset and the non-decreasing order are promised.
    intervals = [(low, high, (order, n)) for n, ((low, high), order) in enumerate(spec)]
    index = IntervalMap(intervals, lambda item: item[0])
    for key in keys:
        found = index.lookup(key)
        assert Counter(found) == Counter(scan(intervals, key))
        orders = [item[0] for item in found]
        assert orders == sorted(orders)


@PROPERTY
@given(
    st.lists(WIDE_INTERVAL, max_size=8),
    st.lists(st.integers(0, 2**128 + 1), max_size=10),
    st.data(),
)
def test_lookup_equals_a_scan_over_the_ipv6_key_space(bounds, keys, data):
    intervals = [(low, high, n) for n, (low, high) in enumerate(bounds)]
    # Probe each boundary and its neighbours too: that is where off-by-ones live.
    probes = keys + [x + d for low, high, _ in intervals for x in (low, high) for d in (-1, 0, 1)]
    index = IntervalMap(intervals, identity)
    for key in probes:
        assert index.lookup(key) == tuple(sorted(scan(intervals, key)))


@PROPERTY
@given(st.lists(SMALL_INTERVAL, max_size=10))
def test_keys_below_and_above_every_interval_find_nothing(bounds):
    index = IntervalMap([(low, high, n) for n, (low, high) in enumerate(bounds)], identity)
    assert index.lookup(-21) == ()
    assert index.lookup(61) == ()
    assert len(index) <= 2 * len(bounds)


# --- parent_domain --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parent"),
    [
        ("api.openai.com", "openai.com"),
        ("eu.api.openai.com", "api.openai.com"),
        ("openai.com", "com"),
        ("com", None),
        ("", None),
        (".com", None),
        ("*.openai.com", "openai.com"),
    ],
)
def test_the_parent_domain_is_the_name_without_its_first_label(name, parent):
    assert parent_domain(name) == parent


LABEL = st.text(alphabet="abcz09-", min_size=1, max_size=8)


@PROPERTY
@given(LABEL, st.lists(LABEL, min_size=1, max_size=4))
def test_a_wildcard_on_the_parent_covers_exactly_one_more_label(first, rest):
    name = ".".join([first, *rest])
    parent = parent_domain(name)
    assert parent == ".".join(rest)
    assert f"{first}.{parent}" == name
    assert parent_domain(first) is None


# --- merge_intervals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("intervals", "merged"),
    [
        ([], ()),
        ([(443, 443)], ((443, 443),)),
        ([(1, 3), (2, 5)], ((1, 5),)),
        ([(1, 3), (4, 6)], ((1, 6),)),
        ([(1, 3), (5, 6)], ((1, 3), (5, 6))),
        ([(5, 6), (1, 3)], ((1, 3), (5, 6))),
        ([(1, 10), (2, 3)], ((1, 10),)),
        ([(2, 3), (1, 10)], ((1, 10),)),
        ([(80, 80), (80, 80)], ((80, 80),)),
        ([(443, 443), (8000, 8099), (80, 80)], ((80, 80), (443, 443), (8000, 8099))),
        ([(8000, 8099), (8100, 8199), (8050, 8150)], ((8000, 8199),)),
        ([(1, 1), (2, 2), (3, 3)], ((1, 3),)),
        ([(1, 65535), (443, 443)], ((1, 65535),)),
    ],
)
def test_port_ranges_are_merged_sorted_and_without_overlap_or_adjacency(intervals, merged):
    assert merge_intervals(intervals) == merged


def test_merge_intervals_accepts_a_generator():
    assert merge_intervals((p, p) for p in (3, 1, 2)) == ((1, 3),)


def covered(intervals) -> set[int]:
    return {n for low, high in intervals for n in range(low, high + 1)}


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, 80), st.integers(0, 80)).map(_interval), max_size=12))
def test_merged_intervals_are_sorted_disjoint_non_adjacent_and_cover_the_same_integers(spans):
    merged = merge_intervals(spans)
    assert isinstance(merged, tuple)
    assert all(low <= high for low, high in merged)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(merged))
    assert covered(merged) == covered(spans)
    assert merge_intervals(merged) == merged
