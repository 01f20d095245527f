"""Validated resources -> one immutable GatewayPolicy per gateway (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from clrk.api.findings import Finding, Scope, Severity
from clrk.api.resolve import Attachment, agent_gateways, resolve
from clrk.api.resources import Listener, Resource, RouteMatch
from clrk.policy.addresses import parse_ip
from clrk.policy.compiled import (
    DEFAULT_RANK,
    ROUTE_RANK,
    CompiledListener,
    GatewayPolicy,
    MatchEntry,
    PolicySet,
    ProtocolIndex,
)
from clrk.policy.index import IntervalMap
from clrk.policy.model import Agent
from clrk.policy.selectors import compile_selector

ANY_PORT = (0, 65535)


def _listener(index: int, lst: Listener) -> CompiledListener:
    mode = lst.tls_mode
    key = (lst.protocol, mode)
    return CompiledListener(
        name=lst.name,
        protocol=lst.protocol,
        tls_mode=mode,
        port=lst.port,
        index=index,
        route_rank=ROUTE_RANK.get(key, 3),
        default_rank=DEFAULT_RANK.get(key, 0),
    )


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(intervals):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


class _IndexBuilder:
    def __init__(self) -> None:
        self.exact: dict[str, list[MatchEntry]] = {}
        self.wildcard: dict[str, list[MatchEntry]] = {}
        self.cidr: dict[int, list[tuple[int, int, tuple[MatchEntry, int, int]]]] = {4: [], 6: []}
        self.anywhere: list[tuple[int, int, MatchEntry]] = []

    def add(self, entry: MatchEntry, match: RouteMatch) -> None:
        for name in dict.fromkeys(match.destination_hostnames):
            if name.startswith("*."):
                self.wildcard.setdefault(name[2:], []).append(entry)
            else:
                self.exact.setdefault(name, []).append(entry)
        for net in dict.fromkeys(match.destination_cidrs):
            low = int(net.network_address)
            high = int(net.broadcast_address)
            self.cidr[net.version].append((low, high, (entry, low, net.prefixlen)))
        if not match.destination_hostnames and not match.destination_cidrs:
            for low, high in entry.ports or (ANY_PORT,):
                self.anywhere.append((low, high, entry))

    def build(self) -> ProtocolIndex:
        by_cidr = lambda item: (-item[2], item[0].order)  # noqa: E731
        empty = not (self.exact or self.wildcard or self.cidr[4] or self.cidr[6] or self.anywhere)
        return ProtocolIndex(
            exact={k: tuple(v) for k, v in self.exact.items()},
            wildcard={k: tuple(v) for k, v in self.wildcard.items()},
            cidr4=IntervalMap(self.cidr[4], by_cidr),
            cidr6=IntervalMap(self.cidr[6], by_cidr),
            anywhere=IntervalMap(self.anywhere, lambda e: e.order),
            empty=empty,
        )


def _compile_gateway(
    gateway: Resource,
    attachments: Sequence[Attachment],
    own: Sequence[tuple[int, int]],
    findings: list[Finding],
) -> GatewayPolicy:
    listeners = tuple(_listener(i, lst) for i, lst in enumerate(gateway.spec.listeners))
    by_name = {lst.name: lst for lst in listeners}
    builders = {
        (deny, transport): _IndexBuilder() for deny in (False, True) for transport in ("TCP", "UDP")
    }
    deny_responses = {}
    # Route order: Gateway API orders by creation time, which files do not have; the
    # namespace/name order is stable and visible to the operator.
    for order, att in enumerate(
        sorted(attachments, key=lambda a: (a.route.namespace, a.route.name))
    ):
        route = att.route
        deny_ref = att.deny_policy.ref if att.deny_policy else None
        if att.deny_policy:
            deny_responses[deny_ref] = att.deny_policy.spec.deny_response
        for r, rule in enumerate(route.spec.rules):
            for m, match in enumerate(rule.matches):
                fitting = tuple(
                    by_name[n] for n in att.listeners if by_name[n].transport == match.protocol
                )
                if not fitting and not deny_ref:
                    findings.append(
                        Finding(
                            route.source.file,
                            route.source.document,
                            route.kind,
                            route.name,
                            f"spec.rules[{r}].matches[{m}].protocol",
                            f"{match.protocol} fits none of the listeners it attaches to on"
                            f" {gateway.ref} ({', '.join(att.listeners)}); it allows nothing",
                            Severity.WARNING,
                            Scope.OBJECT,
                        )
                    )
                entry = MatchEntry(
                    route=route.ref,
                    rule=r,
                    match=m,
                    order=(order, r, m),
                    ports=merge_intervals(p.interval for p in match.ports) if match.ports else None,
                    selector=compile_selector(match.source_agents),
                    listeners=fitting,
                    deny_policy=deny_ref,
                )
                builders[(deny_ref is not None, match.protocol)].add(entry, match)
    return GatewayPolicy(
        resource=gateway,
        ref=gateway.ref,
        default_policy=gateway.spec.default_policy,
        listeners=listeners,
        allow={t: builders[(False, t)].build() for t in ("TCP", "UDP")},
        deny={t: builders[(True, t)].build() for t in ("TCP", "UDP")},
        dns=gateway.spec.dns,
        deny_responses=deny_responses,
        own4=frozenset(v for ver, v in own if ver == 4),
        own6=frozenset(v for ver, v in own if ver == 6),
    )


def compile_policies(
    resources: Sequence[Resource],
    own_addresses: Iterable[str] = (),
    rejected: frozenset[tuple[str, str, str]] = frozenset(),
) -> PolicySet:
    """Compile every gateway of a schema-valid resource set.

    `own_addresses` are the gateway host's addresses: always blocked (SPEC 4 step 2).
    `rejected` names documents that failed validation, for clearer reference errors.
    """
    own = [parse_ip(str(ipaddress.ip_address(a))) for a in own_addresses]
    resolution = resolve(resources, rejected)
    findings = list(resolution.findings)
    gateways = {
        key: _compile_gateway(gw, resolution.attachments.get(key, ()), own, findings)
        for key, gw in sorted(resolution.gateways.items())
    }
    agents = {
        key: Agent(res.namespace, res.name, dict(res.metadata.labels))
        for key, res in resolution.agents.items()
    }
    return PolicySet(
        gateways=gateways,
        agents=agents,
        agent_gateways={k: tuple(agent_gateways(r)) for k, r in resolution.agents.items()},
        conditions=resolution.conditions,
        findings=tuple(findings),
    )
