"""`clrk suggest`: the EgressL4Routes that would allow what the records say was denied.

Pure: records (`clrk.records.query` flat records, already selected by agent, gateway and
time) and the compiled policy in, route manifests out.  Only denials a route can lift are
read: `policy`, `no_listener` and `sni_unverified` connection denials, reported or
enforced.  Never `blocked_address` or `credential_misuse` (and not `unknown_agent`,
`sni_mismatch` or `deny_policy`: no allow route changes those).  A DNS denial alone names
no port, so it suggests nothing; the connection that follows it does.

- Exact hostnames from the hostname evidence (`clrk.dst.name`); `*.parent` only with
  `wildcards=N` and only where N sibling names of one parent were seen.
- A `/32` or `/128` CIDR only for a connection without any name.
- The ports and protocol seen, on the listener that fits the port (the least intrusive,
  as allow-all picks it: a suggestion never starts terminating TLS).
- `sourceAgents` from the agent's labels; an agent without labels gets none (the route
  then allows every agent of the gateway, which the table says).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from clrk.api.resources import API_VERSION
from clrk.policy.compiled import GatewayPolicy
from clrk.policy.decide import default_listener
from clrk.policy.model import Reason
from clrk.records.query import FlatRecord
from clrk.records.schema import (
    AGENT_NAME,
    AGENT_NAMESPACE,
    DENY_REASON,
    DIAL_DENIED,
    DST_NAME,
    GATEWAY,
    PEER_ADDRESS,
    PEER_PORT,
    TRANSPORT,
)

SUGGESTED = frozenset({Reason.POLICY, Reason.NO_LISTENER, Reason.SNI_UNVERIFIED})


@dataclass(frozen=True, order=True)
class Seen:
    """One denied destination of one agent: what a route must allow."""

    gateway: str  # namespace/name
    agent: str  # namespace/name
    listener: str
    protocol: str  # TCP | UDP
    port: int
    destination: str  # a hostname, or a /32 or /128 CIDR


@dataclass
class Suggestion:
    routes: list[dict] = field(default_factory=list)  # EgressL4Route manifests
    rows: list[tuple[str, ...]] = field(default_factory=list)  # for the table
    skipped: list[str] = field(default_factory=list)  # what no route can open, and why


def _seen(record: FlatRecord, policies: Mapping[str, GatewayPolicy]) -> Seen | str | None:
    """The destination a record asks for; a string says why it cannot be suggested."""
    attrs = record.get("attributes") or {}
    if record.get("name") != DIAL_DENIED or attrs.get(DENY_REASON) not in SUGGESTED:
        return None
    gateway, port = attrs.get(GATEWAY), attrs.get(PEER_PORT)
    agent = f"{attrs.get(AGENT_NAMESPACE) or ''}/{attrs.get(AGENT_NAME) or ''}"
    policy = policies.get(gateway) if isinstance(gateway, str) else None
    if policy is None or not isinstance(port, int) or agent.startswith("/"):
        return None
    protocol = "UDP" if attrs.get(TRANSPORT) == "udp" else "TCP"
    name = attrs.get(DST_NAME) or ""
    if not name:
        try:
            ip = ipaddress.ip_address(attrs.get(PEER_ADDRESS) or "")
        except ValueError:
            return None
        name = f"{ip}/{ip.max_prefixlen}"
    listener = default_listener(policy, protocol, port)
    if listener is None:
        return f"{agent} -> {name}:{port}/{protocol}: no listener of {gateway} serves it"
    return Seen(gateway, agent, listener.name, protocol, port, name)


def _wildcarded(names: set[str], wildcards: int) -> list[str]:
    """Exact names, with `*.parent` for each parent of at least `wildcards` siblings."""
    if wildcards < 1:
        return sorted(names)
    by_parent: dict[str, set[str]] = {}
    for name in names:
        if "/" not in name and name.count(".") >= 2:  # never `*.com`
            by_parent.setdefault(name.split(".", 1)[1], set()).add(name)
    out = set(names)
    for parent, siblings in by_parent.items():
        if len(siblings) >= wildcards:
            out -= siblings
            out.add(f"*.{parent}")
    return sorted(out)


def _route_name(agent: str, listener: str) -> str:
    name = f"suggested-{agent.replace('/', '-')}-{listener}"
    return name[:253]


def suggest(
    records: Iterable[FlatRecord],
    policies: Mapping[str, GatewayPolicy],
    wildcards: int = 0,
) -> Suggestion:
    """Routes that allow every suggestible denial in `records` (`policies` by
    "namespace/name": the gateways' listeners and agents)."""
    out = Suggestion()
    seen: set[Seen] = set()
    for record in records:
        got = _seen(record, policies)
        if isinstance(got, str):
            if got not in out.skipped:
                out.skipped.append(got)
        elif got is not None:
            seen.add(got)
    groups: dict[tuple[str, str, str], dict[tuple[str, int], set[str]]] = {}
    for s in sorted(seen):
        key = (s.gateway, s.agent, s.listener)
        groups.setdefault(key, {}).setdefault((s.protocol, s.port), set()).add(s.destination)
    for (gateway, agent, listener), by_port in sorted(groups.items()):
        policy = policies[gateway]
        namespace, _, gw_name = gateway.partition("/")
        agent_ns, _, agent_name = agent.partition("/")
        declared = policy.agent_index.get((agent_ns, agent_name))
        labels = dict(declared.labels) if declared else {}
        matches = []
        for (protocol, port), destinations in sorted(by_port.items()):
            names = {d for d in destinations if "/" not in d}
            cidrs = sorted(d for d in destinations if "/" in d)
            for kind, values in (("destinationHostnames", _wildcarded(names, wildcards)),
                                 ("destinationCIDRs", cidrs)):  # fmt: skip
                if not values:
                    continue
                match: dict = {kind: values, "ports": [{"port": port}], "protocol": protocol}
                if labels:
                    match["sourceAgents"] = {"matchLabels": labels}
                matches.append(match)
                for value in values:
                    who = agent if labels else f"{agent} (no labels: every agent)"
                    out.rows.append((gateway, who, listener, protocol, str(port), value))
        out.routes.append(
            {
                "apiVersion": API_VERSION,
                "kind": "EgressL4Route",
                "metadata": {"name": _route_name(agent, listener), "namespace": namespace},
                "spec": {
                    "parentRefs": [{"name": gw_name, "sectionName": listener}],
                    "rules": [{"matches": matches}],
                },
            }
        )
    return out
