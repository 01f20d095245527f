"""Record selection shared by `clrk records` and the admin API's StreamRecords: which
flat records (clrk.records.query) match a filter, `--since` durations, and cutting a
growing file into whole lines.  Pure: no files, no clocks (the caller passes `now`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clrk.records.query import FlatRecord
from clrk.records.schema import AGENT_NAME, AGENT_NAMESPACE, DENY_REASON, ENFORCED, GATEWAY

SIGNALS = ("log", "span", "all")
ENFORCEMENTS = ("enforced", "reported")
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def parse_since(text: str) -> int:
    """'90s', '10m', '2h', '1d', '1h30m' -> nanoseconds; ValueError otherwise."""
    text = text.strip().lower()
    pos, total = 0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 2h or 1h30m")
    return total


@dataclass(frozen=True)
class RecordFilter:
    name: str = ""
    deny_reason: str = ""
    agent: str = ""  # [NAMESPACE/]NAME
    gateway: str = ""  # [NAMESPACE/]NAME
    since_ns: int = 0  # records at or after this Unix time; 0: any
    signal: str = "log"  # each decision is a span and a log: one of them is enough
    enforcement: str = ""  # enforced | reported: denials only; "": any record

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, not {self.signal!r}")
        if self.enforcement not in ("", *ENFORCEMENTS):
            raise ValueError(
                f"enforcement must be one of {', '.join(ENFORCEMENTS)}, not {self.enforcement!r}"
            )

    def matches(self, record: FlatRecord) -> bool:
        attrs = record.get("attributes") or {}
        if self.signal != "all" and record.get("signal") != self.signal:
            return False
        if self.name and record.get("name") != self.name:
            return False
        if self.deny_reason and attrs.get(DENY_REASON) != self.deny_reason:
            return False
        if self.enforcement and enforcement(attrs) != self.enforcement:
            return False
        if self.agent:
            namespace, _, name = self.agent.rpartition("/")
            if attrs.get(AGENT_NAME) != name:
                return False
            if namespace and attrs.get(AGENT_NAMESPACE) != namespace:
                return False
        if self.gateway:
            want = self.gateway if "/" in self.gateway else f"default/{self.gateway}"
            if attrs.get(GATEWAY) != want:
                return False
        if self.since_ns:
            time_ns = record.get("time")
            if not isinstance(time_ns, int) or time_ns < self.since_ns:
                return False
        return True


def enforcement(attrs) -> str | None:
    """enforced | reported for a denial (records older than Report mode were enforced);
    None for anything else."""
    if DENY_REASON not in attrs:
        return None
    return "reported" if attrs.get(ENFORCED) is False else "enforced"


class LineBuffer:
    """Bytes read from a growing file -> whole lines.  A line still being written stays
    buffered until its newline arrives; an overlong one is dropped, not kept forever."""

    def __init__(self, max_line: int = 16 << 20) -> None:
        self._pending = b""
        self._max = max_line
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        parts = (self._pending + data).split(b"\n")
        self._pending = parts.pop()
        lines = []
        for part in parts:
            if self._skipping:
                self._skipping = False  # the tail of a dropped line
            elif part:
                lines.append(part)
        if len(self._pending) > self._max:
            self._pending, self._skipping = b"", True
        return lines

    def reset(self) -> None:
        self._pending, self._skipping = b"", False


def record_table(records: list[FlatRecord]) -> str:
    """One line per record for people: time, name, agent, destination, why."""
    from datetime import UTC, datetime

    rows = [("TIME", "NAME", "AGENT", "GATEWAY", "DESTINATION", "REASON")]
    for r in records:
        a = r.get("attributes") or {}
        t = r.get("time")
        when = (
            datetime.fromtimestamp(t / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
            if isinstance(t, int)
            else "-"
        )
        agent = f"{a.get(AGENT_NAMESPACE) or ''}/{a.get(AGENT_NAME) or ''}".strip("/") or "-"
        peer = a.get("network.peer.address")
        dest = a.get("clrk.dst.name") or a.get("clrk.http.authority") or ""
        if peer is not None:
            where = f"{peer}:{a.get('network.peer.port')}"
            dest = f"{dest} ({where})" if dest else where
        reason = a.get(DENY_REASON) or a.get("clrk.egress.reason") or ""
        if enforcement(a) == "reported":
            reason += " (reported)"
        if a.get("http.response.status_code") is not None:
            reason = f"{a.get('http.request.method')} {a.get('url.path')} -> " + str(
                a.get("http.response.status_code")
            )
        rows.append(
            (
                when,
                str(r.get("name")),
                agent,
                str(a.get(GATEWAY) or "-"),
                dest or "-",
                reason or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    )
