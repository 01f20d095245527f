"""The translator (SPEC 2, 7): a compiled policy -> Envoy resources per gateway.

Pure: no sockets, no files.  Its input is `clrk.policy.compiled.GatewayPolicy`, the same
object decide() runs on and the policy stream sends, so the resources are not read
again here.  One Envoy listener per TCP, TLS or HTTP gateway listener, bound where
`clrk.nexthops` says the dialer will dial.  Each route rule that reaches the listener
becomes one named filter chain; the listener's filter-chain matcher picks it from the
PROXY TLVs and the restored destination.  A connection nothing picks is closed by Envoy,
so Envoy re-checks what the dialer decided (defence in depth).

TCP and TLS Passthrough chains run `tcp_proxy` (with a gRPC access log for the L4 allow
record); HTTP and TLS Terminate chains run the L7 stack of `translate_l7`, deny-policy
routes included: clrk_extproc answers those with the policy's HTTP response.

The matcher's order follows decide(): deny routes first, then allow routes, each in the
compiled order (route namespace/name, rule, match).  That they agree is a test
(tests/xds/test_decide_vs_envoy.py), not a promise of this comment.
"""

from __future__ import annotations

import contextlib
import datetime
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import count, groupby
from operator import itemgetter

from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
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
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret
from envoy_data_plane.xds.type.matcher.v3 import (
    Matcher,
    MatcherMatcherList,
    MatcherMatcherListFieldMatcher,
)

from clrk.nexthops import (
    DEFAULT_BASE_PORT,
    DEFAULT_HOST,
    SOCKET_MODE,
    NextHop,
    envoy_listener_addresses,
)
from clrk.policy import GatewayPolicy, PolicySet
from clrk.policy.compiled import CompiledCredential, CompiledListener, MatchEntry
from clrk.policy.l7_chains import needs_ext_proc
from clrk.policy.selectors import Selector, selects
from clrk.wire import ALLOW_ALL_CHAIN, ROUTE_CHAIN_PREFIX, TLV_FIELDS, ChainFacts, proxying_chain
from clrk_xds import betterproto_speed
from clrk_xds import translate_l7 as l7
from clrk_xds import translate_matchers as tm
from clrk_xds.betterproto_speed import build, pack
from clrk_xds.translate_blocked import (
    Network,
    always_blocked_networks,
    own_networks,
    split_by_blocked,
)
from clrk_xds.translate_regex import MAX_PORT, intersect_ranges, port_regex

__all__ = [
    "DEFAULT_BASE_PORT",
    "ORIGINAL_DST_CLUSTER",
    "TYPE_URLS",
    "ChainCache",
    "GatewayResources",
    "serialize",
    "to_plain",
    "translate",
    "translate_gateway",
]

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
# A credential -> the Secret with its value, read from its source (not pure: the caller's).
CredentialSecret = Callable[[CompiledCredential], Secret]
Entry = MatcherMatcherListFieldMatcher


@dataclass(frozen=True)
class GatewayResources:
    gateway: str  # "namespace/name" = Envoy node id
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    secrets: tuple[Secret, ...] = ()  # leaf certificates of TLS Terminate routes


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
    }


# --- filters --------------------------------------------------------------------------


def _filter(name: str, message) -> Filter:
    return build(Filter, name=name, typed_config=pack(message))


def _stat_name(chain: str) -> str:
    return chain.replace("/", ".")


def _proxy_chain(name: str, access_log: AccessLog | None) -> FilterChain:
    """`access_log`: the L4 access log of a proxying chain on an L7 listener
    (`_chain_access_log`); None on a TCP or TLS Passthrough listener, which logs every
    connection itself (`_listener_access_log`)."""
    proxy = build(
        TcpProxy,
        stat_prefix=_stat_name(name),
        cluster=ORIGINAL_DST_CLUSTER,
        # One entry, when the connection ends: the record is written from it, with the
        # byte counts and duration (an entry when the upstream connects, which nobody
        # reads, cost clrk_extproc a third of its CPU per connection, Envoy a tenth).
        access_log=[] if access_log is None else [access_log],
    )
    return build(
        FilterChain, name=name, filters=[_filter("envoy.filters.network.tcp_proxy", proxy)]
    )


def _chain_access_log(listener: CompiledListener) -> AccessLog | None:
    """The L4 access log every proxying chain of an L7 `listener` carries (its other
    chains log each request), built and serialized once per listener: building it per
    chain was most of a cold translation (10,000 routes).  None on other listeners:
    see `_listener_access_log`."""
    if not listener.l7:
        return None
    access_log = l7.tcp_access_log(listener.name)
    betterproto_speed.freeze(access_log)
    return access_log


def _listener_access_log(listener: CompiledListener, chains: Sequence[FilterChain]) -> list:
    """A TCP or TLS Passthrough listener's L4 access log, once for all its chains: in
    each chain's tcp_proxy it was about half of what Envoy hashes and compares on every
    listener update.  Only where a chain proxies (`clrk.wire.proxying_chain`, which the
    log's reader uses too)."""
    if listener.l7 or not any(proxying_chain(c.name) for c in chains):
        return []
    return [l7.tcp_access_log(listener.name, of_listener=True)]


def _closing_chain(name: str) -> FilterChain:
    # direct_response with no body: accept, then close at once without any upstream.
    closing = _filter("envoy.filters.network.direct_response", build(DirectResponse))
    return build(FilterChain, name=name, filters=[closing])


def _listener_filters(tls: bool) -> list[ListenerFilter]:
    rules = [
        build(
            ProxyProtocolRule,
            tlv_type=int(t),  # an IntEnum member: the field takes a plain int
            on_tlv_present=build(ProxyProtocolKeyValuePair, key=field),
        )
        for t, field in TLV_FIELDS.items()
    ]
    proxy_protocol = build(
        ProxyProtocol, rules=rules, tlv_location=ProxyProtocolTlvLocation.FILTER_STATE
    )
    out = [
        build(
            ListenerFilter,
            name="envoy.filters.listener.proxy_protocol",
            typed_config=pack(proxy_protocol),
        )
    ]
    if tls:
        out.append(
            build(
                ListenerFilter,
                name="envoy.filters.listener.tls_inspector",
                typed_config=pack(build(TlsInspector)),
            )
        )
    return out


def original_dst_cluster() -> Cluster:
    return build(
        Cluster,
        name=ORIGINAL_DST_CLUSTER,
        type=ClusterDiscoveryType.ORIGINAL_DST,
        lb_policy=ClusterLbPolicy.CLUSTER_PROVIDED,
        connect_timeout=CONNECT_TIMEOUT,
    )


# --- matches --------------------------------------------------------------------------


def _constraints(
    entry: MatchEntry, listener: CompiledListener, selected: tuple[Key, ...] | None
) -> list[tm.Predicate] | None:
    """Port and agent predicates of a match; None when it can never hold here."""
    ports = entry.ports or ALL_PORTS
    if listener.port is not None:  # the listener serves only this destination port
        ports = intersect_ranges(ports, [(listener.port, listener.port)])
    if not ports:
        return None
    if selected is not None and not selected:
        return None
    parts = [] if ports == ALL_PORTS else [tm.port_matches(port_regex(ports))]
    if selected is not None:
        parts.append(tm.agent_in(selected))
    return parts


def _destination(
    hostnames: Sequence[str],
    networks: Sequence[Network],
    tls: bool,
    stat_prefix: str,
    deny: bool = False,
) -> tm.Predicate | None:
    """hostname OR CIDR; None when the match names neither (any destination).

    By name, on TLS listeners: an allow match needs the dialer's name and an SNI (if
    any) that agrees; a deny match takes either, as decide() denies on any bound name
    and on the SNI, confirmed or not.
    """
    options = []
    if hostnames and tls and deny:
        options += [tm.authority_in(hostnames), tm.sni_in(hostnames)]
    elif hostnames:
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


def chain_name(route: str, rule: int, deny: bool) -> str:
    """`route/NAMESPACE/NAME/rule/N` (or `deny/...`): the chain of one rule of a route."""
    return f"{'deny/' if deny else ROUTE_CHAIN_PREFIX}{route}/rule/{rule}"


# --- listeners ------------------------------------------------------------------------


@dataclass
class _Entries:
    """Matcher entries in evaluation order (see _gateway_listener)."""

    deny: list[Entry] = field(default_factory=list)
    opened: list[Entry] = field(default_factory=list)  # CIDRs inside blocked ranges
    allow: list[Entry] = field(default_factory=list)


def _l7_rule_chain(
    policy: GatewayPolicy,
    listener: CompiledListener,
    matches: Sequence[MatchEntry],
    name: str,
) -> FilterChain:
    first = matches[0]
    facts = ChainFacts(
        gateway=policy.ref, listener=listener.name, route=first.route, rule=first.rule
    )
    if first.deny_policy is not None:
        response = policy.deny_responses[first.deny_policy]
        facts = ChainFacts(
            gateway=policy.ref,
            listener=listener.name,
            route=first.route,
            rule=first.rule,
            deny_policy=first.deny_policy,
            status=response.status_code,
            message=response.message,
        )
    any_name = any(not m.hostnames for m in matches)
    names = [] if any_name else [h for m in matches for h in m.hostnames]
    secret = l7.leaf_secret_name(first.route) if listener.tls_mode == "Terminate" else None
    # A deny chain answers every request with its deny response: nothing to inject.
    injected = () if first.deny_policy else credentials_of(policy, first.route)
    return l7.l7_chain(
        name,
        facts,
        domains=l7.domains_for(names),
        terminate_secret=secret,
        injected=injected,
        known=policy.credentials,
        ext_proc=needs_ext_proc(policy, matches),
    )


def credentials_of(policy: GatewayPolicy, route: str) -> tuple[CompiledCredential, ...]:
    return tuple(c for c in policy.credentials if c.route == route)


def _route_parts(
    policy: GatewayPolicy,
    route: Sequence[MatchEntry],
    listener: CompiledListener,
    selected: Callable[[Selector | None], tuple[Key, ...] | None],
    blocked: Sequence[Network],
    access_log: AccessLog | None,
) -> tuple[_Entries, list[FilterChain]]:
    """The matcher entries and filter chains of one route's TCP matches on `listener`."""
    deny = route[0].deny_policy is not None
    tls = listener.protocol == "TLS"
    entries = _Entries()
    chains = []
    for rule, group in groupby(route, key=lambda e: e.rule):
        matches = list(group)
        name = chain_name(matches[0].route, rule, deny)
        used = False
        for entry in matches:
            parts = _constraints(entry, listener, selected(entry.selector))
            if parts is None:
                continue
            stat = f"{_stat_name(name)}.match.{entry.match}"
            hostnames, networks = entry.hostnames, entry.networks
            if deny:  # closing (or the L7 deny answer) is safe: no blocked-address split
                entries.deny.append(
                    _entry(_destination(hostnames, networks, tls, stat, deny=True), parts, name)
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
        if listener.l7 and _attached(matches[0], listener):
            chains.append(_l7_rule_chain(policy, listener, matches, name))
        else:
            # A deny route on a listener it does not attach to only closes: the dialer
            # never sends it there, and no deny answer (or leaf certificate) is set up.
            chains.append(_closing_chain(name) if deny else _proxy_chain(name, access_log))
    return entries, chains


class ChainCache:
    """The matcher entries and filter chains of (route, listener) pairs from earlier
    translations, keyed by everything they are built from, so a reload rebuilds only
    the routes that changed.  The caller owns it (the provider keeps one across
    reloads); `translate` without one builds everything.

    Creating one installs `betterproto_speed`: a cached chain keeps its wire bytes, and
    serializing it again would cost most of what the cache saves.
    """

    def __init__(self, limit: int = 50_000) -> None:
        betterproto_speed.install()
        self.limit = limit
        self._memo: OrderedDict[tuple, tuple[_Entries, list[FilterChain]]] = OrderedDict()
        self._contexts: dict[tuple, int] = {}
        self._next_context = count()

    def context(self, shared: tuple) -> int:
        """A small number standing for what every route of one listener shares (the
        listener, the blocked ranges, ...): hashed and compared once per translation,
        not once per route; a key holding it hashes in a fraction of the time."""
        token = self._contexts.get(shared)
        if token is None:
            if len(self._contexts) >= self.limit:
                self._contexts.clear()  # fresh numbers: the old keys only age out
            token = self._contexts.setdefault(shared, next(self._next_context))
        return token

    def get(self, key: tuple) -> tuple[_Entries, list[FilterChain]] | None:
        hit = self._memo.get(key)
        if hit is not None:
            # Tolerates a second thread (an admin API preflight) evicting it meanwhile.
            with contextlib.suppress(KeyError):
                self._memo.move_to_end(key)
        return hit

    def put(self, key: tuple, value: tuple[_Entries, list[FilterChain]]) -> None:
        entries, chains = value
        for message in (*entries.deny, *entries.opened, *entries.allow, *chains):
            betterproto_speed.freeze(message)
        self._memo[key] = value
        while len(self._memo) > self.limit:
            with contextlib.suppress(KeyError):
                self._memo.popitem(last=False)


def _route_key(route: Sequence[MatchEntry]) -> tuple:
    return tuple(
        (e.route, e.rule, e.match, e.hostnames, e.networks, e.ports, e.selector, e.deny_policy)
        for e in route
    )


def _listener_address(hop: NextHop) -> Address:
    if isinstance(hop, str):
        return build(Address, pipe=build(Pipe, path=hop, mode=SOCKET_MODE))
    return build(Address, socket_address=build(SocketAddress, address=hop[0], port_value=hop[1]))


def _attached(entry: MatchEntry, listener: CompiledListener) -> bool:
    return any(lst.name == listener.name for lst in entry.listeners)


def _tcp_routes(
    policy: GatewayPolicy, listener: CompiledListener
) -> list[tuple[list[MatchEntry], bool]]:
    """The TCP match entries `listener` checks, per route, in the compiled order: deny
    routes attached to it (on an L7 listener, their chains answer with the deny
    response), then every other deny route (decide() applies them on the whole
    gateway; they only close), then the allow routes attached to it.  Each route comes
    with whether it is attached to `listener`, found once per entry (a reload
    translates every route, most of them from the chain cache)."""
    checked = []
    for e in policy.matches:
        if e.protocol != "TCP":
            continue
        attached = _attached(e, listener)
        if e.deny_policy is not None or attached:
            checked.append((e.deny_policy is None, not attached, e.order, e))
    checked.sort(key=itemgetter(0, 1, 2))  # `order` is unique: entries are never compared
    routes = []
    for _route, group in groupby(checked, key=lambda t: t[3].route):
        items = list(group)
        routes.append(([t[3] for t in items], not items[0][1]))
    return routes


def _gateway_listener(
    policy: GatewayPolicy,
    listener: CompiledListener,
    address: NextHop,
    selected: Callable[[Selector | None], tuple[Key, ...] | None],
    blocked: tuple[Network, ...],
    cache: ChainCache | None,
    own: tuple[Network, ...] = (),
) -> Listener:
    """Matcher order: deny routes; the gateway's own addresses are closed; allow routes'
    CIDRs that explicitly open an always-blocked range; any other always-blocked
    destination is closed; then allow routes; then the default (allow-all proxies,
    deny-all closes).  decide() checks own addresses before deny routes, but a deny chain
    only closes or answers, so it may go first: the own guard is wider than decide() on
    Teredo (2001::/32, whose client part no CIDR describes), and ahead of the deny
    routes it would close a deny decide() forwards, without its answer and its record.
    `own` changes at run time and is not part of any route's cache key: a new address
    rebuilds this guard alone."""
    entries = _Entries()
    chains: list[FilterChain] = []
    access_log = _chain_access_log(listener)
    if cache is not None:
        creds = policy.credentials if listener.l7 else ()
        context = cache.context((policy.ref, listener, blocked, creds))
    for route, attached in _tcp_routes(policy, listener):
        key = None
        part = None
        if cache is not None:
            agents = tuple(selected(e.selector) for e in route)
            deny = policy.deny_responses.get(route[0].deny_policy or "")
            key = (context, attached, deny, agents, _route_key(route))
            part = cache.get(key)
        if part is None:
            part = _route_parts(policy, route, listener, selected, blocked, access_log)
            if cache is not None:
                cache.put(key, part)
        part_entries, part_chains = part
        entries.deny += part_entries.deny
        entries.opened += part_entries.opened
        entries.allow += part_entries.allow
        chains += part_chains
    allow_all = policy.default_policy == "allow-all"
    guard: list = []
    own_guard: list = []
    if blocked and (entries.allow or allow_all):
        guard = [tm.field_matcher(tm.destination_in(blocked, "blocked_address"), BLOCKED_CHAIN)]
    if own and (entries.allow or allow_all or entries.opened):  # opened: 127/8 may be own
        own_guard = [tm.field_matcher(tm.destination_in(own, "own_address"), BLOCKED_CHAIN)]
    if guard or own_guard:
        chains.append(_closing_chain(BLOCKED_CHAIN))
    matchers = [*entries.deny, *own_guard, *entries.opened, *guard, *entries.allow]

    default = None
    if allow_all and listener.protocol == "HTTP":
        facts = ChainFacts(gateway=policy.ref, listener=listener.name)
        default = l7.l7_chain(
            ALLOW_ALL_CHAIN,
            facts,
            domains=["*"],
            terminate_secret=None,
            known=policy.credentials,
            ext_proc=needs_ext_proc(policy, ()),
        )
    elif allow_all:
        # TLS Terminate too: no one certificate can cover every name, so traffic that no
        # route names passes through (still re-checked and logged as L4).
        default = _proxy_chain(ALLOW_ALL_CHAIN, access_log)
    elif not chains:
        # Envoy refuses a listener without filter chains; this one only closes.
        default = _closing_chain("default/deny-all")
    return build(
        Listener,
        name=listener.name,
        stat_prefix=listener.name,
        address=_listener_address(address),
        listener_filters=_listener_filters(tls=listener.protocol == "TLS"),
        # A client that never completes the PROXY header is closed, not passed on.
        listener_filters_timeout=LISTENER_FILTERS_TIMEOUT,
        continue_on_listener_filters_timeout=False,
        filter_chains=chains,
        filter_chain_matcher=(
            build(Matcher, matcher_list=build(MatcherMatcherList, matchers=matchers))
            if matchers
            else None
        ),
        default_filter_chain=default,
        access_log=_listener_access_log(listener, [*chains, *([default] if default else [])]),
    )


def _agent_selection(policy: GatewayPolicy) -> Callable[[Selector | None], tuple[Key, ...] | None]:
    """selector -> the (namespace, name) of the gateway's agents it selects (None: every
    agent), evaluated exactly as decide() does, since Envoy sees no labels."""
    memo: dict[Selector, tuple[Key, ...]] = {}

    def selected(selector: Selector | None) -> tuple[Key, ...] | None:
        if selector is None:
            return None
        if selector not in memo:
            memo[selector] = tuple(
                sorted((a.namespace, a.name) for a in policy.agents if selects(selector, a.labels))
            )
        return memo[selector]

    return selected


def translate_gateway(
    policy: GatewayPolicy,
    *,
    envoy_host: str = DEFAULT_HOST,
    base_port: int = DEFAULT_BASE_PORT,
    socket_dir: str | None = None,
    own_addresses: Iterable[str] = (),
    always_blocked: Sequence[Network] | None = None,
    extproc_address: tuple[str, int] | str = l7.DEFAULT_EXTPROC_ADDRESS,
    leaf_secret: LeafSecret | None = None,
    credential_secret: CredentialSecret | None = None,
    upstream_ca: str | None = None,
    cache: ChainCache | None = None,
) -> GatewayResources:
    """The Envoy resources of one gateway (see `translate` for the options)."""
    # Report mode: Envoy enforces what the data path carries; the dialer records what
    # the policy itself would have denied (GatewayPolicy.relaxed).
    policy = policy.relaxed
    blocked = tuple(always_blocked_networks() if always_blocked is None else always_blocked)
    own = own_networks(own_addresses)
    addresses = envoy_listener_addresses(
        [(lst.name, lst.protocol) for lst in policy.listeners], envoy_host, base_port, socket_dir
    )
    selected = _agent_selection(policy)
    listeners = [
        _gateway_listener(policy, lst, addresses[lst.name], selected, blocked, cache, own)
        for lst in policy.listeners
        if lst.protocol != "UDP"  # the dialer relays UDP itself
    ]
    clusters = [original_dst_cluster(), l7.extproc_cluster(extproc_address)]
    if any(lst.tls_mode == "Terminate" for lst in policy.listeners):
        clusters.append(l7.original_dst_tls_cluster(policy.upstream_ca_bundle or upstream_ca))
    secrets = ()
    if leaf_secret is not None:
        leaves = terminate_leaves(policy)
        secrets = tuple(leaf_secret(name, hosts) for name, hosts in sorted(leaves.items()))
    if credential_secret is not None:
        secrets += tuple(credential_secret(c) for c in policy.credentials)
    return GatewayResources(policy.ref, tuple(listeners), tuple(clusters), secrets)


def translate(policies: PolicySet, **options) -> dict[str, GatewayResources]:
    """Envoy resources for every gateway, keyed by "namespace/name" (the node id).

    Options (keywords): `socket_dir`: Envoy listens on Unix sockets there
    (clrk.nexthops) instead of `envoy_host` ports from `base_port`.  `own_addresses`:
    the gateway host's addresses and local ranges, always blocked and never opened, like
    decide()'s `own`.
    `always_blocked` replaces the SPEC 4 list (tests only: they can reach nothing but
    loopback, which that list blocks).  `extproc_address`: where clrk_extproc listens
    (ext_proc and access logs): (host, port) or a Unix socket path.
    `leaf_secret(name, hostnames)`: the Secret of a TLS Terminate route's leaf
    certificate (minting is not pure, so the caller supplies it); without it, chains
    name secrets the caller must serve.  `credential_secret(credential)`: the generic
    Secret of an EgressCredential (`translate_credentials.secret_name`), read from its
    source by the caller; without it, chains name secrets the caller must serve.
    `upstream_ca`: the trust bundle for
    re-originated TLS of gateways that set no `upstreamTLS.caBundle` (default: the
    system bundle).  `cache`: a `ChainCache` kept across calls.
    """
    return {
        policy.ref: translate_gateway(policy, **options)
        for _key, policy in sorted(policies.gateways.items())
    }


def terminate_leaves(policy: GatewayPolicy) -> dict[str, tuple[str, ...]]:
    """Secret name -> SANs of the leaf certificate of every route with TCP matches on a
    Terminate listener: its hostnames, in the route's order, once each.  Deny routes get
    one too (the agent sees the policy's HTTP answer, not a TLS error); a route with no
    hostnames gets none, there is no name to put in it."""
    terminating = {lst.name for lst in policy.listeners if lst.tls_mode == "Terminate"}
    wanted: dict[str, dict[str, None]] = {}
    for entry in policy.matches:
        if entry.protocol == "TCP" and terminating & {lst.name for lst in entry.listeners}:
            names = wanted.setdefault(l7.leaf_secret_name(entry.route), {})
            names.update(dict.fromkeys(entry.hostnames))
    return {name: tuple(hosts) for name, hosts in wanted.items() if hosts}
