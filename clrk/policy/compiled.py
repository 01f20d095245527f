"""The immutable, indexed form of one gateway's policy that decide() reads."""

from __future__ import annotations

from dataclasses import dataclass

from clrk.api.findings import Finding
from clrk.api.resolve import Condition
from clrk.api.resources import DenyResponse, GatewayDNS, Resource
from clrk.policy.index import IntervalMap
from clrk.policy.model import Agent
from clrk.policy.selectors import Selector

# Listener preference for a route's connection (SPEC 4): the deepest inspection the
# operator configured wins.  For allow-all traffic no route asked for inspection, so
# the least intrusive listener wins: terminating TLS for an arbitrary name would fail.
ROUTE_RANK = {("TLS", "Terminate"): 0, ("HTTP", None): 1, ("TLS", "Passthrough"): 2}
DEFAULT_RANK = {("TLS", "Passthrough"): 1, ("HTTP", None): 2, ("TLS", "Terminate"): 3}


@dataclass(frozen=True, slots=True)
class CompiledListener:
    name: str
    protocol: str  # TCP | TLS | HTTP | UDP
    tls_mode: str | None
    port: int | None
    index: int  # position in the gateway's list: the last tie-breaker
    route_rank: int
    default_rank: int

    @property
    def transport(self) -> str:
        return "UDP" if self.protocol == "UDP" else "TCP"


@dataclass(frozen=True, slots=True, eq=False)
class MatchEntry:
    """One `matches[]` item of one route, as attached to one gateway."""

    route: str  # namespace/name
    rule: int
    match: int
    order: tuple[int, int, int]  # (route order, rule, match): the deterministic tie-breaker
    ports: tuple[tuple[int, int], ...] | None  # merged closed intervals; None = any port
    selector: Selector | None
    listeners: tuple[CompiledListener, ...]  # attached listeners of the match's transport
    deny_policy: str | None


@dataclass(frozen=True, slots=True)
class ProtocolIndex:
    exact: dict[str, tuple[MatchEntry, ...]]
    wildcard: dict[str, tuple[MatchEntry, ...]]  # keyed by the parent of `*.parent`
    cidr4: IntervalMap[tuple[MatchEntry, int, int]]  # (entry, network, prefix length)
    cidr6: IntervalMap[tuple[MatchEntry, int, int]]
    anywhere: IntervalMap[MatchEntry]  # matches without hostnames or CIDRs, by port
    empty: bool = False  # nothing to look up: decide() skips the index entirely


@dataclass(frozen=True)
class GatewayPolicy:
    resource: Resource
    ref: str
    default_policy: str
    listeners: tuple[CompiledListener, ...]
    allow: dict[str, ProtocolIndex]  # by transport: TCP, UDP
    deny: dict[str, ProtocolIndex]
    dns: GatewayDNS
    deny_responses: dict[str, DenyResponse]  # deny policy ref -> its response
    own4: frozenset[int] = frozenset()
    own6: frozenset[int] = frozenset()


@dataclass(frozen=True)
class PolicySet:
    """Everything compiled from one resource set; what a control plane swaps atomically."""

    gateways: dict[tuple[str, str], GatewayPolicy]
    agents: dict[tuple[str, str], Agent]
    agent_gateways: dict[tuple[str, str], tuple[tuple[str, str], ...]]
    conditions: dict[tuple[str, str, str], tuple[Condition, ...]]
    findings: tuple[Finding, ...]
