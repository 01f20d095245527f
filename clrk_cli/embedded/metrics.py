"""Prometheus metrics of the embedded stack, rendered at scrape time from what already
exists: the records file (decisions by reason, connections, DNS denials), the control
plane's status page (xDS versions ACKed and NACKed) and the supervisor (children up,
restarts).  The counting is pure (`Counts.add`, `XdsCounts.observe`); `render` turns it
into the text format with prometheus-client.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from clrk.records.query import FlatRecord, records_from_line

DENIED = "egress.dial.denied"
DNS_DENIED = "egress.dns.denied"
ALLOWED = {"egress.tcp": "tcp", "egress.http": "http"}
MAX_READ = 8 << 20  # bytes of new records read per scrape; the rest waits for the next


@dataclass
class Counts:
    """Decisions seen in the records (spans only: every decision is one span + one log)."""

    decisions: Counter = field(default_factory=Counter)  # (decision, reason) -> n
    connections: Counter = field(default_factory=Counter)  # (transport, decision) -> n
    dns_denied: int = 0

    def add(self, record: FlatRecord) -> None:
        if record.get("signal") != "span":
            return
        name, attrs = record.get("name"), record.get("attributes") or {}
        if name == DENIED:
            reason = str(attrs.get("clrk.egress.deny_reason") or "unknown")
            self.decisions["deny", reason] += 1
            self.connections[str(attrs.get("network.transport") or "tcp"), "deny"] += 1
        elif name == DNS_DENIED:
            self.decisions["deny", str(attrs.get("clrk.egress.deny_reason") or "dns_filtered")] += 1
            self.dns_denied += 1
        elif name in ALLOWED:
            self.decisions["allow", ALLOWED[name]] += 1
            if name == "egress.tcp":
                self.connections[str(attrs.get("network.transport") or "tcp"), "allow"] += 1


@dataclass
class RecordTail:
    """Reads only what was appended since the last call; complete lines only."""

    path: Path
    offset: int = 0
    counts: Counts = field(default_factory=Counts)

    def update(self) -> Counts:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return self.counts
        if size < self.offset:  # truncated or replaced: start over
            self.offset, self.counts = 0, Counts()
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(MAX_READ)
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            for record in records_from_line(line):
                self.counts.add(record)
        self.offset += end
        return self.counts


@dataclass
class XdsCounts:
    """Distinct versions each gateway's Envoy ACKed (pushes taken) and NACKed."""

    acked: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    nacked: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    nacking: dict[tuple[str, str], bool] = field(default_factory=dict)

    def observe(self, status: Mapping) -> None:
        nodes = status.get("nodes") if isinstance(status, Mapping) else None
        if not isinstance(nodes, Mapping):
            return
        for node, types in nodes.items():
            if not isinstance(types, Mapping):
                continue
            for short, st in types.items():
                if not isinstance(st, Mapping):
                    continue
                key = (str(node), str(short))
                if st.get("acked_version"):
                    self.acked.setdefault(key, set()).add(str(st["acked_version"]))
                if st.get("nacked_version"):
                    self.nacked.setdefault(key, set()).add(str(st["nacked_version"]))
                self.nacking[key] = bool(st.get("nacked_version"))


@dataclass(frozen=True)
class ChildState:
    name: str
    up: bool
    restarts: int
    pid: int | None


class _Collector:
    def __init__(self, counts: Counts, xds: XdsCounts, children: Iterable[ChildState]):
        self.counts, self.xds, self.children = counts, xds, list(children)

    def collect(self):
        c = self.counts
        decisions = CounterMetricFamily(
            "clrk_decisions",
            "Egress decisions by outcome and reason.",
            labels=["decision", "reason"],
        )
        for (decision, reason), n in sorted(c.decisions.items()):
            decisions.add_metric([decision, reason], n)
        yield decisions
        conns = CounterMetricFamily(
            "clrk_connections", "Connections and flows decided.", labels=["transport", "decision"]
        )
        for (transport, decision), n in sorted(c.connections.items()):
            conns.add_metric([transport, decision], n)
        yield conns
        yield CounterMetricFamily(
            "clrk_dns_queries_denied",
            "DNS queries answered NXDOMAIN by Filtered mode.",
            value=c.dns_denied,
        )
        pushes = CounterMetricFamily(
            "clrk_xds_pushes_acked", "Distinct xDS versions ACKed.", labels=["gateway", "type"]
        )
        nacks = CounterMetricFamily(
            "clrk_xds_nacks", "Distinct xDS versions NACKed.", labels=["gateway", "type"]
        )
        nacking = GaugeMetricFamily(
            "clrk_xds_nacking", "1 while the latest version is NACKed.", labels=["gateway", "type"]
        )
        for key in sorted(set(self.xds.acked) | set(self.xds.nacked)):
            pushes.add_metric(list(key), len(self.xds.acked.get(key, ())))
            nacks.add_metric(list(key), len(self.xds.nacked.get(key, ())))
            nacking.add_metric(list(key), int(self.xds.nacking.get(key, False)))
        yield pushes
        yield nacks
        yield nacking
        up = GaugeMetricFamily("clrk_child_up", "1 while the child is healthy.", labels=["child"])
        restarts = CounterMetricFamily(
            "clrk_child_restarts", "Restarts of a crashed child.", labels=["child"]
        )
        for child in self.children:
            up.add_metric([child.name], int(child.up))
            restarts.add_metric([child.name], child.restarts)
        yield up
        yield restarts


def render(counts: Counts, xds: XdsCounts, children: Iterable[ChildState]) -> bytes:
    """The Prometheus text exposition of everything above."""
    registry = CollectorRegistry()
    registry.register(_Collector(counts, xds, children))
    return generate_latest(registry)


def health_document(children: Iterable[ChildState], ready: bool) -> dict:
    """`/healthz`: ok only when every child is healthy."""
    states = {c.name: {"up": c.up, "restarts": c.restarts, "pid": c.pid} for c in children}
    return {"ok": ready and all(s["up"] for s in states.values()), "children": states}
