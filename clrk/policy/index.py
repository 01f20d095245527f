"""Lookup structures that answer "which matches could apply" without scanning every rule.

- names: exact hostnames in a dict; `*.parent` wildcards in a dict keyed by parent.
- CIDRs and ports: an IntervalMap splits the key space at every range boundary and
  keeps, per elementary interval, the tuple of items covering it, so a lookup is one
  bisect.  CIDRs nest or are disjoint, so each tuple is at most a prefix chain long.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


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
