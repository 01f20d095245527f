"""decide(): SPEC 4, the one decision function of clrk (dialer, CLI, admin API, tests)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from clrk.policy.addresses import (
    NO_OWN_ADDRESSES,
    OwnAddresses,
    blocked_ranges,
    normalise_name,
    parse_ip,
    within,
)
from clrk.policy.compiled import CompiledListener, GatewayPolicy, MatchEntry
from clrk.policy.index import ProtocolIndex
from clrk.policy.model import SNI_REASONS, Agent, Connection, Decision, Reason
from clrk.policy.selectors import selects

# A hit: (sort key, entry, hostname, where).  The key ranks exact names over wildcards
# over CIDRs (longest prefix first) over match-everything entries, then route order.
# `where` says on which of the entry's listeners the hit counts (SPEC 4: the SNI is
# evidence only on TLS listeners, and where there is one it is the only name there).
Hit = tuple[tuple, MatchEntry, str | None, int]
_EXACT, _WILDCARD, _CIDR, _ANYWHERE = 0, 1, 2, 3
ANY, PLAIN, TLS = 0, 1, 2  # every listener; only non-TLS listeners; only TLS listeners
Evidence = Collection[tuple[str, int]]  # (name, where)


def _admits(entry: MatchEntry, port: int, labels: Mapping[str, str]) -> bool:
    ports = entry.ports
    if ports is not None:
        for low, high in ports:
            if low <= port <= high:
                break
        else:
            return False
    return entry.selector is None or selects(entry.selector, labels)


def _cidr_hits(
    ix: ProtocolIndex, version: int, ip: int, port: int, labels: Mapping[str, str], inside=()
) -> list[Hit]:
    """CIDR hits; with `inside` (blocked ranges), only CIDRs that lie within one of them."""
    cidrs = ix.cidr4 if version == 4 else ix.cidr6
    return [
        ((_CIDR, -plen, entry.order, ""), entry, None, ANY)
        for entry, net, plen in cidrs.lookup(ip)
        if (not inside or within(version, net, plen, inside)) and _admits(entry, port, labels)
    ]


def _counts_on(where: int, lst: CompiledListener) -> bool:
    return where == ANY or (lst.protocol == "TLS") == (where == TLS)


def _counts_somewhere(where: int, entry: MatchEntry) -> bool:
    return where == ANY or any(_counts_on(where, lst) for lst in entry.listeners)


def _name_hits(
    ix: ProtocolIndex, port: int, labels: Mapping[str, str], evidence: Evidence
) -> list[Hit]:
    """Hits by name; a name that counts on none of an entry's listeners is no hit there."""
    out: list[Hit] = []
    exact, wildcard = ix.exact, ix.wildcard
    for name, where in evidence:
        for entry in exact.get(name, ()):
            if _admits(entry, port, labels) and _counts_somewhere(where, entry):
                out.append(((_EXACT, 0, entry.order, name), entry, name, where))
        dot = name.find(".")
        if dot > 0:
            for entry in wildcard.get(name[dot + 1 :], ()):
                if _admits(entry, port, labels) and _counts_somewhere(where, entry):
                    out.append(((_WILDCARD, 0, entry.order, name), entry, name, where))
    return out


def _hits(
    ix: ProtocolIndex,
    version: int,
    ip: int,
    port: int,
    labels: Mapping[str, str],
    evidence: Evidence,
) -> list[Hit]:
    if ix.empty:
        return []
    out = _cidr_hits(ix, version, ip, port, labels)
    out += _name_hits(ix, port, labels, evidence)
    for entry in ix.anywhere.lookup(port):
        if entry.selector is None or selects(entry.selector, labels):
            out.append(((_ANYWHERE, 0, entry.order, ""), entry, None, ANY))
    return out


def _first(hits: list[Hit]) -> Hit:
    return min(hits, key=lambda h: h[0])


def _choose(hits: list[Hit], port: int) -> tuple[CompiledListener | None, Hit]:
    """The listener (SPEC 4 preference) and the best hit that reaches it."""
    best: CompiledListener | None = None
    best_key: tuple = ()
    for _key, entry, _name, where in hits:
        for lst in entry.listeners:
            if (lst.port is None or lst.port == port) and _counts_on(where, lst):
                key = (lst.port is None, lst.route_rank, lst.index)
                if best is None or key < best_key:
                    best, best_key = lst, key
    if best is None:
        return None, _first(hits)
    return best, _first([h for h in hits if best in h[1].listeners and _counts_on(h[3], best)])


def _evidence(names: Collection[str], sni: str | None) -> tuple[Evidence, Evidence]:
    """(deny evidence, allow evidence) for the DNS-bound names and a confirmed SNI.

    Deny routes take every name and the SNI, confirmed or not: a claim can only close.
    Allow routes take the bound names on non-TLS listeners; on TLS listeners the SNI,
    when there is one, is the only name (Envoy checks it there), else the bound names.
    An SNI that is not bound (D empty) is left to the unverified step of decide().
    """
    if sni is None:
        both = [(n, ANY) for n in names]
        return both, both
    deny = [(n, ANY) for n in names if n != sni]
    deny.append((sni, ANY))
    allow = [(n, ANY if n == sni else PLAIN) for n in names]
    return deny, allow


def _by_route(
    reason: Reason,
    base: tuple[str, str, str],
    entry: MatchEntry,
    listener: CompiledListener | None,
    name: str | None,
) -> Decision:
    """A decision a route made: (gateway, agent, default policy) and the route's facts."""
    return Decision(
        reason,
        *base,
        entry.route,
        entry.rule,
        listener.name if listener else None,
        name,
        entry.deny_policy if reason is Reason.DENY_POLICY else None,
    )


def default_listener(policy: GatewayPolicy, transport: str, port: int) -> CompiledListener | None:
    fitting = [
        lst
        for lst in policy.listeners
        if lst.transport == transport and (lst.port is None or lst.port == port)
    ]
    return min(fitting, key=lambda x: (x.port is None, x.default_rank, x.index), default=None)


def decide(
    policy: GatewayPolicy,
    agent: Agent | None,
    conn: Connection,
    own: OwnAddresses = NO_OWN_ADDRESSES,
) -> Decision:
    """SPEC 4 for one connection; `own`: the gateway host's addresses (always blocked).

    Report mode: a denial the gateway (or, for `deny_policy`, the deny policy) only
    reports keeps its reason and carries `through`, the allowed decision of the policy
    the data path enforces (`GatewayPolicy.relaxed`).  Where that one denies too (no
    listener could carry the connection), its denial is the decision, enforced.
    """
    decision = _decide(policy, agent, conn, own)
    if decision.allowed or policy.relaxed is policy or not _reported(policy, decision):
        return decision
    if decision.reason in SNI_REASONS:
        # The SNI contradicts (or lacks) the DNS evidence: no name may pick a route.
        conn = Connection(conn.protocol, conn.dst_ip, conn.dst_port)
    through = _decide(policy.relaxed, agent, conn, own)
    return decision._replace(through=through) if through.allowed else through


def _reported(policy: GatewayPolicy, decision: Decision) -> bool:
    if not decision.reason.reportable:
        return False
    return policy.mode == "Report" or decision.deny_policy in policy.report_deny


def _decide(
    policy: GatewayPolicy,
    agent: Agent | None,
    conn: Connection,
    own: OwnAddresses,
) -> Decision:
    """SPEC 4 as enforced, with Report deny policies among the deny routes."""
    version, ip = parse_ip(conn.dst_ip)
    port = conn.dst_port
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    transport = conn.protocol
    if transport not in policy.allow:
        raise ValueError(f"protocol must be TCP or UDP, not {transport!r}")
    gateway, default = policy.ref, policy.default_policy

    agent_ref = None if agent is None else f"{agent.namespace}/{agent.name}"
    if own.holds(version, ip):  # the gateway itself: no CIDR opens it
        return Decision(Reason.BLOCKED_ADDRESS, gateway, agent_ref, default)
    blocked = blocked_ranges(version, ip)
    if agent is None:
        return Decision(
            Reason.BLOCKED_ADDRESS if blocked else Reason.UNKNOWN_AGENT, gateway, None, default
        )
    labels = agent.labels
    allow_ix = policy.allow[transport]

    hits: list[Hit] = []
    if blocked:
        # Only an explicit CIDR inside the blocked range opens it; names never do.
        hits = _cidr_hits(allow_ix, version, ip, port, labels, inside=blocked)
        if not hits:
            return Decision(Reason.BLOCKED_ADDRESS, gateway, agent_ref, default)

    names = {normalise_name(n) for n in conn.names} if conn.names else ()
    sni = normalise_name(conn.sni) if conn.sni else None
    if sni is not None and names and sni not in names:
        return Decision(Reason.SNI_MISMATCH, gateway, agent_ref, default, hostname=sni)
    deny_evidence, evidence = _evidence(names, sni)
    base = (gateway, agent_ref, default)

    deny_hits = _hits(policy.deny[transport], version, ip, port, labels, deny_evidence)
    if deny_hits:
        if policy.report_deny:  # an enforced deny route decides before a reported one
            deny_hits = [
                h for h in deny_hits if h[1].deny_policy not in policy.report_deny
            ] or deny_hits
        listener, (_k, entry, name, _w) = _choose(deny_hits, port)
        return _by_route(Reason.DENY_POLICY, base, entry, listener, name)

    if not blocked:
        hits = _hits(allow_ix, version, ip, port, labels, evidence)
    if hits:
        listener, (_k, entry, name, _w) = _choose(hits, port)
        if listener is not None:
            return _by_route(Reason.ALLOWED, base, entry, listener, name)
    allow_all = default == "allow-all" and not blocked
    if allow_all:
        listener = default_listener(policy, transport, port)
        if listener is not None:
            return Decision(
                Reason.ALLOWED_DEFAULT, gateway, agent_ref, default, listener=listener.name
            )
    if sni is not None and not names and not blocked:
        # Only an SNI nobody's DNS bound could still allow: on a TLS route, once the
        # dialer confirms that the name resolves to the destination (SPEC 4).
        pending = _name_hits(allow_ix, port, labels, ((sni, TLS),))
        if pending:
            listener, (_k, entry, name, _w) = _choose(pending, port)
            if listener is not None:
                return _by_route(Reason.SNI_UNVERIFIED, base, entry, listener, name)
    if allow_all:
        return Decision(Reason.NO_LISTENER, gateway, agent_ref, default)
    if hits:
        _k, entry, name, _w = _first(hits)
        return Decision(
            Reason.NO_LISTENER, gateway, agent_ref, default, entry.route, entry.rule, hostname=name
        )
    return Decision(Reason.POLICY, gateway, agent_ref, default)
