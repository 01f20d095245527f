"""L7 chains (HTTP, TLS Terminate), their ext_proc facts, leaf secrets, access logs."""

from __future__ import annotations

from envoy_data_plane.envoy.extensions.common.matching.v3 import ExtensionWithMatcher
from envoy_data_plane.envoy.extensions.filters.common.matcher.action.v3 import SkipFilter
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import ExternalProcessor
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
)
from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret

from clrk.api import load_text
from clrk.policy.loaded import compile_loaded
from clrk.wire import (
    CHAIN_ROUTE_TAG,
    CHAIN_RULE_TAG,
    CHAIN_TAG,
    HEADER_DENY_POLICY,
    HTTP_TAGGED_TLVS,
    LISTENER_TAG,
    METHOD_TAG,
    TAGGED_TLVS,
    ChainFacts,
    proxying_chain,
    tlv_tag,
)
from clrk_xds import translate_l7 as l7
from clrk_xds.__main__ import extproc_address
from clrk_xds.translate import terminate_leaves, translate

API = "apiVersion: clrk.apoxy.dev/v1alpha1"
GATEWAY = f"""{API}
kind: EgressGateway
metadata: {{name: gw}}
spec:
  defaultPolicy: POLICY
  listeners:
  - {{name: web, protocol: HTTP}}
  - {{name: term, protocol: TLS, tls: {{mode: Terminate}}}}
  - {{name: tcp, protocol: TCP}}
"""
ROUTES = f"""---
{API}
kind: EgressL4Route
metadata: {{name: llm}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{destinationHostnames: [api.anthropic.com, "*.openai.com"]}}]
  - matches: [{{destinationCIDRs: [203.0.113.0/24]}}]
---
{API}
kind: EgressL4Route
metadata: {{name: paste}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{destinationHostnames: [pastebin.com]}}]
---
{API}
kind: EgressDenyPolicy
metadata: {{name: no-paste}}
spec:
  targetRef: {{group: clrk.apoxy.dev, kind: EgressL4Route, name: paste}}
  denyResponse: {{statusCode: 451, message: "nope"}}
"""


def _translate(policy: str = "deny-all", **kw):
    loaded = load_text(GATEWAY.replace("POLICY", policy) + ROUTES, "t.yaml")
    assert not loaded.errors, [f.line() for f in loaded.errors]
    return translate(compile_loaded(loaded).compiled, **kw)["default/gw"]


def _chains(res, listener: str) -> dict:
    (lst,) = [x for x in res.listeners if x.name == listener]
    return {c.name: c for c in lst.filter_chains}, lst


def _hcm(chain) -> HttpConnectionManager:
    (f,) = chain.filters
    assert f.name == "envoy.filters.network.http_connection_manager"
    return f.typed_config.unpack()


def test_allow_chain_logs_requests_and_runs_ext_proc_only_when_tagged() -> None:
    chains, _ = _chains(_translate(), "web")
    hcm = _hcm(chains["route/default/llm/rule/0"])
    assert [f.name for f in hcm.http_filters] == [
        "clrk.tlv_headers",
        "clrk.ext_proc_when_tagged",
        "clrk.strip_tlv_headers",
        "envoy.filters.http.router",
    ]
    wrapped = hcm.http_filters[1].typed_config.unpack()
    assert isinstance(wrapped, ExtensionWithMatcher)
    ext = wrapped.extension_config.typed_config.unpack()
    assert isinstance(ext, ExternalProcessor)
    assert ext.failure_mode_allow is False
    facts = ChainFacts.from_metadata((h.key, h.value) for h in ext.grpc_service.initial_metadata)
    assert facts == ChainFacts("default/gw", "web", "default/llm", 0)
    # skipped unless the deny policy TLV header (set by the first filter) names a policy
    (skip,) = wrapped.xds_matcher.matcher_list.matchers
    single = skip.predicate.not_matcher.single_predicate
    assert single.input.typed_config.unpack().header_name == HEADER_DENY_POLICY
    assert single.value_match.contains == "/"
    assert isinstance(skip.on_match.action.typed_config.unpack(), SkipFilter)
    (log,) = hcm.access_log
    assert log.name == "envoy.access_loggers.http_grpc"
    common = log.typed_config.unpack().common_config
    assert common.grpc_service.envoy_grpc.cluster_name == l7.EXTPROC_CLUSTER
    # many entries a message: Envoy's default batch (16 KiB) cost clrk_extproc a tenth more
    assert common.buffer_size_bytes == l7.ACCESS_LOG_BUFFER >= 128 * 1024
    tags = {t.tag: t.value for t in common.custom_tags}
    assert set(tags) == {*map(tlv_tag, HTTP_TAGGED_TLVS), LISTENER_TAG, CHAIN_ROUTE_TAG,
                         CHAIN_RULE_TAG, METHOD_TAG}  # fmt: skip
    assert (tags[LISTENER_TAG], tags[CHAIN_ROUTE_TAG], tags[CHAIN_RULE_TAG]) == (
        "web", "default/llm", "0",
    )  # fmt: skip
    (vhost,) = hcm.route_config.virtual_hosts
    assert vhost.domains == ["*.openai.com", "api.anthropic.com"]
    assert vhost.routes[0].route.cluster == "original_dst"
    # every TLV header the first filter sets, the third removes
    strip = hcm.http_filters[2].typed_config.unpack().mutations.request_mutations
    assert {m.remove for m in strip} == set(l7.TLV_HEADERS)


def test_deny_chain_runs_ext_proc_on_every_request_and_logs_nothing_itself() -> None:
    chains, _ = _chains(_translate(), "web")
    hcm = _hcm(chains["deny/default/paste/rule/0"])
    assert [f.name for f in hcm.http_filters] == [
        "clrk.tlv_headers",
        "envoy.filters.http.ext_proc",
        "clrk.strip_tlv_headers",
        "envoy.filters.http.router",
    ]
    assert isinstance(hcm.http_filters[1].typed_config.unpack(), ExternalProcessor)
    assert hcm.access_log == []


def test_cidr_rule_accepts_any_host() -> None:
    chains, _ = _chains(_translate(), "web")
    (vhost,) = _hcm(chains["route/default/llm/rule/1"]).route_config.virtual_hosts
    assert vhost.domains == ["*"]


def test_deny_policy_chain_on_l7_carries_status_and_message() -> None:
    chains, _ = _chains(_translate(), "term")
    hcm = _hcm(chains["deny/default/paste/rule/0"])
    ext = hcm.http_filters[1].typed_config.unpack()
    facts = ChainFacts.from_metadata((h.key, h.value) for h in ext.grpc_service.initial_metadata)
    assert (facts.deny_policy, facts.status, facts.message) == ("default/no-paste", 451, "nope")


def test_deny_policy_on_tcp_listener_still_closes() -> None:
    chains, _ = _chains(_translate(), "tcp")
    (f,) = chains["deny/default/paste/rule/0"].filters
    assert f.name == "envoy.filters.network.direct_response"


def test_terminate_chain_uses_the_route_leaf_and_tls_upstream() -> None:
    res = _translate()
    chains, lst = _chains(res, "term")
    chain = chains["route/default/llm/rule/0"]
    tls = chain.transport_socket.typed_config.unpack()
    (sds,) = tls.common_tls_context.tls_certificate_sds_secret_configs
    assert sds.name == "leaf/default/llm" and sds.sds_config.ads is not None
    assert _hcm(chain).route_config.virtual_hosts[0].routes[0].route.cluster == "original_dst_tls"
    assert [f.name for f in lst.listener_filters] == [
        "envoy.filters.listener.proxy_protocol",
        "envoy.filters.listener.tls_inspector",
    ]
    (cluster,) = [c for c in res.clusters if c.name == l7.ORIGINAL_DST_TLS_CLUSTER]
    upstream = cluster.transport_socket.typed_config.unpack()
    trusted = upstream.common_tls_context.validation_context.trusted_ca.filename
    assert trusted == l7.SYSTEM_CA_BUNDLE
    options = cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].unpack()
    assert options.upstream_http_protocol_options.auto_sni
    assert options.upstream_http_protocol_options.auto_san_validation


def test_leaf_secrets_come_from_the_callback_per_terminate_route() -> None:
    asked = []

    def leaf(name: str, hostnames: tuple[str, ...]) -> Secret:
        asked.append((name, hostnames))
        return Secret(name=name)

    res = _translate(leaf_secret=leaf)
    assert asked == [
        ("leaf/default/llm", ("api.anthropic.com", "*.openai.com")),
        ("leaf/default/paste", ("pastebin.com",)),
    ]
    assert [s.name for s in res.secrets] == ["leaf/default/llm", "leaf/default/paste"]
    assert _translate().secrets == ()  # no callback: the caller serves them


def test_defaults_under_allow_all() -> None:
    res = _translate("allow-all")
    _, web = _chains(res, "web")
    default = _hcm(web.default_filter_chain)
    assert default.route_config.virtual_hosts[0].domains == ["*"]
    assert [log.name for log in default.access_log] == ["envoy.access_loggers.http_grpc"]
    tags = {
        t.tag: t.value
        for t in default.access_log[0].typed_config.unpack().common_config.custom_tags
    }
    assert tags[CHAIN_ROUTE_TAG] == "-"  # never empty: Envoy would drop the tag
    _, term = _chains(res, "term")
    # no certificate can name every host: unnamed traffic on Terminate passes through
    (f,) = term.default_filter_chain.filters
    assert f.name == "envoy.filters.network.tcp_proxy"


def _tcp_log_tags(log) -> dict[str, str]:
    assert log.name == "envoy.access_loggers.tcp_grpc"
    common = log.typed_config.unpack().common_config
    assert common.grpc_service.envoy_grpc.cluster_name == l7.EXTPROC_CLUSTER
    assert common.buffer_size_bytes == l7.ACCESS_LOG_BUFFER
    return {t.tag: t.value for t in common.custom_tags}


def _proxies(chain) -> list[TcpProxy]:
    return [
        f.typed_config.unpack()
        for f in chain.filters
        if f.name == "envoy.filters.network.tcp_proxy"
    ]


def test_a_tcp_listener_logs_each_connection_once_naming_its_chain() -> None:
    """The log is the listener's, not each chain's: Envoy hashes every chain's config on
    each update.  The reader counts a connection of a proxying chain only, so every
    proxying chain must be one `proxying_chain` says is, and no closing chain."""
    for policy in ("allow-all", "deny-all"):
        res = _translate(policy)
        chains, tcp = _chains(res, "tcp")
        (log,) = tcp.access_log
        tags = _tcp_log_tags(log)
        assert set(tags) == {*map(tlv_tag, TAGGED_TLVS), LISTENER_TAG, CHAIN_TAG}
        assert tags[LISTENER_TAG] == "tcp" and tags[CHAIN_TAG] == "%FILTER_CHAIN_NAME%"
        everything = [*chains.values(), tcp.default_filter_chain]
        for chain in [c for c in everything if c is not None]:
            proxies = _proxies(chain)
            assert proxying_chain(chain.name) == bool(proxies), chain.name
            assert all(p.access_log == [] and p.access_log_options is None for p in proxies)
        assert any(proxying_chain(name) for name in chains)
        assert any(not proxying_chain(name) for name in chains)  # the deny route closes


def test_a_proxying_chain_of_an_l7_listener_logs_once_when_the_connection_ends() -> None:
    res = _translate("allow-all")
    _, term = _chains(res, "term")
    assert term.access_log == []  # its other chains log each request
    (proxy,) = _proxies(term.default_filter_chain)
    (log,) = proxy.access_log
    tags = _tcp_log_tags(log)
    assert set(tags) == {*map(tlv_tag, TAGGED_TLVS), LISTENER_TAG}
    assert tags[LISTENER_TAG] == "term"
    assert proxy.access_log_options is None  # not flushed when the upstream connects


def test_a_listener_where_nothing_proxies_has_no_l4_log() -> None:
    loaded = load_text(GATEWAY.replace("POLICY", "deny-all"), "t.yaml")
    res = translate(compile_loaded(loaded).compiled)["default/gw"]
    _, tcp = _chains(res, "tcp")
    assert tcp.access_log == []


def test_extproc_address_option() -> None:
    res = _translate(extproc_address=("10.0.0.1", 9000))
    (cluster,) = [c for c in res.clusters if c.name == l7.EXTPROC_CLUSTER]
    socket = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (socket.address, socket.port_value) == ("10.0.0.1", 9000)


def test_extproc_on_a_unix_socket() -> None:
    res = _translate(extproc_address="/run/clrk/extproc/extproc.sock")
    (cluster,) = [c for c in res.clusters if c.name == l7.EXTPROC_CLUSTER]
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.pipe.path == "/run/clrk/extproc/extproc.sock"


def test_the_control_planes_extproc_option_takes_host_port_or_a_unix_socket() -> None:
    assert extproc_address("127.0.0.1:18002") == ("127.0.0.1", 18002)
    assert extproc_address("[::1]:18002") == ("::1", 18002)
    assert extproc_address("unix:/run/x.sock") == "/run/x.sock"


LEAVES = f"""{API}
kind: EgressGateway
metadata: {{name: gw}}
spec:
  listeners:
  - {{name: tcp-out, protocol: TCP}}
  - {{name: term, protocol: TLS, tls: {{mode: Terminate}}}}
  - {{name: pass, protocol: TLS}}
---
{API}
kind: EgressL4Route
metadata: {{name: llm}}
spec:
  parentRefs: [{{name: gw, sectionName: term}}]
  rules:
  - matches:
    - destinationHostnames: [api.example.com, "*.azure.example.com"]
    - destinationHostnames: [api.example.com, b.example.com]
      ports: [{{port: 443}}]
    - destinationHostnames: [udp.example.com]
      protocol: UDP
---
{API}
kind: EgressL4Route
metadata: {{name: every-listener}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{matches: [{{destinationHostnames: [all.example.com]}}]}}]
---
{API}
kind: EgressL4Route
metadata: {{name: passthrough-only, namespace: other}}
spec:
  parentRefs: [{{name: gw, namespace: default, sectionName: pass}}]
  rules: [{{matches: [{{destinationHostnames: [pass.example.com]}}]}}]
---
{API}
kind: EgressL4Route
metadata: {{name: cidr-only}}
spec:
  parentRefs: [{{name: gw, sectionName: term}}]
  rules: [{{matches: [{{destinationCIDRs: [203.0.113.0/24]}}]}}]
---
{API}
kind: EgressL4Route
metadata: {{name: paste}}
spec:
  parentRefs: [{{name: gw, sectionName: term}}]
  rules: [{{matches: [{{destinationHostnames: [paste.example.com]}}]}}]
---
{API}
kind: EgressDenyPolicy
metadata: {{name: no-paste}}
spec:
  targetRef: {{name: paste}}
"""


def test_terminate_routes_get_leaves_named_by_route_with_their_tcp_hostnames() -> None:
    policy = compile_loaded(load_text(LEAVES)).compiled.gateways[("default", "gw")]
    assert terminate_leaves(policy) == {
        "leaf/default/every-listener": ("all.example.com",),
        # UDP names left out, repeated names once
        "leaf/default/llm": ("api.example.com", "*.azure.example.com", "b.example.com"),
        "leaf/default/paste": ("paste.example.com",),  # deny routes answer over TLS too
    }  # a route without hostnames (cidr-only) has no name to put in a leaf


def test_no_terminate_listener_no_leaves() -> None:
    text = LEAVES.replace("tls: {mode: Terminate}", "tls: {mode: Passthrough}")
    policy = compile_loaded(load_text(text)).compiled.gateways[("default", "gw")]
    assert terminate_leaves(policy) == {}


def test_the_extproc_cluster_resolves_a_service_name_and_takes_an_address_as_is():
    from envoy_data_plane.envoy.config.cluster.v3 import ClusterDiscoveryType

    from clrk_xds.translate_l7 import extproc_cluster

    by_name = extproc_cluster(("clrk-extproc.clrk-system.svc", 18002))
    assert by_name.type == ClusterDiscoveryType.STRICT_DNS
    assert extproc_cluster(("10.0.0.9", 18002)).type == ClusterDiscoveryType.STATIC
    assert extproc_cluster("/run/clrk/extproc.sock").type == ClusterDiscoveryType.STATIC
