"""Lookup structures that answer "which matches could apply" without scanning every rule.

`build_index` turns a gateway's match entries of one transport and kind (allow or deny)
into a `ProtocolIndex`; `GatewayPolicy` builds its indexes with it.


- names: exact hostnames in a dict; `*.parent` wildcards in a dict keyed by parent.
- CIDRs and ports: an IntervalMap splits the key space at every range boundary and
  keeps, per elementary interval, the tuple of items covering it, so a lookup is one
  bisect.  CIDRs nest or are disjoint, so each tuple is at most a prefix chain long.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from clrk.policy.compiled import MatchEntry

T = TypeVar("T")
ANY_PORT = (0, 65535)


class IntervalMap(Generic[T]):
    __slots__ = ("_starts", "_values")

    def __init__(self, intervals: Iterable[tuple[int, int, T]], order: Callable[[T], Hashable]):
        """`intervals` are closed [low, high]; each value tuple is sorted by `order`."""
        events: dict[int, tuple[list[int], list[int]]] = {}
        items: list[tuple[Hashable, int, T]] = []
        for seq, (low, high, item) in enumerate(intervals):
            items.append((order(item), seq, item))
            events.setdefault(low, ([], []))[0].append(seq)
            events.setdefault(high + 1, ([], []))[1].append(seq)
        starts: list[int] = []
        values: list[tuple[T, ...]] = []
        active: list[tuple[Hashable, int, T]] = []
        for point in sorted(events):
            opened, closed = events[point]
            for seq in closed:
                active.remove(items[seq])
            for seq in opened:
                insort(active, items[seq])
            starts.append(point)
            values.append(tuple(e[2] for e in active))
        self._starts = starts
        self._values = values

    def lookup(self, key: int) -> tuple[T, ...]:
        i = bisect_right(self._starts, key) - 1
        return self._values[i] if i >= 0 else ()

    def values(self) -> set[T]:
        """Every item stored, once."""
        return {item for chunk in self._values for item in chunk}

    def __len__(self) -> int:
        return len(self._starts)


def parent_domain(name: str) -> str | None:
    """'api.openai.com' -> 'openai.com': the key a `*.openai.com` pattern is stored under."""
    dot = name.find(".")
    return name[dot + 1 :] if dot > 0 else None


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, non-overlapping, non-adjacent closed intervals covering the same points."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(intervals):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


@dataclass(frozen=True, slots=True)
class ProtocolIndex:
    exact: Mapping[str, tuple[MatchEntry, ...]]
    wildcard: Mapping[str, tuple[MatchEntry, ...]]  # keyed by the parent of `*.parent`
    cidr4: IntervalMap[tuple[MatchEntry, int, int]]  # (entry, network, prefix length)
    cidr6: IntervalMap[tuple[MatchEntry, int, int]]
    anywhere: IntervalMap[MatchEntry]  # matches without hostnames or CIDRs, by port
    empty: bool = False  # nothing to look up: decide() skips the index entirely


def build_index(entries: Iterable[MatchEntry]) -> ProtocolIndex:
    exact: dict[str, list[MatchEntry]] = {}
    wildcard: dict[str, list[MatchEntry]] = {}
    cidr: dict[int, list[tuple[int, int, tuple[MatchEntry, int, int]]]] = {4: [], 6: []}
    anywhere: list[tuple[int, int, MatchEntry]] = []
    for entry in entries:
        for name in entry.hostnames:
            if name.startswith("*."):
                wildcard.setdefault(name[2:], []).append(entry)
            else:
                exact.setdefault(name, []).append(entry)
        for net in entry.networks:
            low, high = int(net.network_address), int(net.broadcast_address)
            cidr[net.version].append((low, high, (entry, low, net.prefixlen)))
        if entry.any_destination:
            for low, high in entry.ports or (ANY_PORT,):
                anywhere.append((low, high, entry))
    by_cidr = lambda item: (-item[2], item[0].order)  # noqa: E731
    return ProtocolIndex(
        exact={k: tuple(v) for k, v in exact.items()},
        wildcard={k: tuple(v) for k, v in wildcard.items()},
        cidr4=IntervalMap(cidr[4], by_cidr),
        cidr6=IntervalMap(cidr[6], by_cidr),
        anywhere=IntervalMap(anywhere, lambda e: e.order),
        empty=not (exact or wildcard or cidr[4] or cidr[6] or anywhere),
    )
