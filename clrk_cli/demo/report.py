"""The demo's table: each attempt of the agent next to the record the gateway wrote for
it (pure: attempts and flat records in, rows and text out)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clrk.records.query import FlatRecord

DENIED = "egress.dial.denied"


@dataclass(frozen=True)
class Row:
    target: str
    outcome: str  # what the agent saw
    decision: str  # "denied" (a deny record names it) or "allowed"
    reason: str  # the deny reason, "-" when allowed
    detail: str


def _matches(attempt: dict, record: FlatRecord) -> bool:
    attrs = record.get("attributes") or {}
    if attrs.get("network.peer.port") != attempt.get("port"):
        return False
    names = {attrs.get("clrk.dst.name")}
    return attempt.get("host") in names or attempt.get("ip") == attrs.get("network.peer.address")


def rows(attempts: Sequence[dict], records: Iterable[FlatRecord]) -> list[Row]:
    denials = [r for r in records if r.get("name") == DENIED and r.get("signal") == "span"]
    out = []
    for attempt in attempts:
        found = [r for r in denials if _matches(attempt, r)]
        if found:
            reason = str(found[-1]["attributes"].get("clrk.egress.deny_reason", "?"))
            decision = "denied"
        else:
            reason, decision = "-", "allowed"
        out.append(
            Row(
                attempt["target"],
                attempt["outcome"],
                decision,
                reason,
                str(attempt.get("detail") or ""),
            )
        )
    return out


def table(data: Sequence[Row]) -> str:
    header = ("DESTINATION", "AGENT SAW", "GATEWAY", "DENY REASON", "DETAIL")
    lines = [header, *((r.target, r.outcome, r.decision, r.reason, r.detail[:48]) for r in data)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def record_lines(records: Iterable[FlatRecord], names: Sequence[str] = (DENIED,)) -> list[str]:
    """One line per deny span: what `clrk records` shows."""
    out = []
    for r in records:
        if r.get("signal") != "span" or r.get("name") not in names:
            continue
        a = r.get("attributes") or {}
        out.append(
            f"{r['name']}  reason={a.get('clrk.egress.deny_reason')}  "
            f"agent={a.get('agent.namespace')}/{a.get('agent.name')}  "
            f"dst={a.get('clrk.dst.name') or '-'} {a.get('network.peer.address')}:"
            f"{a.get('network.peer.port')}/{a.get('network.transport')}"
        )
    return out
