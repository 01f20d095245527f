"""UDP flows other than DNS (SPEC 5.3): one decision per flow, one record per denied
flow, forgotten after an idle timeout.  Pure: the shell passes the time in."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from clrk.policy import Decision

DEFAULT_IDLE_TIMEOUT = 60.0


@dataclass(slots=True)
class UdpFlow:
    key: Hashable  # (agent source ip, port, original destination ip, port)
    decision: Decision
    last_seen: float
    datagrams: int = 0
    state: dict = field(default_factory=dict)  # the shell's sockets for an allowed flow

    @property
    def allowed(self) -> bool:
        """Relayed: allowed, or a denial Report mode lets through."""
        return self.decision.passes


class FlowTable:
    def __init__(self, idle_timeout: float = DEFAULT_IDLE_TIMEOUT, max_flows: int = 65536):
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self._flows: dict[Hashable, UdpFlow] = {}

    def datagram(
        self, key: Hashable, now: float, decide: Callable[[], Decision]
    ) -> tuple[UdpFlow, bool]:
        """The flow of this datagram and whether it is new (decided, and recorded if denied)."""
        flow = self._flows.get(key)
        if flow is not None and now - flow.last_seen < self.idle_timeout:
            flow.last_seen = now
            flow.datagrams += 1
            return flow, False
        inherited: dict = {}
        if flow is not None:
            # Idle but not swept yet: the new flow inherits the shell's sockets, and the
            # shell closes them if the new decision denies.
            inherited = flow.state
            del self._flows[key]
        if len(self._flows) >= self.max_flows:
            # Bounded memory under a flood of distinct flows: the oldest goes first.
            oldest = min(self._flows.values(), key=lambda f: f.last_seen)
            del self._flows[oldest.key]
        flow = UdpFlow(key, decide(), now, 1, inherited)
        self._flows[key] = flow
        return flow, True

    def expire(self, now: float) -> list[UdpFlow]:
        """Remove and return the flows idle for at least the timeout."""
        idle = [f for f in self._flows.values() if now - f.last_seen >= self.idle_timeout]
        for flow in idle:
            del self._flows[flow.key]
        return idle

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self):
        return iter(list(self._flows.values()))
