"""Validated resources -> one immutable GatewayPolicy per gateway (pure).

The one place where resources become the compiled policy (see `compiled`): references
are resolved, matches flattened into entries in evaluation order, selectors compiled,
and the findings and conditions of the pass collected for status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clrk.api.findings import Finding, Scope, Severity
from clrk.api.resolve import AttachCache, Attachment, agent_gateways, resolve
from clrk.api.resources import Resource
from clrk.policy.compiled import (
    CompiledCredential,
    CompiledListener,
    DenyResponse,
    DnsSettings,
    GatewayPolicy,
    MatchEntry,
    PolicySet,
)
from clrk.policy.index import merge_intervals
from clrk.policy.model import Agent
from clrk.policy.selectors import compile_selector


def _dns(gateway: Resource) -> DnsSettings:
    dns = gateway.spec.dns
    return DnsSettings(tuple(dns.upstream), dns.mode, dns.min_ttl, dns.max_ttl)


def _mismatch(route: Resource, path: str, message: str) -> Finding:
    return Finding(
        route.source.file,
        route.source.document,
        route.kind,
        route.name,
        path,
        message,
        Severity.WARNING,
        Scope.OBJECT,
    )


def _credentials(
    attachments: Sequence[Attachment],
    listeners: Sequence[CompiledListener],
    credentials: Sequence[Resource],
) -> tuple[CompiledCredential, ...]:
    """The accepted credentials whose route reaches an L7 listener of this gateway."""
    if not credentials:
        return ()
    l7 = {lst.name for lst in listeners if lst.l7}
    routes = {a.route.ref for a in attachments if l7.intersection(a.listeners)}
    out = []
    for cred in credentials:
        spec = cred.spec
        route = f"{cred.namespace}/{spec.target_ref.name}"
        if route not in routes:
            continue
        out.append(
            CompiledCredential(
                ref=cred.ref,
                route=route,
                hostnames=tuple(dict.fromkeys(spec.hostnames)),
                header=spec.header,
                prefix=spec.prefix,
                placeholder=spec.placeholder,
                placeholder_env=spec.placeholder_env,
                source=spec.source.kind,
                source_ref=spec.source.where,
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _RouteEntries:
    """One attachment's match entries and findings, and what they were compiled from."""

    attachment: Attachment
    listeners: tuple[CompiledListener, ...]  # the gateway's, shared by its entries
    order: int
    entries: tuple[MatchEntry, ...]
    findings: tuple[Finding, ...]


class CompileCache:
    """What the last compile of the same source made per gateway and per attached route,
    reused while the objects it came from are the same (a manifest cache keeps an
    unchanged document's object, and resolution then an unchanged attachment's): a
    reload that changed one route of a thousand compiles one.  Holds only what the last
    set has, so it neither grows across reloads nor keeps a deleted object's results.
    Not thread-safe: pass one to the compiles of one reloading source, one at a time."""

    def __init__(self) -> None:
        self.attach = AttachCache()
        self.listeners: dict[int, tuple[Resource, tuple[CompiledListener, ...]]] = {}
        self.entries: dict[int, _RouteEntries] = {}  # id(attachment) -> its entries


def _listeners(gateway: Resource, last: dict, now: dict) -> tuple[CompiledListener, ...]:
    done = last.get(id(gateway))
    if done is None or done[0] is not gateway:
        listeners = tuple(
            CompiledListener(lst.name, lst.protocol, lst.tls_mode, lst.port, i)
            for i, lst in enumerate(gateway.spec.listeners)
        )
        done = (gateway, listeners)
    now[id(gateway)] = done
    return done[1]


def _route_entries(
    gateway: Resource,
    att: Attachment,
    listeners: tuple[CompiledListener, ...],
    order: int,
) -> _RouteEntries:
    by_name = {lst.name: lst for lst in listeners}
    route = att.route
    deny_ref = att.deny_policy.ref if att.deny_policy else None
    entries = []
    findings = []
    for r, rule in enumerate(route.spec.rules):
        for m, match in enumerate(rule.matches):
            fitting = tuple(
                by_name[n] for n in att.listeners if by_name[n].transport == match.protocol
            )
            if not fitting and not deny_ref:
                findings.append(
                    _mismatch(
                        route,
                        f"spec.rules[{r}].matches[{m}].protocol",
                        f"{match.protocol} fits none of the listeners it attaches to on"
                        f" {gateway.ref} ({', '.join(att.listeners)}); it allows nothing",
                    )
                )
            ports = match.ports
            entries.append(
                MatchEntry(
                    route=route.ref,
                    rule=r,
                    match=m,
                    order=(order, r, m),
                    protocol=match.protocol,
                    hostnames=tuple(dict.fromkeys(match.destination_hostnames)),
                    networks=tuple(dict.fromkeys(match.destination_cidrs)),
                    ports=merge_intervals(p.interval for p in ports) if ports else None,
                    selector=compile_selector(match.source_agents),
                    listeners=fitting,
                    deny_policy=deny_ref,
                )
            )
    return _RouteEntries(att, listeners, order, tuple(entries), tuple(findings))


def _reordered(done: _RouteEntries, order: int) -> _RouteEntries:
    """The same entries at another route position (a route added or removed before)."""
    entries = tuple(e.reordered(order) for e in done.entries)
    return _RouteEntries(done.attachment, done.listeners, order, entries, done.findings)


def _compile_gateway(
    gateway: Resource,
    attachments: Sequence[Attachment],
    agents: Sequence[Agent],
    findings: list[Finding],
    credentials: Sequence[Resource] = (),
    cache: CompileCache | None = None,
    now: CompileCache | None = None,
) -> GatewayPolicy:
    """`cache`: the last compile's results to reuse; `now`: where this one's go."""
    last = cache if cache is not None else CompileCache()
    now = now if now is not None else CompileCache()
    listeners = _listeners(gateway, last.listeners, now.listeners)
    entries: list[MatchEntry] = []
    deny_responses = {}
    # Route order: Gateway API orders by creation time, which files do not have; the
    # namespace/name order is stable and visible to the operator.
    for order, att in enumerate(
        sorted(attachments, key=lambda a: (a.route.namespace, a.route.name))
    ):
        if att.deny_policy:
            response = att.deny_policy.spec.deny_response
            deny_responses[att.deny_policy.ref] = DenyResponse(
                response.status_code, response.message, att.deny_policy.spec.mode
            )
        done = last.entries.get(id(att))
        if done is None or done.attachment is not att or done.listeners is not listeners:
            done = _route_entries(gateway, att, listeners, order)
        elif done.order != order:
            done = _reordered(done, order)
        now.entries[id(att)] = done
        entries.extend(done.entries)
        findings.extend(done.findings)
    upstream_tls = gateway.spec.upstream_tls
    return GatewayPolicy(
        ref=gateway.ref,
        default_policy=gateway.spec.default_policy,
        listeners=listeners,
        matches=tuple(entries),
        agents=tuple(agents),
        dns=_dns(gateway),
        deny_responses=deny_responses,
        upstream_ca_bundle=upstream_tls.ca_bundle if upstream_tls else None,
        credentials=_credentials(attachments, listeners, credentials),
        mode=gateway.spec.mode,
    )


def compile_policies(
    resources: Sequence[Resource],
    rejected: frozenset[tuple[str, str, str]] = frozenset(),
    secret_refs: bool = False,
    cache: CompileCache | None = None,
) -> PolicySet:
    """Compile every gateway of a schema-valid resource set.

    `rejected` names documents that failed validation, for clearer reference errors;
    `secret_refs`: the provider resolves credentials' secretRefs (Kubernetes);
    `cache`: the last compile of the same source, whose unchanged parts are reused (the
    result is the same as without it).
    """
    resolution = resolve(resources, rejected, secret_refs, cache.attach if cache else None)
    now = CompileCache()
    findings = list(resolution.findings)
    agents = {
        key: Agent(res.namespace, res.name, dict(res.metadata.labels))
        for key, res in sorted(resolution.agents.items())
    }
    refs = {key: tuple(agent_gateways(res)) for key, res in resolution.agents.items()}
    gateways = {
        key: _compile_gateway(
            gw,
            resolution.attachments.get(key, ()),
            [agent for akey, agent in agents.items() if key in refs[akey]],
            findings,
            [cred for _k, cred in sorted(resolution.credentials.items())],
            cache,
            now,
        )
        for key, gw in sorted(resolution.gateways.items())
    }
    if cache is not None:  # this set's results only: nothing of a deleted object stays
        cache.listeners, cache.entries = now.listeners, now.entries
    return PolicySet(
        gateways=gateways,
        agents=agents,
        agent_gateways=refs,
        conditions=resolution.conditions,
        findings=tuple(findings),
    )
