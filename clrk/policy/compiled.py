"""The compiled policy: one immutable `GatewayPolicy` per gateway, the IR of clrk.

The control plane compiles a resource set once (`clrk.policy.compile`); everything
downstream reads the result and nothing reads the resources again:

- decide() runs on it (in the dialer, the CLI and the admin API);
- the translator (`clrk_xds.translate`) turns it into Envoy listeners;
- the policy stream sends it to dialers as protobuf (`clrk_runtime.policy_messages`).

A `GatewayPolicy` is plain data (listeners, match entries in evaluation order, the
agents that may use the gateway, DNS settings, deny responses) plus lookup indexes that
are derived from the match entries when it is built, so a policy decoded from the wire
is indexed exactly like one compiled here.  The gateway host's own addresses are not
part of it: they are a runtime input of decide() (`addresses.OwnAddresses`).

To extend the IR, add a field here with a default, fill it in `compile`, and give it a
field in `proto/clrk/policy/v1/policy.proto` (a dialer that must understand it to
enforce correctly needs the message's `schema` raised).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from clrk.api.findings import Finding
from clrk.api.resolve import Condition
from clrk.policy.index import ProtocolIndex, build_index
from clrk.policy.model import Agent
from clrk.policy.selectors import Selector

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TRANSPORTS = ("TCP", "UDP")

# Listener preference for a route's connection (SPEC 4): the deepest inspection the
# operator configured wins.  For allow-all traffic no route asked for inspection, so
# the least intrusive listener wins: terminating TLS for an arbitrary name would fail.
ROUTE_RANK = {("TLS", "Terminate"): 0, ("HTTP", None): 1, ("TLS", "Passthrough"): 2}
DEFAULT_RANK = {("TLS", "Passthrough"): 1, ("HTTP", None): 2, ("TLS", "Terminate"): 3}


@dataclass(frozen=True, slots=True)
class CompiledListener:
    name: str
    protocol: str  # TCP | TLS | HTTP | UDP
    tls_mode: str | None  # Terminate | Passthrough on TLS listeners, else None
    port: int | None  # the one destination port it serves; None: any
    index: int  # position in the gateway's list: the last tie-breaker
    route_rank: int = field(init=False, compare=False)
    default_rank: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        key = (self.protocol, self.tls_mode)
        object.__setattr__(self, "route_rank", ROUTE_RANK.get(key, 3))
        object.__setattr__(self, "default_rank", DEFAULT_RANK.get(key, 0))

    @property
    def transport(self) -> str:
        return "UDP" if self.protocol == "UDP" else "TCP"

    @property
    def l7(self) -> bool:
        """Envoy terminates HTTP here (HTTP, or TLS Terminate) and ext_proc sees requests."""
        return self.protocol == "HTTP" or self.tls_mode == "Terminate"


@dataclass(frozen=True, slots=True, eq=False)
class MatchEntry:
    """One `matches[]` item of one route, as attached to one gateway.

    Compared by identity: decide() keeps entries in sets and tuples on its hot path.
    """

    route: str  # namespace/name
    rule: int
    match: int
    order: tuple[int, int, int]  # (route order, rule, match): the deterministic tie-breaker
    protocol: str  # TCP | UDP
    hostnames: tuple[str, ...]  # normalised patterns, once each, as written
    networks: tuple[Network, ...]  # destination CIDRs, once each, as written
    ports: tuple[tuple[int, int], ...] | None  # merged closed intervals; None = any port
    selector: Selector | None  # None: every agent
    listeners: tuple[CompiledListener, ...]  # attached listeners of the match's transport
    deny_policy: str | None  # namespace/name of the deny policy targeting the route

    @property
    def any_destination(self) -> bool:
        return not self.hostnames and not self.networks

    def reordered(self, route_order: int) -> MatchEntry:
        """This entry with its route at another position (a route added or removed
        before it): built directly, as a reload may move a thousand of them
        (dataclasses.replace takes twice as long); a test checks every field is kept."""
        return MatchEntry(
            self.route, self.rule, self.match, (route_order, self.rule, self.match),
            self.protocol, self.hostnames, self.networks, self.ports, self.selector,
            self.listeners, self.deny_policy,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DnsSettings:
    upstream: tuple[tuple[str, int], ...] = ()  # resolvers; empty: the system's
    mode: str = "Forward"  # Forward | Filtered
    min_ttl: float = 5.0  # seconds
    max_ttl: float = 3600.0


@dataclass(frozen=True, slots=True)
class DenyResponse:
    status_code: int = 403
    message: str | None = None
    mode: str = "Enforce"  # Enforce | Report: a Report deny policy only records


@dataclass(frozen=True, slots=True)
class CompiledCredential:
    """An accepted EgressCredential on this gateway: what Envoy injects where, and the
    placeholder its tripwire looks for.  The secret itself is never part of the policy:
    `source` says where the control plane reads it."""

    ref: str  # namespace/name of the EgressCredential
    route: str  # namespace/name of the route it injects on
    hostnames: tuple[str, ...]  # narrows within the route's names; empty: all of them
    header: str  # lower-case
    prefix: str
    placeholder: str
    placeholder_env: str | None
    source: str  # file | env | secretRef
    source_ref: str  # the path, the variable, or "secret/key": never the value


@dataclass(frozen=True, eq=False)
class GatewayPolicy:
    ref: str  # namespace/name
    default_policy: str  # deny-all | allow-all
    listeners: tuple[CompiledListener, ...]
    matches: tuple[MatchEntry, ...]  # by (route order, rule, match); allow and deny
    agents: tuple[Agent, ...] = ()  # declared agents whose egressRefs name this gateway
    dns: DnsSettings = DnsSettings()
    deny_responses: Mapping[str, DenyResponse] = field(default_factory=dict)
    upstream_ca_bundle: str | None = None  # trust for TLS that Envoy re-originates
    credentials: tuple[CompiledCredential, ...] = ()  # by namespace/name
    mode: str = "Enforce"  # Enforce | Report
    # Derived from `matches` and `agents` on construction: what decide() looks up.
    allow: Mapping[str, ProtocolIndex] = field(init=False, repr=False)
    deny: Mapping[str, ProtocolIndex] = field(init=False, repr=False)
    agent_index: Mapping[tuple[str, str], Agent] = field(init=False, repr=False)
    # Deny policies in Report mode, and the policy the data path enforces (see relax).
    report_deny: frozenset[str] = field(init=False, repr=False)
    relaxed: GatewayPolicy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "deny_responses", MappingProxyType(dict(self.deny_responses)))
        for name, deny in (("allow", False), ("deny", True)):
            set_(
                self,
                name,
                MappingProxyType(
                    {
                        t: build_index(
                            e
                            for e in self.matches
                            if e.protocol == t and (e.deny_policy is not None) == deny
                        )
                        for t in TRANSPORTS
                    }
                ),
            )
        set_(self, "agent_index", MappingProxyType({(a.namespace, a.name): a for a in self.agents}))
        set_(
            self,
            "report_deny",
            frozenset(ref for ref, r in self.deny_responses.items() if r.mode == "Report"),
        )
        set_(self, "relaxed", _relax(self))

    def listener(self, name: str) -> CompiledListener | None:
        return next((lst for lst in self.listeners if lst.name == name), None)


def _relax(policy: GatewayPolicy) -> GatewayPolicy:
    """What the data path enforces: in a Report gateway, every deny route dropped and
    the default allow-all (the least intrusive listener carries what no route takes);
    in an Enforce gateway, the deny routes of Report deny policies dropped, so they open
    nothing the rest of the policy does not.  The policy itself when nothing reports.

    decide() records what the policy would deny and lets it through as this one allows
    it; the translator gives Envoy this one, so the two enforcers still agree.
    """
    if policy.mode == "Report":
        return dataclasses.replace(
            policy,
            mode="Enforce",
            default_policy="allow-all",
            matches=tuple(e for e in policy.matches if e.deny_policy is None),
            deny_responses={},
        )
    if not policy.report_deny:
        return policy
    kept = policy.report_deny.__contains__
    return dataclasses.replace(
        policy,
        matches=tuple(
            e for e in policy.matches if e.deny_policy is None or not kept(e.deny_policy)
        ),
        deny_responses={k: v for k, v in policy.deny_responses.items() if not kept(k)},
    )


@dataclass(frozen=True)
class PolicySet:
    """Everything compiled from one resource set; what a control plane swaps atomically.

    `conditions` and `findings` are the status of every object, from the same pass.
    """

    gateways: dict[tuple[str, str], GatewayPolicy]
    agents: dict[tuple[str, str], Agent]
    agent_gateways: dict[tuple[str, str], tuple[tuple[str, str], ...]]
    conditions: dict[tuple[str, str, str], tuple[Condition, ...]]
    findings: tuple[Finding, ...]
