"""A deliberately naive reference for decide(): plain loops over every route, rule and
match, straight from the resource models, using the `ipaddress` module.

It shares no code with clrk.policy beyond the resource models, so the property tests
that compare the two catch indexing and ordering mistakes in the compiled engine.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V4_BLOCKED = [
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32")
]
V6_BLOCKED = [ipaddress.ip_network(n) for n in ("::/128", "::1/128", "fe80::/10", "ff00::/8")]
NAT64 = ipaddress.ip_network("64:ff9b::/96")
ROUTE_RANK = {("TLS", "Terminate"): 0, ("HTTP", None): 1, ("TLS", "Passthrough"): 2}
DEFAULT_RANK = {("TLS", "Passthrough"): 1, ("HTTP", None): 2, ("TLS", "Terminate"): 3}


@dataclass(frozen=True)
class Outcome:
    reason: str
    route: str | None = None
    rule: int | None = None
    listener: str | None = None
    hostname: str | None = None
    deny_policy: str | None = None


def _v4_blocked(addr):
    return [n for n in V4_BLOCKED if addr in n]


def _embed(prefix: int, shift: int, base_len: int, v4net) -> ipaddress.IPv6Network:
    value = prefix | (int(v4net.network_address) << shift)
    return ipaddress.IPv6Network((value, base_len + v4net.prefixlen))


def blocked_networks(addr) -> list:
    if addr.version == 4:
        return _v4_blocked(addr)
    nets = [n for n in V6_BLOCKED if addr in n]
    if addr in NAT64:
        embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        nets += [_embed(int(NAT64.network_address), 0, 96, n) for n in _v4_blocked(embedded)]
    if addr.sixtofour is not None:
        nets += [_embed(0x2002 << 112, 80, 16, n) for n in _v4_blocked(addr.sixtofour)]
    if addr.teredo is not None:
        server, client = addr.teredo
        nets += [_embed(0x20010000 << 96, 64, 32, n) for n in _v4_blocked(server)]
        if _v4_blocked(client):
            nets.append(ipaddress.ip_network("2001::/32"))
    return nets


def is_own(addr, own) -> bool:
    """The gateway's own (addresses and networks), directly or embedded in IPv6."""
    inside = [addr]
    if addr.version == 6:
        if addr in NAT64:
            inside.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if addr.sixtofour is not None:
            inside.append(addr.sixtofour)
        if addr.teredo is not None:
            inside += list(addr.teredo)
    return any(a.version == n.version and a in n for a in inside for n in own)


def selector_selects(selector, labels) -> bool:
    if selector is None:
        return True
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for expr in selector.match_expressions:
        present = expr.key in labels
        if expr.operator == "In" and not (present and labels[expr.key] in expr.values):
            return False
        if expr.operator == "NotIn" and present and labels[expr.key] in expr.values:
            return False
        if expr.operator == "Exists" and not present:
            return False
        if expr.operator == "DoesNotExist" and present:
            return False
    return True


def pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return name.endswith(suffix) and len(name) > len(suffix) and "." not in name[: -len(suffix)]
    return pattern == name


def _norm(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _attachments(resources, gw):
    """[(route, listeners, deny policy ref)] for routes attached to gateway `gw`."""
    routes = {(r.namespace, r.name): r for r in resources if r.kind == "EgressL4Route"}
    policies = sorted(
        (r for r in resources if r.kind == "EgressDenyPolicy"), key=lambda p: (p.namespace, p.name)
    )
    denied = {}
    for policy in policies:
        for target in policy.spec.targets:
            key = (policy.namespace, target.name)
            if key in routes and key not in denied:
                denied[key] = policy
    names = [lst.name for lst in gw.spec.listeners]
    out = []
    for key in sorted(routes):
        route = routes[key]
        chosen = set()
        attached = False
        for ref in route.spec.parent_refs:
            if (ref.namespace or route.namespace, ref.name) != (gw.namespace, gw.name):
                continue
            if ref.section_name is None or (key in denied and ref.section_name not in names):
                chosen.update(names)
                attached = True
            elif ref.section_name in names:
                chosen.add(ref.section_name)
                attached = True
        if attached:
            deny = denied.get(key)
            listeners = [lst for lst in gw.spec.listeners if lst.name in chosen]
            out.append((route, listeners, f"{deny.namespace}/{deny.name}" if deny else None))
    return out


class NaivePolicy:
    """The attachments worked out once; every decision is then a plain loop over them."""

    def __init__(self, resources, gateway_key, own=()):
        self.own = [ipaddress.ip_network(a, strict=False) for a in own]
        self.gw = next(
            r
            for r in resources
            if r.kind == "EgressGateway" and (r.namespace, r.name) == gateway_key
        )
        self.attachments = _attachments(resources, self.gw)

    def decide(self, agent, conn) -> Outcome:
        return _decide(self.gw, self.attachments, self.own, agent, conn)


def naive_decide(resources, gateway_key, agent, conn, own=()) -> Outcome:
    """agent: (namespace, name, labels) or None; conn: clrk.policy.Connection."""
    return NaivePolicy(resources, gateway_key, own).decide(agent, conn)


def _decide(gw, attachments, own, agent, conn) -> Outcome:
    addr = ipaddress.ip_address(conn.dst_ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if is_own(addr, own):
        return Outcome("blocked_address")
    blocked = blocked_networks(addr)
    if agent is None:
        return Outcome("blocked_address" if blocked else "unknown_agent")
    _ns, _name, labels = agent
    names = {_norm(n) for n in conn.names}
    sni = _norm(conn.sni) if conn.sni else None

    def fits(listener, match_protocol):
        return (listener.protocol == "UDP") == (match_protocol == "UDP")

    allow_hits, deny_hits, unverified = [], [], []
    for order, (route, listeners, deny_ref) in enumerate(attachments):
        for r, rule in enumerate(route.spec.rules):
            for m, match in enumerate(rule.matches):
                if match.protocol != conn.protocol:
                    continue
                if match.ports and not any(
                    p.interval[0] <= conn.dst_port <= p.interval[1] for p in match.ports
                ):
                    continue
                if not selector_selects(match.source_agents, labels):
                    continue
                fitting = [lst for lst in listeners if fits(lst, match.protocol)]
                sink = deny_hits if deny_ref else allow_hits
                ref = f"{route.namespace}/{route.name}"
                base = (order, r, m)
                found = []
                for net in match.destination_cidrs:
                    if net.version == addr.version and addr in net:
                        opens = any(net.subnet_of(b) for b in blocked if b.version == net.version)
                        found.append(((2, -net.prefixlen, base, ""), None, opens, fitting))
                for pattern in match.destination_hostnames:
                    for name in sorted(names | ({sni} if sni else set())):
                        if not pattern_matches(pattern, name):
                            continue
                        kind = 1 if pattern.startswith("*.") else 0
                        if deny_ref:  # deny routes take every name and the SNI
                            found.append(((kind, 0, base, name), name, False, fitting))
                            continue
                        # SPEC 4: on TLS listeners the SNI is the only name (bound, or
                        # left for confirmation); elsewhere only bound names count.
                        usable = [
                            lst
                            for lst in fitting
                            if (
                                (name == sni if sni else name in names)
                                if lst.protocol == "TLS"
                                else name in names
                            )
                        ]
                        if name == sni and not names:
                            unverified.append(
                                {"key": (kind, 0, base, name), "route": ref, "rule": r,
                                 "name": name, "listeners": usable}
                            )  # fmt: skip
                        elif usable:
                            found.append(((kind, 0, base, name), name, False, usable))
                        elif name in names and (not sni or name == sni):
                            # a match no listener serves: `no_listener`, below
                            found.append(((kind, 0, base, name), name, False, []))
                if not match.destination_hostnames and not match.destination_cidrs:
                    found.append(((3, 0, base, ""), None, False, fitting))
                for key, name, opens, where in found:
                    sink.append(
                        {
                            "key": key,
                            "route": ref,
                            "rule": r,
                            "name": name,
                            "listeners": where,
                            "deny": deny_ref,
                            "opens": opens,
                        }
                    )

    if blocked:
        allow_hits = [h for h in allow_hits if h["opens"]]
        if not allow_hits:
            return Outcome("blocked_address")
    if sni and names and sni not in names:
        return Outcome("sni_mismatch", hostname=sni)

    def usable(lst):
        return lst.port is None or lst.port == conn.dst_port

    def choose(hits):
        candidates = [
            ((lst.port is None, ROUTE_RANK.get((lst.protocol, lst.tls_mode), 3), i), lst)
            for h in hits
            for i, lst in enumerate(gw.spec.listeners)
            if lst in h["listeners"] and usable(lst)
        ]
        if not candidates:
            return None, min(hits, key=lambda h: h["key"])
        best = min(candidates, key=lambda c: c[0])[1]
        return best, min((h for h in hits if best in h["listeners"]), key=lambda h: h["key"])

    if deny_hits:
        lst, hit = choose(deny_hits)
        return Outcome(
            "deny_policy",
            hit["route"],
            hit["rule"],
            lst.name if lst else None,
            hit["name"],
            hit["deny"],
        )
    if allow_hits:
        lst, hit = choose(allow_hits)
        if lst is not None:
            return Outcome("allowed", hit["route"], hit["rule"], lst.name, hit["name"])
    allow_all = gw.spec.default_policy == "allow-all" and not blocked
    if allow_all:
        transport = [
            ((lst.port is None, DEFAULT_RANK.get((lst.protocol, lst.tls_mode), 0), i), lst)
            for i, lst in enumerate(gw.spec.listeners)
            if fits(lst, conn.protocol) and usable(lst)
        ]
        if transport:
            return Outcome("allowed_default", listener=min(transport, key=lambda c: c[0])[1].name)
    if unverified and not blocked:
        lst, hit = choose(unverified)
        if lst is not None:
            return Outcome("sni_unverified", hit["route"], hit["rule"], lst.name, hit["name"])
    if allow_all:
        return Outcome("no_listener")
    if allow_hits:
        hit = min(allow_hits, key=lambda h: h["key"])
        return Outcome("no_listener", hit["route"], hit["rule"], hostname=hit["name"])
    return Outcome("policy")
