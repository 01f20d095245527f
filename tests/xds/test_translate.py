"""Unit tests of the translator's structure (the golden files pin the full output)."""

from __future__ import annotations

import datetime
import json
from ipaddress import ip_network
from pathlib import Path

import pytest
from envoy_data_plane.envoy.config.cluster.v3 import Cluster
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.extensions.filters.listener.proxy_protocol.v3 import (
    ProxyProtocol,
    ProxyProtocolTlvLocation,
)
from envoy_data_plane.google.protobuf import Any
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk.api import load_paths, load_text
from clrk.nexthops import envoy_listener_addresses
from clrk.policy.loaded import compile_loaded
from clrk.wire import TLV_FIELDS
from clrk_xds.translate import (
    ORIGINAL_DST_CLUSTER,
    TYPE_URLS,
    GatewayResources,
    serialize,
    to_plain,
    translate,
)
from tests.conftest import EXAMPLES

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
API = "apiVersion: clrk.apoxy.dev/v1alpha1"


def _translate(text: str, **kw) -> dict[str, GatewayResources]:
    loaded = load_text(text, "t.yaml")
    assert not loaded.errors, [f.line() for f in loaded.errors]
    return translate(compile_loaded(loaded).compiled, **kw)


def _gateway(listeners: str, policy: str = "deny-all") -> str:
    return f"""{API}
kind: EgressGateway
metadata: {{name: gw}}
spec:
  defaultPolicy: {policy}
  listeners: {listeners}
"""


def _route(name: str, matches: str, parent: str = "{name: gw}") -> str:
    return f"""---
{API}
kind: EgressL4Route
metadata: {{name: {name}}}
spec:
  parentRefs: [{parent}]
  rules:
  - matches: {matches}
"""


def _deny(target: str) -> str:
    return f"""---
{API}
kind: EgressDenyPolicy
metadata: {{name: deny-{target}}}
spec:
  targetRef: {{name: {target}}}
"""


def _chain_names(listener: Listener) -> list[str]:
    return [c.name for c in listener.filter_chains]


def _actions(listener: Listener) -> list[str]:
    if listener.filter_chain_matcher is None:
        return []
    return [m.on_match.action.name for m in listener.filter_chain_matcher.matcher_list.matchers]


def _filter_names(chain) -> list[str]:
    return [f.name for f in chain.filters]


def test_no_gateways_no_resources() -> None:
    assert translate(compile_loaded(load_text("")).compiled) == {}


def test_addresses_come_from_nexthops_and_udp_keeps_its_slot() -> None:
    listeners = "[{name: a, protocol: TCP}, {name: u, protocol: UDP}, {name: t, protocol: TLS}]"
    res = _translate(_gateway(listeners), envoy_host="127.0.0.9", base_port=20000)["default/gw"]
    expected = envoy_listener_addresses(
        [("a", "TCP"), ("u", "UDP"), ("t", "TLS")], "127.0.0.9", 20000
    )
    got = {
        lst.name: (lst.address.socket_address.address, lst.address.socket_address.port_value)
        for lst in res.listeners
    }
    assert got == expected == {"a": ("127.0.0.9", 20000), "t": ("127.0.0.9", 20002)}
    assert res.gateway == "default/gw"


def test_listener_filters_keep_clrk_tlvs_in_filter_state() -> None:
    res = _translate(_gateway("[{name: a, protocol: TCP}, {name: t, protocol: TLS}]"))
    tcp, tls = res["default/gw"].listeners
    for lst in (tcp, tls):
        first = lst.listener_filters[0]
        assert first.name == "envoy.filters.listener.proxy_protocol"
        config = first.typed_config.unpack()
        assert isinstance(config, ProxyProtocol)
        assert config.tlv_location == ProxyProtocolTlvLocation.FILTER_STATE
        assert {r.tlv_type: r.on_tlv_present.key for r in config.rules} == TLV_FIELDS
        assert not config.allow_requests_without_proxy_protocol
        assert lst.listener_filters_timeout == datetime.timedelta(seconds=2)
        assert not lst.continue_on_listener_filters_timeout
    assert [f.name for f in tcp.listener_filters] == ["envoy.filters.listener.proxy_protocol"]
    assert tls.listener_filters[1].name == "envoy.filters.listener.tls_inspector"


def test_deny_all_without_routes_gets_only_a_closing_default_chain() -> None:
    (lst,) = _translate(_gateway("[{name: a, protocol: TCP}]"))["default/gw"].listeners
    assert lst.filter_chains == [] and lst.filter_chain_matcher is None
    assert lst.default_filter_chain.name == "default/deny-all"
    assert _filter_names(lst.default_filter_chain) == ["envoy.filters.network.direct_response"]


def test_deny_all_with_routes_has_no_default_chain() -> None:
    text = _gateway("[{name: a, protocol: TCP}]") + _route("r", '[{destinationHostnames: ["x.y"]}]')
    (lst,) = _translate(text)["default/gw"].listeners
    assert lst.default_filter_chain is None
    assert _chain_names(lst) == ["route/default/r/rule/0", "blocked_address"]
    assert _actions(lst) == ["blocked_address", "route/default/r/rule/0"]
    assert _filter_names(lst.filter_chains[0]) == ["envoy.filters.network.tcp_proxy"]
    assert _filter_names(lst.filter_chains[1]) == ["envoy.filters.network.direct_response"]
    proxy = lst.filter_chains[0].filters[0].typed_config.unpack()
    assert proxy.cluster == ORIGINAL_DST_CLUSTER
    assert proxy.stat_prefix == "route.default.r.rule.0"


def test_allow_all_proxies_by_default_and_deny_chains_come_first() -> None:
    text = (
        _gateway("[{name: a, protocol: TCP}]", policy="allow-all")
        + _route("aaa-allowed", '[{destinationHostnames: ["ok.example"]}]')
        + _route("paste", '[{destinationHostnames: ["pastebin.com"]}]')
        + _deny("paste")
    )
    (lst,) = _translate(text)["default/gw"].listeners
    assert lst.default_filter_chain.name == "default/allow-all"
    assert _filter_names(lst.default_filter_chain) == ["envoy.filters.network.tcp_proxy"]
    assert _actions(lst) == [
        "deny/default/paste/rule/0",
        "blocked_address",
        "route/default/aaa-allowed/rule/0",
    ]
    by_name = {c.name: c for c in lst.filter_chains}
    assert _filter_names(by_name["deny/default/paste/rule/0"]) == [
        "envoy.filters.network.direct_response"
    ]


def test_udp_matches_and_unfit_listeners_make_no_chain() -> None:
    text = _gateway("[{name: a, protocol: TCP}, {name: u, protocol: UDP}]") + _route(
        "dns", '[{destinationCIDRs: ["192.0.2.53/32"], ports: [{port: 53}], protocol: UDP}]'
    )
    (lst,) = _translate(text)["default/gw"].listeners
    assert lst.filter_chains == []


def test_listener_port_drops_matches_that_miss_it() -> None:
    text = _gateway("[{name: pg, protocol: TCP, port: 5432}]") + _route(
        "web", '[{destinationHostnames: ["w.example"], ports: [{port: 443}]}]'
    )
    (lst,) = _translate(text)["default/gw"].listeners
    assert lst.filter_chains == []
    assert lst.default_filter_chain.name == "default/deny-all"


def test_http_and_tls_terminate_are_programmed() -> None:
    listeners = "[{name: web, protocol: HTTP}, {name: term, protocol: TLS, tls: {mode: Terminate}}]"
    res = _translate(_gateway(listeners))["default/gw"]
    assert [lst.name for lst in res.listeners] == ["web", "term"]
    assert [c.name for c in res.clusters] == ["original_dst", "clrk_extproc", "original_dst_tls"]


def test_cluster_is_original_dst() -> None:
    cluster, extproc = _translate(_gateway("[{name: a, protocol: TCP}]"))["default/gw"].clusters
    assert extproc.name == "clrk_extproc"  # the access logs of tcp_proxy go there
    plain = cluster.to_dict()
    assert plain == {
        "name": ORIGINAL_DST_CLUSTER,
        "type": "ORIGINAL_DST",
        "lbPolicy": "CLUSTER_PROVIDED",
        "connectTimeout": "5s",
    }


def test_serialize_round_trips_and_type_urls_match_the_messages() -> None:
    res = _translate(
        _gateway("[{name: a, protocol: TCP}]") + _route("r", '[{destinationHostnames: ["x.y"]}]')
    )["default/gw"]
    (lst,), (cluster, _extproc) = res.listeners, res.clusters
    assert Listener.parse(serialize(lst)) == lst
    assert Cluster.parse(serialize(cluster)) == cluster
    assert Any.pack(lst).type_url == TYPE_URLS["listener"]
    assert Any.pack(cluster).type_url == TYPE_URLS["cluster"]
    assert TYPE_URLS["secret"].endswith("envoy.extensions.transport_sockets.tls.v3.Secret")


def _all_inputs() -> list[tuple[str, object]]:
    out = []
    loaded = load_paths([str(EXAMPLES)])
    out.append(("examples", loaded))
    for case in sorted(GOLDEN.iterdir()):
        if (case / "input.yaml").is_file():
            out.append((case.name, load_text((case / "input.yaml").read_text(), "input.yaml")))
    return out


@pytest.mark.parametrize(
    ("name", "loaded"), _all_inputs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_action_names_a_chain_and_every_chain_is_used(name, loaded) -> None:
    for res in translate(compile_loaded(loaded).compiled).values():
        json.dumps(to_plain(res))  # JSON-able
        for lst in res.listeners:
            chains = _chain_names(lst)
            assert len(set(chains)) == len(chains), name
            assert set(_actions(lst)) == set(chains), name
            assert lst.filter_chains or lst.default_filter_chain is not None, name


hostnames = st.lists(st.sampled_from(["a.example", "*.example", "b.a.example"]), max_size=2)
cidrs = st.lists(st.sampled_from(["192.0.2.0/24", "2001:db8::/32"]), max_size=2)
ports = st.lists(
    st.one_of(
        st.integers(1, 65535).map(lambda p: f"{{port: {p}}}"),
        st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(
            lambda t: f"{{startPort: {min(t)}, endPort: {max(t)}}}"
        ),
    ),
    max_size=3,
)
match = st.builds(
    lambda h, c, p, proto: (
        f"{{destinationHostnames: {json.dumps(h)}, destinationCIDRs: {json.dumps(c)},"
        f" ports: [{', '.join(p)}], protocol: {proto}}}"
    ),
    hostnames,
    cidrs,
    ports,
    st.sampled_from(["TCP", "UDP"]),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.lists(match, min_size=1, max_size=3), st.booleans()), max_size=4),
    st.sampled_from(["deny-all", "allow-all"]),
    st.sampled_from([None, 443, 8080]),
)
def test_generated_route_sets_translate_consistently(routes, policy, listener_port) -> None:
    port = f", port: {listener_port}" if listener_port else ""
    text = _gateway(f"[{{name: a, protocol: TCP{port}}}, {{name: t, protocol: TLS}}]", policy)
    for i, (matches, denied) in enumerate(routes):
        text += _route(f"r{i}", f"[{', '.join(matches)}]")
        if denied:
            text += _deny(f"r{i}")
    first = _translate(text)
    second = _translate(text)
    res = first["default/gw"]
    assert [serialize(m) for m in res.listeners] == [
        serialize(m) for m in second["default/gw"].listeners
    ]
    for lst in res.listeners:
        actions = _actions(lst)
        assert set(actions) == set(_chain_names(lst))
        # Deny routes first (like decide()); the blocked-address guard before any allow
        # entry that is not an explicit CIDR inside a blocked range.
        kinds = [a.split("/")[0] for a in actions]
        assert kinds == sorted(kinds, key=lambda k: k != "deny")
        assert (lst.default_filter_chain is not None) == (
            policy == "allow-all" or not lst.filter_chains
        )


def _cidr_ranges(field_matcher) -> list[str]:
    """The CIDRs of the first destination-IP predicate found in a matcher entry."""
    stack = [field_matcher.predicate]
    while stack:
        p = stack.pop()
        if p.single_predicate is not None and p.single_predicate.custom_match is not None:
            ip = p.single_predicate.custom_match.typed_config.unpack()
            return [f"{c.address_prefix}/{c.prefix_len}" for c in ip.cidr_ranges]
        for group in (p.and_matcher, p.or_matcher):
            if group is not None:
                stack.extend(reversed(group.predicate))
        if p.not_matcher is not None:
            stack.append(p.not_matcher)
    return []


def test_blocked_addresses_open_only_by_explicit_cidrs_inside_them() -> None:
    text = _gateway("[{name: a, protocol: TCP}]", policy="allow-all") + _route(
        "meta",
        '[{destinationCIDRs: ["169.254.169.254/32", "0.0.0.0/0"]},'
        ' {destinationHostnames: ["metadata.internal"]}]',
    )
    (lst,) = _translate(text)["default/gw"].listeners
    entries = lst.filter_chain_matcher.matcher_list.matchers
    assert _actions(lst) == [
        "route/default/meta/rule/0",  # 169.254.169.254/32 opens the blocked range
        "blocked_address",
        "route/default/meta/rule/0",  # 0.0.0.0/0: never opens a blocked address
        "route/default/meta/rule/0",  # a hostname never does either
    ]
    assert _cidr_ranges(entries[0]) == ["169.254.169.254/32"]
    assert "127.0.0.0/8" in _cidr_ranges(entries[1])
    assert _cidr_ranges(entries[2]) == ["0.0.0.0/0"]


def test_own_addresses_are_a_guard_of_their_own_before_everything() -> None:
    """Checked first, before deny routes and the CIDRs that open a blocked range: no CIDR
    opens the gateway's own addresses, not even 127.0.0.2/32 when 127.0.0.0/8 is own."""
    text = _gateway("[{name: a, protocol: TCP}]", policy="allow-all") + _route(
        "r", '[{destinationCIDRs: ["127.0.0.2/32", "192.0.2.10/32"]}]'
    )
    own = ["192.0.2.10", "127.0.0.0/8"]
    (lst,) = _translate(text, own_addresses=own)["default/gw"].listeners
    own_guard, opened, guard, *_ = lst.filter_chain_matcher.matcher_list.matchers
    assert _actions(lst)[:3] == ["blocked_address", "route/default/r/rule/0", "blocked_address"]
    assert {"192.0.2.10/32", "127.0.0.0/8"} <= set(_cidr_ranges(own_guard))
    assert _cidr_ranges(opened) == ["127.0.0.2/32"]
    assert "192.0.2.10/32" not in _cidr_ranges(guard)


def test_without_blocked_list_no_guard_chain() -> None:
    text = _gateway("[{name: a, protocol: TCP}]") + _route("r", '[{destinationHostnames: ["x.y"]}]')
    (lst,) = _translate(text, always_blocked=())["default/gw"].listeners
    assert _chain_names(lst) == _actions(lst) == ["route/default/r/rule/0"]


def test_a_chain_cache_kept_across_changes_translates_as_a_fresh_translation() -> None:
    """The cache's keys share one number for what a listener's routes have in common
    (listener, blocked ranges, credentials): a change of any of those, or of a route,
    must never reuse a chain built for the old one."""
    from clrk_xds.translate import ChainCache

    routes = _route("a", "[{destinationCIDRs: [169.254.1.0/24], ports: [{port: 443}]}]")
    elsewhere = ip_network("192.0.2.0/24")  # by default 169.254/16 is, and the CIDR opens it
    sets = [
        (_gateway("[{name: tcp, protocol: TCP}]") + routes, {}),
        (_gateway("[{name: tcp, protocol: TCP}]") + routes, {"always_blocked": (elsewhere,)}),
        (_gateway("[{name: tcp, protocol: TCP, port: 443}]") + routes, {}),
        (_gateway("[{name: tcp, protocol: TCP}]", "allow-all") + routes, {}),
        (_gateway("[{name: tcp, protocol: TCP}]") + routes.replace("443", "8443"), {}),
        (_gateway("[{name: tcp, protocol: TCP}]") + routes, {}),
    ]
    cache = ChainCache()
    for text, options in sets * 2:
        cached = _translate(text, cache=cache, **options)
        fresh = _translate(text, **options)
        assert {gw: to_plain(r) for gw, r in cached.items()} == {
            gw: to_plain(r) for gw, r in fresh.items()
        }
