"""The translator (SPEC 2, 7): validated resources -> Envoy resources per gateway.

Pure: no sockets, no files.  One Envoy listener per TCP, TLS or HTTP gateway listener,
bound where `clrk.nexthops` says the dialer will dial.  Each route rule that reaches the
listener becomes one named filter chain; the listener's filter-chain matcher picks it from
the PROXY TLVs and the restored destination.  A connection nothing picks is closed by
Envoy, so Envoy re-checks what the dialer decided (defence in depth).

TCP and TLS Passthrough chains run `tcp_proxy` (with a gRPC access log for the L4 allow
record); HTTP and TLS Terminate chains run the L7 stack of `translate_l7`, deny-policy
routes included: clrk_extproc answers those with the policy's HTTP response.

Order of the matcher mirrors `clrk.policy.decide`: deny routes first, then allow routes,
each by (namespace, name), rule, match.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from envoy_data_plane.envoy.config.cluster.v3 import (
    Cluster,
    ClusterDiscoveryType,
    ClusterLbPolicy,
)
from envoy_data_plane.envoy.config.core.v3 import Address, Pipe, SocketAddress
from envoy_data_plane.envoy.config.listener.v3 import (
    Filter,
    FilterChain,
    Listener,
    ListenerFilter,
)
from envoy_data_plane.envoy.extensions.filters.listener.proxy_protocol.v3 import (
    ProxyProtocol,
    ProxyProtocolKeyValuePair,
    ProxyProtocolRule,
    ProxyProtocolTlvLocation,
)
from envoy_data_plane.envoy.extensions.filters.listener.tls_inspector.v3 import TlsInspector
from envoy_data_plane.envoy.extensions.filters.network.direct_response.v3 import (
    Config as DirectResponse,
)
from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import (
    TcpProxy,
    TcpProxyTcpAccessLogOptions,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret
from envoy_data_plane.google.protobuf import Any
from envoy_data_plane.xds.type.matcher.v3 import (
    Matcher,
    MatcherMatcherList,
    MatcherMatcherListFieldMatcher,
)

from clrk.api.findings import Finding
from clrk.api.resolve import Attachment, resolve
from clrk.api.resources import Listener as GatewayListener
from clrk.api.resources import Resource, RouteMatch
from clrk.nexthops import (
    DEFAULT_BASE_PORT,
    DEFAULT_HOST,
    SOCKET_MODE,
    NextHop,
    envoy_listener_addresses,
)
from clrk.policy.selectors import compile_selector, selects
from clrk.wire import TLV_FIELDS
from clrk_xds import betterproto_speed
from clrk_xds import translate_l7 as l7
from clrk_xds import translate_matchers as tm
from clrk_xds.translate_blocked import Network, always_blocked_networks, split_by_blocked
from clrk_xds.translate_regex import MAX_PORT, intersect_ranges, merge_ranges, port_regex

__all__ = [
    "DEFAULT_BASE_PORT",
    "ORIGINAL_DST_CLUSTER",
    "TYPE_URLS",
    "GatewayResources",
    "serialize",
    "to_plain",
    "translate",
]

betterproto_speed.install()
betterproto_speed.install_wire_memo()

ORIGINAL_DST_CLUSTER = "original_dst"
LISTENER_FILTERS_TIMEOUT = datetime.timedelta(seconds=2)
CONNECT_TIMEOUT = datetime.timedelta(seconds=5)
ALL_PORTS = ((1, MAX_PORT),)
BLOCKED_CHAIN = "blocked_address"

TYPE_URLS: dict[str, str] = {
    "listener": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "cluster": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "secret": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
}

Key = tuple[str, str]
# (secret name, the route's hostname patterns) -> the Secret with its leaf certificate.
LeafSecret = Callable[[str, tuple[str, ...]], Secret]
Entry = MatcherMatcherListFieldMatcher


@dataclass(frozen=True)
class GatewayResources:
    gateway: str  # "namespace/name" = Envoy node id
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    secrets: tuple[Secret, ...] = ()  # leaf certificates of TLS Terminate routes
    findings: tuple[Finding, ...] = ()


def serialize(msg) -> bytes:
    """Protobuf wire bytes of one resource (what goes into a DiscoveryResponse Any)."""
    return bytes(msg)


def to_plain(res: GatewayResources) -> dict:
    """JSON-able dict with proto3 JSON names; stable for golden files."""
    return {
        "gateway": res.gateway,
        "listeners": [m.to_dict() for m in res.listeners],
        "clusters": [m.to_dict() for m in res.clusters],
        "secrets": [m.to_dict() for m in res.secrets],
        "findings": [
            f"{f.severity}: {f.kind}/{f.name}: {f.field}: {f.message}" for f in res.findings
        ],
    }


# --- filters --------------------------------------------------------------------------


def _filter(name: str, message) -> Filter:
    return Filter(name=name, typed_config=Any.pack(message))


def _stat_name(chain: str) -> str:
    return chain.replace("/", ".")


def _proxy_chain(name: str) -> FilterChain:
    proxy = TcpProxy(
        stat_prefix=_stat_name(name),
        cluster=ORIGINAL_DST_CLUSTER,
        access_log=[l7.tcp_access_log()],
        # One entry when the upstream connects and one when the connection ends (the
        # record is written from the end entry, with the byte counts and duration).
        access_log_options=TcpProxyTcpAccessLogOptions(flush_access_log_on_connected=True),
    )
    return FilterChain(name=name, filters=[_filter("envoy.filters.network.tcp_proxy", proxy)])


def _closing_chain(name: str) -> FilterChain:
    # direct_response with no body: accept, then close at once without any upstream.
    return FilterChain(
        name=name, filters=[_filter("envoy.filters.network.direct_response", DirectResponse())]
    )


def _listener_filters(tls: bool) -> list[ListenerFilter]:
    rules = [
        ProxyProtocolRule(tlv_type=t, on_tlv_present=ProxyProtocolKeyValuePair(key=field))
        for t, field in TLV_FIELDS.items()
    ]
    proxy_protocol = ProxyProtocol(rules=rules, tlv_location=ProxyProtocolTlvLocation.FILTER_STATE)
    out = [
        ListenerFilter(
            name="envoy.filters.listener.proxy_protocol", typed_config=Any.pack(proxy_protocol)
        )
    ]
    if tls:
        out.append(
            ListenerFilter(
                name="envoy.filters.listener.tls_inspector", typed_config=Any.pack(TlsInspector())
            )
        )
    return out


def original_dst_cluster() -> Cluster:
    return Cluster(
        name=ORIGINAL_DST_CLUSTER,
        type=ClusterDiscoveryType.ORIGINAL_DST,
        lb_policy=ClusterLbPolicy.CLUSTER_PROVIDED,
        connect_timeout=CONNECT_TIMEOUT,
    )


# --- matches --------------------------------------------------------------------------


def _selected_agents(match: RouteMatch, agents: Sequence[Resource]) -> list[Key] | None:
    """None: every agent.  Otherwise the (namespace, name) of the agents it selects,
    evaluated exactly as `clrk.policy.decide` does, since Envoy sees no labels."""
    selector = compile_selector(match.source_agents)
    if selector is None:
        return None
    return sorted((a.namespace, a.name) for a in agents if selects(selector, a.metadata.labels))


def _constraints(
    match: RouteMatch, listener: GatewayListener, agents: Sequence[Resource]
) -> list[tm.Predicate] | None:
    """Port and agent predicates of a match; None when it can never hold here."""
    ports = merge_ranges(p.interval for p in match.ports) if match.ports else ALL_PORTS
    if listener.port is not None:  # the listener serves only this destination port
        ports = intersect_ranges(ports, [(listener.port, listener.port)])
    if not ports:
        return None
    selected = _selected_agents(match, agents)
    if selected is not None and not selected:
        return None
    parts = [] if ports == ALL_PORTS else [tm.port_matches(port_regex(ports))]
    if selected is not None:
        parts.append(tm.agent_in(selected))
    return parts


def _destination(
    hostnames: Sequence[str], networks: Sequence[Network], tls: bool, stat_prefix: str
) -> tm.Predicate | None:
    """hostname OR CIDR; None when the match names neither (any destination)."""
    options = []
    if hostnames:
        by_name = [tm.authority_in(hostnames)]
        if tls:
            by_name.append(tm.sni_absent_or_in(hostnames))
        options.append(tm.all_of(by_name))
    if networks:
        options.append(tm.destination_in(networks, f"{stat_prefix}.cidr"))
    return tm.any_of(options) if options else None


def _entry(destination: tm.Predicate | None, parts: list[tm.Predicate], chain: str) -> Entry:
    """destination AND parts -> `chain`."""
    both = ([destination] if destination is not None else []) + parts
    # A match without any constraint still needs a predicate: any port string.
    predicate = tm.all_of(both) if both else tm.port_matches("^[0-9]+$")
    return tm.field_matcher(predicate, chain)


def chain_name(route: Resource, rule: int, deny: bool) -> str:
    kind = "deny" if deny else "route"
    return f"{kind}/{route.namespace}/{route.name}/rule/{rule}"


# --- listeners ------------------------------------------------------------------------


@dataclass
class _Entries:
    """Matcher entries in evaluation order (see _gateway_listener)."""

    deny: list[Entry] = field(default_factory=list)
    opened: list[Entry] = field(default_factory=list)  # CIDRs inside blocked ranges
    allow: list[Entry] = field(default_factory=list)


def is_l7(listener: GatewayListener) -> bool:
    return listener.protocol == "HTTP" or listener.tls_mode == "Terminate"


def _has_tls(listener: GatewayListener) -> bool:
    return listener.protocol == "TLS"


def _l7_rule_chain(
    gateway: str, att: Attachment, listener: GatewayListener, rule: int, name: str
) -> FilterChain:
    route = f"{att.route.namespace}/{att.route.name}"
    facts = l7.ChainFacts(gateway=gateway, listener=listener.name, route=route, rule=rule)
    if att.deny_policy is not None:
        response = att.deny_policy.spec.deny_response
        facts = l7.ChainFacts(
            gateway=gateway,
            listener=listener.name,
            route=route,
            rule=rule,
            deny_policy=f"{att.deny_policy.namespace}/{att.deny_policy.name}",
            status=response.status_code,
            message=response.message,
        )
    matches = [m for m in att.route.spec.rules[rule].matches if m.protocol == "TCP"]
    any_name = any(not m.destination_hostnames for m in matches)
    names = [] if any_name else [h for m in matches for h in m.destination_hostnames]
    secret = l7.leaf_secret_name(route) if listener.tls_mode == "Terminate" else None
    return l7.l7_chain(name, facts, domains=l7.domains_for(names), terminate_secret=secret)


def _rule_entries(
    gateway: str,
    att: Attachment,
    listener: GatewayListener,
    agents: Sequence[Resource],
    blocked: Sequence[Network],
    entries: _Entries,
) -> list[FilterChain]:
    deny = att.deny_policy is not None
    tls = _has_tls(listener)
    chains = []
    for r, rule in enumerate(att.route.spec.rules):
        name = chain_name(att.route, r, deny)
        used = False
        for m, match in enumerate(rule.matches):
            if match.protocol != "TCP":  # UDP never reaches Envoy
                continue
            parts = _constraints(match, listener, agents)
            if parts is None:
                continue
            stat = f"{_stat_name(name)}.match.{m}"
            hostnames = list(dict.fromkeys(match.destination_hostnames))
            networks = list(dict.fromkeys(match.destination_cidrs))
            if deny:  # closing (or the L7 deny answer) is safe: no blocked-address split
                entries.deny.append(
                    _entry(_destination(hostnames, networks, tls, stat), parts, name)
                )
                used = True
                continue
            ordinary, inside = split_by_blocked(networks, blocked)
            if inside:
                entries.opened.append(
                    _entry(tm.destination_in(inside, f"{stat}.opened"), parts, name)
                )
                used = True
            if hostnames or ordinary or not networks:
                entries.allow.append(
                    _entry(_destination(hostnames, ordinary, tls, stat), parts, name)
                )
                used = True
        if not used:
            continue
        if is_l7(listener):
            chains.append(_l7_rule_chain(gateway, att, listener, r, name))
        else:
            chains.append(_closing_chain(name) if deny else _proxy_chain(name))
    return chains


class _RuleMemo:
    """The entries and chains of one (route, listener) pair from earlier translations.

    Keyed by object identity: with `clrk.api.loader.ManifestCache`, a reload keeps the
    Resource objects of unchanged files, so only edited routes are rebuilt.  The value
    holds the key objects too, so an id is never reused while its entry lives.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._memo: OrderedDict[tuple, tuple] = OrderedDict()

    def entries(
        self, gateway, att, listener, agents, blocked
    ) -> tuple[_Entries, list[FilterChain]]:
        key = (
            gateway,
            id(att.route),
            id(att.deny_policy),
            id(listener),
            tuple(map(id, agents)),
            blocked,
        )
        hit = self._memo.get(key)
        if hit is not None and hit[0] is att.route and hit[1] is listener:
            self._memo.move_to_end(key)
            return hit[3], hit[4]
        entries = _Entries()
        chains = _rule_entries(gateway, att, listener, agents, blocked, entries)
        for message in (*entries.deny, *entries.opened, *entries.allow, *chains):
            betterproto_speed.freeze(message)
        self._memo[key] = (att.route, listener, (tuple(agents), att.deny_policy), entries, chains)
        while len(self._memo) > self.limit:
            self._memo.popitem(last=False)
        return entries, chains


_MEMO = _RuleMemo()


def _listener_address(hop: NextHop) -> Address:
    if isinstance(hop, str):
        return Address(pipe=Pipe(path=hop, mode=SOCKET_MODE))
    return Address(socket_address=SocketAddress(address=hop[0], port_value=hop[1]))


def _gateway_listener(
    gateway: Resource,
    listener: GatewayListener,
    address: NextHop,
    attachments: Sequence[Attachment],
    agents: Sequence[Resource],
    blocked: Sequence[Network],
) -> Listener:
    """Matcher order mirrors `clrk.policy.decide`: deny routes; allow routes' CIDRs that
    explicitly open an always-blocked range; any other always-blocked destination is
    closed; then allow routes; then the default (allow-all proxies, deny-all closes)."""
    ordered = sorted(
        (a for a in attachments if listener.name in a.listeners),
        key=lambda a: (a.deny_policy is None, a.route.namespace, a.route.name),
    )
    entries = _Entries()
    chains: list[FilterChain] = []
    blocked = tuple(blocked)
    for att in ordered:
        part, part_chains = _MEMO.entries(gateway.ref, att, listener, agents, blocked)
        entries.deny += part.deny
        entries.opened += part.opened
        entries.allow += part.allow
        chains += part_chains
    allow_all = gateway.spec.default_policy == "allow-all"
    guard = []
    if blocked and (entries.allow or allow_all):
        chains.append(_closing_chain(BLOCKED_CHAIN))
        guard = [tm.field_matcher(tm.destination_in(blocked, "blocked_address"), BLOCKED_CHAIN)]
    matchers = [*entries.deny, *entries.opened, *guard, *entries.allow]

    default = None
    if allow_all and listener.protocol == "HTTP":
        facts = l7.ChainFacts(gateway=gateway.ref, listener=listener.name)
        default = l7.l7_chain("default/allow-all", facts, domains=["*"], terminate_secret=None)
    elif allow_all:
        # TLS Terminate too: no one certificate can cover every name, so traffic that no
        # route names passes through (still re-checked and logged as L4).
        default = _proxy_chain("default/allow-all")
    elif not chains:
        # Envoy refuses a listener without filter chains; this one only closes.
        default = _closing_chain("default/deny-all")
    return Listener(
        name=listener.name,
        stat_prefix=listener.name,
        address=_listener_address(address),
        listener_filters=_listener_filters(tls=_has_tls(listener)),
        # A client that never completes the PROXY header is closed, not passed on.
        listener_filters_timeout=LISTENER_FILTERS_TIMEOUT,
        continue_on_listener_filters_timeout=False,
        filter_chains=chains,
        filter_chain_matcher=(
            Matcher(matcher_list=MatcherMatcherList(matchers=matchers)) if matchers else None
        ),
        default_filter_chain=default,
    )


def translate(
    resources: Sequence[Resource],
    *,
    rejected: frozenset[tuple[str, str, str]] = frozenset(),
    envoy_host: str = DEFAULT_HOST,
    base_port: int = DEFAULT_BASE_PORT,
    socket_dir: str | None = None,
    own_addresses: Iterable[str] = (),
    always_blocked: Sequence[Network] | None = None,
    extproc_address: tuple[str, int] | str = l7.DEFAULT_EXTPROC_ADDRESS,
    leaf_secret: LeafSecret | None = None,
    upstream_ca: str | None = None,
) -> dict[str, GatewayResources]:
    """Envoy resources for every gateway, keyed by "namespace/name" (the node id).

    `socket_dir`: Envoy listens on Unix sockets there (clrk.nexthops) instead of
    `envoy_host` ports.  `own_addresses`: the gateway host's addresses, always blocked like in
    `compile_policies`.  `always_blocked` replaces the SPEC 4 list (tests only: they can
    reach nothing but loopback, which that list blocks).  `extproc_address`: where
    clrk_extproc listens (ext_proc and access logs): (host, port) or a Unix socket path.
    `leaf_secret(name, hostnames)`: the Secret of a TLS Terminate route's leaf
    certificate (minting is not pure, so the caller supplies it); without it, chains name
    secrets the caller must serve.
    `upstream_ca`: the trust bundle for re-originated TLS of gateways that set no
    `upstreamTLS.caBundle` (default: the system bundle).
    """
    blocked = always_blocked_networks(own_addresses) if always_blocked is None else always_blocked
    resolution = resolve(resources, rejected)
    agents = [resolution.agents[k] for k in sorted(resolution.agents)]
    out: dict[str, GatewayResources] = {}
    for key in sorted(resolution.gateways):
        gateway = resolution.gateways[key]
        spec_listeners = gateway.spec.listeners
        addresses = envoy_listener_addresses(
            [(lst.name, lst.protocol) for lst in spec_listeners],
            envoy_host,
            base_port,
            socket_dir,
        )
        attachments = resolution.attachments.get(key, ())
        listeners: list[Listener] = []
        findings: list[Finding] = []
        for lst in spec_listeners:
            if lst.protocol == "UDP":
                continue  # the dialer relays UDP itself
            listeners.append(
                _gateway_listener(gateway, lst, addresses[lst.name], attachments, agents, blocked)
            )
        clusters = [original_dst_cluster(), l7.extproc_cluster(extproc_address)]
        terminating = [lst for lst in spec_listeners if lst.tls_mode == "Terminate"]
        if terminating:
            bundle = gateway.spec.upstream_tls.ca_bundle if gateway.spec.upstream_tls else None
            bundle = bundle or upstream_ca
            clusters.append(l7.original_dst_tls_cluster(bundle))
        secrets = _leaf_secrets(terminating, attachments, leaf_secret) if leaf_secret else ()
        out[gateway.ref] = GatewayResources(
            gateway=gateway.ref,
            listeners=tuple(listeners),
            clusters=tuple(clusters),
            secrets=secrets,
            findings=tuple(findings),
        )
    return out


def route_hostnames(route: Resource) -> tuple[str, ...]:
    """Every hostname pattern of a route's TCP matches, in order, once each."""
    names = (
        h
        for rule in route.spec.rules
        for m in rule.matches
        if m.protocol == "TCP"
        for h in m.destination_hostnames
    )
    return tuple(dict.fromkeys(names))


def _leaf_secrets(
    terminating: Sequence[GatewayListener],
    attachments: Sequence[Attachment],
    leaf_secret: LeafSecret,
) -> tuple[Secret, ...]:
    names = {lst.name for lst in terminating}
    wanted: dict[str, tuple[str, ...]] = {}
    for att in attachments:
        if names.intersection(att.listeners):
            route = f"{att.route.namespace}/{att.route.name}"
            wanted[l7.leaf_secret_name(route)] = route_hostnames(att.route)
    return tuple(leaf_secret(name, hosts) for name, hosts in sorted(wanted.items()))
