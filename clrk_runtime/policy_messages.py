"""The policy stream's messages (proto/clrk/policy/v1), shared by the control plane, which
sends a gateway's compiled policy, and the dialer, which decodes it and decides with it.

`encode_policy` / `decode_policy` translate between `clrk.policy.compiled.GatewayPolicy`
and its protobuf message.  Decoding checks the message's structure (every reference
resolves, every number is in range, every enum is known) and raises `PolicyDecodeError`
otherwise, so a bad or newer message never half-applies: the dialer keeps its last good
policy.  It does not validate resources again; that happened once, in the control plane.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Mapping

from google.protobuf import json_format

from clrk.policy.compiled import (
    CompiledCredential,
    CompiledListener,
    DenyResponse,
    DnsSettings,
    GatewayPolicy,
    MatchEntry,
)
from clrk.policy.model import Agent
from clrk.policy.selectors import Requirement, Selector
from clrk_runtime.protos import load as _load_pb2

pb2 = _load_pb2()

SERVICE = "clrk.policy.v1.PolicyStream"
METHOD = "Watch"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
# What a PolicyUpdate's `policy` needs its reader to understand (see the .proto).
SCHEMA = 1


class PolicyDecodeError(ValueError):
    """A policy message this dialer cannot enforce as sent."""


def _names(enum, prefix: str) -> dict[str, int]:
    """{'TCP': PROTOCOL_TCP, ...}: the message enum by the name the IR uses."""
    return {n.removeprefix(prefix): v for n, v in enum.items() if not n.endswith("UNSPECIFIED")}


PROTOCOLS = _names(pb2.Protocol, "PROTOCOL_")
TLS_MODES = {None: pb2.TLS_MODE_NONE, "Passthrough": pb2.TLS_MODE_PASSTHROUGH}
TLS_MODES["Terminate"] = pb2.TLS_MODE_TERMINATE
DEFAULT_POLICIES = {"deny-all": pb2.DEFAULT_POLICY_DENY_ALL}
DEFAULT_POLICIES["allow-all"] = pb2.DEFAULT_POLICY_ALLOW_ALL
MODES = {"Enforce": pb2.MODE_ENFORCE, "Report": pb2.MODE_REPORT}
DNS_MODES = {"Forward": pb2.DNS_MODE_FORWARD, "Filtered": pb2.DNS_MODE_FILTERED}
OPERATORS = {"In": pb2.OPERATOR_IN, "NotIn": pb2.OPERATOR_NOT_IN}
OPERATORS |= {"Exists": pb2.OPERATOR_EXISTS, "DoesNotExist": pb2.OPERATOR_DOES_NOT_EXIST}


# --- encoding ----------------------------------------------------------------------------


def _selector(selector: Selector) -> pb2.Selector:
    return pb2.Selector(
        requirements=[
            pb2.Requirement(operator=OPERATORS[op], key=key, values=sorted(values))
            for op, key, values in selector
        ]
    )


def _match(entry: MatchEntry, route_order: bool = True) -> pb2.Match:
    """`route_order`: False leaves it out (unset), for bytes that hold wherever the
    route moves."""
    msg = pb2.Match(
        route=entry.route,
        rule=entry.rule,
        match=entry.match,
        route_order=entry.order[0] if route_order else 0,
        protocol=PROTOCOLS[entry.protocol],
        hostnames=entry.hostnames,
        cidrs=[str(net) for net in entry.networks],
        ports=[pb2.PortRange(low=lo, high=hi) for lo, hi in entry.ports or ()],
        listeners=[lst.name for lst in entry.listeners],
        deny_policy=entry.deny_policy or "",
    )
    if entry.selector is not None:
        msg.selector.CopyFrom(_selector(entry.selector))
    return msg


def _match_key(entry: MatchEntry) -> tuple:
    """Everything `_match` reads of an entry but the route's order (MatchEntry compares
    by identity)."""
    return (
        entry.route,
        entry.rule,
        entry.match,
        entry.protocol,
        entry.hostnames,
        entry.networks,
        entry.ports,
        entry.selector,
        tuple(lst.name for lst in entry.listeners),
        entry.deny_policy,
    )


class MatchBytes:
    """The wire bytes of the matches one gateway's last update held, by content, kept
    by the caller across updates: a reload changes few matches, and encoding every one
    again was most of an update's cost (1,000 matches: ~8 of ~10 ms).  Kept without the
    route's order, which a route added before moves: the message sets it."""

    def __init__(self) -> None:
        self._last: dict[tuple, bytes] = {}

    def of(self, entries: tuple[MatchEntry, ...]) -> list[bytes]:
        """Each entry's bytes; only those of `entries` are kept for the next call."""
        now: dict[tuple, bytes] = {}
        out = []
        for entry in entries:
            key = _match_key(entry)
            raw = self._last.get(key)
            if raw is None:
                raw = _match(entry, route_order=False).SerializeToString(deterministic=True)
            now[key] = raw
            out.append(raw)
        self._last = now
        return out


def encode_policy(policy: GatewayPolicy, matches: MatchBytes | None = None) -> pb2.GatewayPolicy:
    """The message of `policy`; `matches`: reuse the bytes of unchanged matches (the
    message is the same)."""
    msg = _encode_policy(policy, [] if matches is not None else policy.matches)
    if matches is not None:
        for entry, raw in zip(policy.matches, matches.of(policy.matches), strict=True):
            match = msg.matches.add()
            match.MergeFromString(raw)
            match.route_order = entry.order[0]
    return msg


def _encode_policy(policy: GatewayPolicy, entries) -> pb2.GatewayPolicy:
    dns = policy.dns
    return pb2.GatewayPolicy(
        ref=policy.ref,
        default_policy=DEFAULT_POLICIES[policy.default_policy],
        listeners=[
            pb2.Listener(
                name=lst.name,
                protocol=PROTOCOLS[lst.protocol],
                tls_mode=TLS_MODES[lst.tls_mode],
                port=lst.port or 0,
            )
            for lst in policy.listeners
        ],
        matches=[_match(e) for e in entries],
        agents=[
            pb2.Agent(namespace=a.namespace, name=a.name, labels=dict(a.labels))
            for a in policy.agents
        ],
        dns=pb2.Dns(
            upstream=[pb2.Resolver(address=a, port=p) for a, p in dns.upstream],
            mode=DNS_MODES[dns.mode],
            min_ttl_seconds=dns.min_ttl,
            max_ttl_seconds=dns.max_ttl,
        ),
        deny_responses=[
            pb2.DenyResponse(
                deny_policy=ref, status_code=r.status_code, message=r.message, mode=MODES[r.mode]
            )
            for ref, r in sorted(policy.deny_responses.items())
        ],
        upstream_ca_bundle=policy.upstream_ca_bundle or "",
        mode=MODES[policy.mode],
        credentials=[
            pb2.Credential(
                ref=c.ref,
                route=c.route,
                hostnames=c.hostnames,
                header=c.header,
                prefix=c.prefix,
                placeholder=c.placeholder,
                placeholder_env=c.placeholder_env or "",
                source=c.source,
                source_ref=c.source_ref,
            )
            for c in policy.credentials
        ],
    )


def policy_update(
    gateway: str, policy: GatewayPolicy | None, matches: MatchBytes | None = None
) -> pb2.PolicyUpdate:
    """The update for `gateway` ("namespace/name"); None: it does not exist (anymore).
    `matches`: as `encode_policy`'s."""
    update = pb2.PolicyUpdate(gateway=gateway, schema=SCHEMA)
    if policy is not None:
        update.policy.CopyFrom(encode_policy(policy, matches))
    body = update.policy.SerializeToString(deterministic=True) if policy is not None else b""
    update.version = hashlib.sha256(f"{SCHEMA}\0".encode() + body).hexdigest()[:16]
    return update


# --- decoding ----------------------------------------------------------------------------


def _known(value: int, table: Mapping, what: str):
    for name, number in table.items():
        if number == value:
            return name
    raise PolicyDecodeError(f"{what}: unknown value {value}")


def _ref(text: str, what: str) -> str:
    namespace, sep, name = text.partition("/")
    if not (sep and namespace and name) or "/" in name:
        raise PolicyDecodeError(f"{what}: {text!r} is not 'namespace/name'")
    return text


def _port(value: int, what: str) -> int:
    if not 0 <= value <= 65535:
        raise PolicyDecodeError(f"{what}: {value} is not a port")
    return value


def _listeners(msg: pb2.GatewayPolicy) -> tuple[CompiledListener, ...]:
    out = []
    for i, m in enumerate(msg.listeners):
        what = f"listeners[{i}]"
        protocol = _known(m.protocol, PROTOCOLS, f"{what}.protocol")
        tls_mode = _known(m.tls_mode, TLS_MODES, f"{what}.tls_mode")
        if not m.name or any(lst.name == m.name for lst in out):
            raise PolicyDecodeError(f"{what}.name: {m.name!r} is empty or repeated")
        if (protocol == "TLS") != (tls_mode is not None):
            raise PolicyDecodeError(f"{what}.tls_mode: does not fit a {protocol} listener")
        out.append(CompiledListener(m.name, protocol, tls_mode, _port(m.port, what) or None, i))
    return tuple(out)


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise PolicyDecodeError(f"{what}: {exc}") from None


def _decode_selector(msg: pb2.Selector, what: str) -> Selector:
    reqs: list[Requirement] = []
    for i, r in enumerate(msg.requirements):
        op = _known(r.operator, OPERATORS, f"{what}.requirements[{i}].operator")
        if (op in ("In", "NotIn")) != bool(r.values):
            raise PolicyDecodeError(f"{what}.requirements[{i}]: values do not fit {op}")
        reqs.append((op, r.key, frozenset(r.values)))
    return tuple(reqs)


def _decode_match(
    m: pb2.Match, i: int, listeners: Mapping[str, CompiledListener], denies: Mapping
) -> MatchEntry:
    what = f"matches[{i}]"
    protocol = _known(m.protocol, PROTOCOLS, f"{what}.protocol")
    if protocol not in ("TCP", "UDP"):
        raise PolicyDecodeError(f"{what}.protocol: {protocol} is not a transport")
    ports = []
    for p in m.ports:
        if not (_port(p.low, f"{what}.ports") <= _port(p.high, f"{what}.ports")):
            raise PolicyDecodeError(f"{what}.ports: {p.low} > {p.high}")
        ports.append((p.low, p.high))
    fitting = []
    for name in m.listeners:
        lst = listeners.get(name)
        if lst is None or lst.transport != protocol:
            raise PolicyDecodeError(f"{what}.listeners: no {protocol} listener {name!r}")
        fitting.append(lst)
    if m.deny_policy and m.deny_policy not in denies:
        raise PolicyDecodeError(f"{what}.deny_policy: {m.deny_policy!r} has no deny response")
    if any(not h or not h.isascii() or h != h.lower() for h in m.hostnames):
        raise PolicyDecodeError(f"{what}.hostnames: not normalised names")
    return MatchEntry(
        route=_ref(m.route, f"{what}.route"),
        rule=m.rule,
        match=m.match,
        order=(m.route_order, m.rule, m.match),
        protocol=protocol,
        hostnames=tuple(m.hostnames),
        networks=tuple(_network(c, f"{what}.cidrs") for c in m.cidrs),
        ports=tuple(ports) or None,
        selector=_decode_selector(m.selector, f"{what}.selector")
        if m.HasField("selector")
        else None,
        listeners=tuple(fitting),
        deny_policy=m.deny_policy or None,
    )


def _mode(value: int, what: str) -> str:
    # Unspecified (an older control plane) is Enforce.
    return "Enforce" if value == pb2.MODE_UNSPECIFIED else _known(value, MODES, what)


def _dns(msg: pb2.Dns) -> DnsSettings:
    upstream = []
    for r in msg.upstream:
        try:
            address = str(ipaddress.ip_address(r.address))
        except ValueError:
            raise PolicyDecodeError(f"dns.upstream: {r.address!r} is not an address") from None
        if not 1 <= r.port <= 65535:
            raise PolicyDecodeError(f"dns.upstream: {r.port} is not a port")
        upstream.append((address, r.port))
    low, high = msg.min_ttl_seconds, msg.max_ttl_seconds
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise PolicyDecodeError(f"dns: TTL bounds {low}..{high} are not an interval")
    return DnsSettings(tuple(upstream), _known(msg.mode, DNS_MODES, "dns.mode"), low, high)


CREDENTIAL_SOURCES = ("file", "env", "secretRef")


def _credentials(msg: pb2.GatewayPolicy, routes: set[str]) -> tuple[CompiledCredential, ...]:
    out = []
    for i, c in enumerate(msg.credentials):
        what = f"credentials[{i}]"
        if c.route not in routes:
            raise PolicyDecodeError(f"{what}.route: {c.route!r} has no match on this gateway")
        if c.source not in CREDENTIAL_SOURCES or not c.header or not c.placeholder:
            raise PolicyDecodeError(f"{what}: source, header or placeholder is not valid")
        out.append(
            CompiledCredential(
                ref=_ref(c.ref, f"{what}.ref"),
                route=c.route,
                hostnames=tuple(c.hostnames),
                header=c.header,
                prefix=c.prefix,
                placeholder=c.placeholder,
                placeholder_env=c.placeholder_env or None,
                source=c.source,
                source_ref=c.source_ref,
            )
        )
    return tuple(out)


class DecodedMatches:
    """The matches of the last accepted update decoded, by their wire bytes, kept by the
    dialer across updates: a reload changes few matches, and decoding every one again was
    most of applying an update (1,000 matches: ~15 ms).  An entry is reused only when the
    listeners and deny policies it was checked against are the same, and keyed without
    its route's order, which a route added before moves.

    `decode_policy` only decodes with it; the caller `keep`s the policy once it has
    accepted it, so a refused update, wherever it is refused, leaves it as it was."""

    def __init__(self) -> None:
        self._listeners: tuple[CompiledListener, ...] = ()
        self._denies: frozenset[str] = frozenset()
        self._last: dict[bytes, MatchEntry] = {}
        # The last decode's entries by their bytes, until kept or decoded over.
        self._decoded: tuple[tuple[MatchEntry, ...], dict[bytes, MatchEntry]] | None = None

    def decode(
        self,
        msg: pb2.GatewayPolicy,
        listeners: tuple[CompiledListener, ...],
        denies: Mapping[str, DenyResponse],
    ) -> tuple[tuple[CompiledListener, ...], tuple[MatchEntry, ...]]:
        """(listeners, matches) of `msg`: the listeners are the last kept policy's objects
        when they are equal, so the entries kept refer to the policy's own."""
        self._decoded = None
        last = self._last
        if listeners == self._listeners and frozenset(denies) == self._denies:
            listeners = self._listeners
        else:
            last = {}
        by_name = {lst.name: lst for lst in listeners}
        now: dict[bytes, MatchEntry] = {}
        out = []
        for i, m in enumerate(msg.matches):
            order = m.route_order
            m.route_order = 0  # the key without it; put back at once
            raw = m.SerializeToString(deterministic=True)
            m.route_order = order
            # A repeated match is decoded again: each is its own entry, as without this.
            entry = None if raw in now else last.get(raw)
            if entry is None:
                entry = _decode_match(m, i, by_name, denies)
            elif entry.order[0] != order:
                entry = entry.reordered(order)
            now.setdefault(raw, entry)
            out.append(entry)
        entries = tuple(out)
        self._decoded = (entries, now)
        return listeners, entries

    def keep(self, policy: GatewayPolicy) -> None:
        """Reuse `policy`'s entries from the next update on: call once it is accepted.  A
        policy the last decode did not give (decoded without this) changes nothing."""
        decoded, self._decoded = self._decoded, None
        if decoded is None or decoded[0] is not policy.matches:
            return
        self._listeners, self._denies = policy.listeners, frozenset(policy.deny_responses)
        self._last = decoded[1]


def decode_policy(msg: pb2.GatewayPolicy, matches: DecodedMatches | None = None) -> GatewayPolicy:
    """The compiled policy the message carries; PolicyDecodeError if it is malformed.
    `matches`: reuse the entries of unchanged matches (the policy is the same); the
    caller `matches.keep`s the policy once it accepts it."""
    listeners = _listeners(msg)
    denies: dict[str, DenyResponse] = {}
    for r in msg.deny_responses:
        if not 400 <= r.status_code <= 599:
            raise PolicyDecodeError(f"deny_responses: status {r.status_code} is not 400..599")
        message = r.message if r.HasField("message") else None
        denies[_ref(r.deny_policy, "deny_responses")] = DenyResponse(
            r.status_code, message, _mode(r.mode, "deny_responses")
        )
    agents = tuple(Agent(a.namespace, a.name, dict(a.labels)) for a in msg.agents)
    if len({(a.namespace, a.name) for a in agents}) != len(agents):
        raise PolicyDecodeError("agents: an agent is listed twice")
    if matches is not None:
        listeners, entries = matches.decode(msg, listeners, denies)
    else:
        by_name = {lst.name: lst for lst in listeners}
        entries = tuple(_decode_match(m, i, by_name, denies) for i, m in enumerate(msg.matches))
    return GatewayPolicy(
        ref=_ref(msg.ref, "ref"),
        default_policy=_known(msg.default_policy, DEFAULT_POLICIES, "default_policy"),
        listeners=listeners,
        matches=entries,
        agents=agents,
        dns=_dns(msg.dns),
        deny_responses=denies,
        upstream_ca_bundle=msg.upstream_ca_bundle or None,
        credentials=_credentials(msg, {m.route for m in entries}),
        mode=_mode(msg.mode, "mode"),
    )


def policy_from_update(
    update: pb2.PolicyUpdate, matches: DecodedMatches | None = None
) -> GatewayPolicy:
    """The policy an update carries; PolicyDecodeError when there is none to enforce.
    `matches`: as `decode_policy`'s."""
    if update.schema != SCHEMA:
        raise PolicyDecodeError(
            f"policy schema {update.schema} is not the one this dialer enforces ({SCHEMA})"
        )
    if not update.HasField("policy"):
        raise PolicyDecodeError(f"gateway {update.gateway} is not defined or not accepted")
    return decode_policy(update.policy, matches)


# --- the plain form (golden files) -------------------------------------------------------


def to_plain(policy: GatewayPolicy) -> dict:
    """The policy message in proto3 JSON: what the dialer receives, readably."""
    return json_format.MessageToDict(encode_policy(policy))


def from_plain(plain: Mapping) -> GatewayPolicy:
    return decode_policy(json_format.ParseDict(plain, pb2.GatewayPolicy()))
