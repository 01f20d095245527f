"""RE2 patterns for the filter-chain matcher: destination ports and hostname patterns.

Envoy's matcher API sees the destination port as a decimal string and has no range
matcher for it, so a port set becomes one anchored alternation.  Both patterns use only
syntax that RE2 and Python's `re` read the same way, so tests check them with `re`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from clrk.policy.index import merge_intervals

MAX_PORT = 65535


def intersect_ranges(
    a: Iterable[tuple[int, int]], b: Iterable[tuple[int, int]]
) -> tuple[tuple[int, int], ...]:
    out = [
        (max(lo1, lo2), min(hi1, hi2))
        for lo1, hi1 in a
        for lo2, hi2 in b
        if max(lo1, lo2) <= min(hi1, hi2)
    ]
    return merge_intervals(out)


def _digit(low: str, high: str) -> str:
    if low == high:
        return low
    if (low, high) == ("0", "9"):
        return "[0-9]"
    return f"[{low}-{high}]"


def _any_digits(n: int) -> str:
    return "" if n == 0 else "[0-9]" if n == 1 else f"[0-9]{{{n}}}"


def _same_length(low: str, high: str) -> list[str]:
    """Patterns for the numbers low..high written with the same number of digits."""
    if low == high:
        return [low]
    rest = len(low) - 1
    if low[0] == high[0]:
        return [low[0] + p for p in _same_length(low[1:], high[1:])]
    out: list[str] = []
    first, last = int(low[0]), int(high[0])
    if low[1:] != "0" * rest:  # a partial block below the first full leading digit
        out += [low[0] + p for p in _same_length(low[1:], "9" * rest)]
        first += 1
    tail: list[str] = []
    if high[1:] != "9" * rest:  # a partial block above the last full leading digit
        tail = [high[0] + p for p in _same_length("0" * rest, high[1:])]
        last -= 1
    if first <= last:
        out.append(_digit(str(first), str(last)) + _any_digits(rest))
    return out + tail


def _range_patterns(low: int, high: int) -> list[str]:
    out: list[str] = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        lo = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        hi = min(high, 10**digits - 1)
        if lo <= hi:
            out += _same_length(str(lo), str(hi))
    return out


def port_regex(ranges: Iterable[tuple[int, int]]) -> str:
    """An anchored pattern matching exactly the decimal ports inside `ranges`.

    ValueError for an empty set (a match that can never hold must be dropped by the
    caller, not turned into a pattern) or a port outside 0..65535.
    """
    return _port_regex(merge_intervals(ranges))


@functools.lru_cache(maxsize=1024)
def _port_regex(merged: tuple[tuple[int, int], ...]) -> str:
    # Routes share port sets (443; 8000-8100): each set's pattern is made once.
    if not merged:
        raise ValueError("no ports")
    for low, high in merged:
        if not 0 <= low <= high <= MAX_PORT:
            raise ValueError(f"bad port range {low}..{high}")
    patterns = [p for low, high in merged for p in _range_patterns(low, high)]
    return f"^{patterns[0]}$" if len(patterns) == 1 else f"^(?:{'|'.join(patterns)})$"


def _literal(name: str) -> str:
    # Validated hostnames hold only [a-z0-9.-]; only the dot is special.
    return name.replace(".", r"\.")


def hostname_regex(patterns: Iterable[str], trailing_dot: bool = False) -> str:
    """An anchored, case-insensitive pattern for Gateway API hostnames.

    `*.a.com` matches exactly one label in front of `a.com` (not `a.com`, not
    `x.y.a.com`).  Input names are already validated and lower-cased.  With
    `trailing_dot`, one final dot is accepted too: Envoy reads the SNI as the client
    wrote it, and decide() folds one trailing dot (never two) off the name.
    """
    alternatives = []
    for name in dict.fromkeys(patterns):
        if name.startswith("*."):
            alternatives.append(r"[^.]+\." + _literal(name[2:]))
        else:
            alternatives.append(_literal(name))
    if not alternatives:
        raise ValueError("no hostnames")
    body = alternatives[0] if len(alternatives) == 1 else f"(?:{'|'.join(alternatives)})"
    dot = r"\.?" if trailing_dot else ""
    return f"(?i)^{body}{dot}$"
