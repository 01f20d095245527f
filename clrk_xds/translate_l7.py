"""L7 filter chains (SPEC 7): HTTP and TLS Terminate listeners, and the L4 access log.

Pure: builds Envoy messages only.  An L7 chain runs `http_connection_manager` with

1. `header_mutation`: drops any `x-clrk-*` header the agent sent, then copies the
   connection's PROXY TLVs (agent, connection id, matched name) into `x-clrk-*` request
   headers, read from the proxy_protocol filter state with the FILTER_STATE formatter;
2. `ext_proc` (fail closed) to the `clrk_extproc` cluster; facts fixed per chain
   (gateway, listener, route, deny policy and its response) ride in the gRPC initial
   metadata of each ext_proc stream.  Only a chain that needs it
   (`clrk.policy.l7_chains.needs_ext_proc`: a deny policy) runs it on every request;
   any other chain runs it only for a request whose connection carries a deny policy
   TLV (the dialer's policy was ahead of Envoy's), and otherwise sends its
   `egress.http` records through the HTTP gRPC access log: no Python per request, and
   with clrk_extproc down such a chain keeps serving (its records are lost);
3. `header_mutation`: drops every `x-clrk-*` header again, so none reaches the upstream;
4. the router to an ORIGINAL_DST cluster: plain for HTTP, TLS re-originated for Terminate
   (SNI and SAN check from the request's host, trust from the system or gateway bundle).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.cluster.v3 import (
    Cluster,
    ClusterDiscoveryType,
    ClusterLbPolicy,
)
from envoy_data_plane.envoy.config.common.mutation_rules.v3 import (
    HeaderMutation as Mutation,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    Pipe,
    SocketAddress,
    TransportSocket,
    UpstreamHttpProtocolOptions,
)
from envoy_data_plane.envoy.config.core.v3 import (
    TypedExtensionConfig as CoreTypedExtensionConfig,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain
from envoy_data_plane.envoy.config.route.v3 import (
    RouteConfiguration,
)
from envoy_data_plane.envoy.extensions.access_loggers.grpc.v3 import (
    CommonGrpcAccessLogConfig,
    HttpGrpcAccessLogConfig,
    TcpGrpcAccessLogConfig,
)
from envoy_data_plane.envoy.extensions.common.matching.v3 import ExtensionWithMatcher
from envoy_data_plane.envoy.extensions.filters.common.matcher.action.v3 import SkipFilter
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.extensions.filters.http.header_mutation.v3 import (
    HeaderMutation,
    Mutations,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpFilter,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    SdsSecretConfig,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import HttpRequestHeaderMatchInput
from envoy_data_plane.envoy.type.tracing.v3 import CustomTag
from envoy_data_plane.google.protobuf import Any
from envoy_data_plane.xds.core.v3 import TypedExtensionConfig
from envoy_data_plane.xds.type.matcher.v3 import (
    Matcher,
    MatcherMatcherList,
    MatcherMatcherListFieldMatcher,
    MatcherMatcherListPredicate,
    MatcherMatcherListPredicateSinglePredicate,
    MatcherOnMatch,
    StringMatcher,
)

from clrk.api.grammar import is_ip_literal
from clrk.policy.compiled import CompiledCredential
from clrk.wire import (
    CHAIN_NAME_FORMAT,
    CHAIN_ROUTE_TAG,
    CHAIN_RULE_TAG,
    CHAIN_TAG,
    HEADER_DENY_POLICY,
    HTTP_TAGGED_TLVS,
    LISTENER_TAG,
    METHOD_TAG,
    TAGGED_TLVS,
    TLV_FIELDS,
    TLV_HEADERS,
    ChainFacts,
    tlv_format,
    tlv_tag,
)
from clrk_xds import translate_credentials as tc
from clrk_xds.betterproto_speed import build, pack

EXTPROC_CLUSTER = "clrk_extproc"
ORIGINAL_DST_TLS_CLUSTER = "original_dst_tls"
DEFAULT_EXTPROC_ADDRESS = ("127.0.0.1", 18002)
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
ACCESS_LOG_NAME = "clrk.tcp"
EXTPROC_TIMEOUT = datetime.timedelta(seconds=2)
CONNECT_TIMEOUT = datetime.timedelta(seconds=5)
ACCESS_LOG_FLUSH = datetime.timedelta(seconds=1)
# Envoy sends a batch of access-log entries when this many bytes wait (or at the flush
# interval).  Its default, 16 KiB, is some 40 HTTP entries: clrk_extproc's gRPC receipt of
# each message cost it about 10 us per record on top of the record's own 45, and the L7
# records path measured 0.59x of Terminate against 0.63-0.69x with 128-256 KiB.  A
# batch stays far under clrk_extproc's 4 MiB message limit; Envoy holds an entry at
# most the flush interval unless clrk_extproc falls behind.
ACCESS_LOG_BUFFER = 256 * 1024


def _pack(name: str, message) -> Filter:
    return Filter(name=name, typed_config=Any.pack(message))


def _http_filter(name: str, message) -> HttpFilter:
    return HttpFilter(name=name, typed_config=Any.pack(message))


def _envoy_grpc(initial_metadata: Sequence[HeaderValue] = ()) -> GrpcService:
    return build(
        GrpcService,
        envoy_grpc=build(GrpcServiceEnvoyGrpc, cluster_name=EXTPROC_CLUSTER),
        timeout=EXTPROC_TIMEOUT,
        initial_metadata=list(initial_metadata),
    )


def _tlv_headers_in() -> HeaderMutation:
    removes = [Mutation(remove=h) for h in TLV_HEADERS]
    sets = [
        Mutation(
            append=HeaderValueOption(
                header=HeaderValue(key=h, value=tlv_format(f)),
                append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )
        for h, f in TLV_HEADERS.items()
    ]
    return HeaderMutation(mutations=Mutations(request_mutations=[*removes, *sets]))


def _tlv_headers_out() -> HeaderMutation:
    return HeaderMutation(
        mutations=Mutations(request_mutations=[Mutation(remove=h) for h in TLV_HEADERS])
    )


def _ext_proc(facts: ChainFacts) -> ExternalProcessor:
    send, skip = ProcessingModeHeaderSendMode.SEND, ProcessingModeHeaderSendMode.SKIP
    return ExternalProcessor(
        grpc_service=_envoy_grpc([HeaderValue(key=k, value=v) for k, v in facts.metadata()]),
        failure_mode_allow=False,  # fail closed: no answer from clrk_extproc, no request
        processing_mode=ProcessingMode(
            request_header_mode=send,
            response_header_mode=send,
            request_body_mode=ProcessingModeBodySendMode.NONE,
            response_body_mode=ProcessingModeBodySendMode.NONE,
            request_trailer_mode=skip,
            response_trailer_mode=skip,
        ),
        message_timeout=EXTPROC_TIMEOUT,
    )


def _typed(name: str, message) -> TypedExtensionConfig:
    return TypedExtensionConfig(name=name, typed_config=Any.pack(message))


def _ext_proc_when_tagged(facts: ChainFacts) -> ExtensionWithMatcher:
    """ext_proc that skips every request but one whose connection carries a deny policy
    TLV ("namespace/name"; the TLV header reads "-" when there is none).  The matcher
    reads the header the first filter set, so the agent cannot add or remove it."""
    header = HttpRequestHeaderMatchInput(header_name=HEADER_DENY_POLICY)
    tagged = MatcherMatcherListPredicate(
        single_predicate=MatcherMatcherListPredicateSinglePredicate(
            input=_typed("deny_policy_tlv", header),
            value_match=StringMatcher(contains="/"),
        )
    )
    skip = MatcherMatcherListFieldMatcher(
        predicate=MatcherMatcherListPredicate(not_matcher=tagged),
        on_match=MatcherOnMatch(action=_typed("skip", SkipFilter())),
    )
    return ExtensionWithMatcher(
        xds_matcher=Matcher(matcher_list=MatcherMatcherList(matchers=[skip])),
        extension_config=CoreTypedExtensionConfig(
            name="envoy.filters.http.ext_proc", typed_config=Any.pack(_ext_proc(facts))
        ),
    )


def _sds(name: str) -> SdsSecretConfig:
    return SdsSecretConfig(
        name=name,
        sds_config=ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3),
    )


def leaf_secret_name(route: str) -> str:
    """The SDS name of a route's leaf certificate ("namespace/name" -> leaf/ns/name)."""
    return f"leaf/{route}"


def _downstream_tls(secret: str) -> TransportSocket:
    context = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificate_sds_secret_configs=[_sds(secret)],
            alpn_protocols=["http/1.1"],
        )
    )
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=Any.pack(context))


def l7_chain(
    name: str,
    facts: ChainFacts,
    *,
    domains: Sequence[str],
    terminate_secret: str | None,
    ext_proc: bool,
    injected: Sequence[CompiledCredential] = (),
    known: Sequence[CompiledCredential] = (),
) -> FilterChain:
    """One L7 filter chain; `terminate_secret` set means TLS Terminate with that leaf.
    `ext_proc` false: ext_proc only for deny-tagged requests, records by access log.
    `injected`: the credentials this chain's route injects; `known`: every credential
    of the gateway, whose placeholders the tripwire looks for (translate_credentials)."""
    stat = name.replace("/", ".")
    cluster = ORIGINAL_DST_TLS_CLUSTER if terminate_secret else "original_dst"
    domains = list(domains) or ["*"]
    covering = tc.coverage(domains, injected)
    hosts = tc.virtual_hosts(stat, covering, cluster, known)
    route_config = RouteConfiguration(name=name, virtual_hosts=hosts)
    injectors = [
        tc.injector_filter(c, _sds(tc.secret_name(c.ref)), tc.injected_hosts(covering, c))
        for c in injected
    ]
    hcm = HttpConnectionManager(
        stat_prefix=stat,
        route_config=route_config,
        strip_any_host_port=True,
        http_filters=[
            _http_filter("clrk.tlv_headers", _tlv_headers_in()),
            _http_filter("envoy.filters.http.ext_proc", _ext_proc(facts))
            if ext_proc
            else _http_filter("clrk.ext_proc_when_tagged", _ext_proc_when_tagged(facts)),
            # After ext_proc: the secret is set where no Python sees it.
            *injectors,
            _http_filter("clrk.strip_tlv_headers", _tlv_headers_out()),
            _http_filter("envoy.filters.http.router", Router()),
        ],
        # Without ext_proc the one log records every request, the tripwire's too.
        access_log=[http_access_log(facts)]
        if not ext_proc
        else [tc.misuse_access_log(facts.listener, _envoy_grpc())]
        if known
        else [],
    )
    return FilterChain(
        name=name,
        filters=[_pack("envoy.filters.network.http_connection_manager", hcm)],
        transport_socket=_downstream_tls(terminate_secret) if terminate_secret else None,
    )


def domains_for(hostnames: Sequence[str] | None) -> list[str]:
    """Virtual-host domains: the route's names (Host must name one of them), or any
    host when a match of the chain admits any name (CIDR-only or no destination)."""
    if not hostnames:
        return ["*"]
    return sorted(set(hostnames))


# --- L4 access log -------------------------------------------------------------------


def tcp_access_log(listener: str, of_listener: bool = False) -> AccessLog:
    """gRPC access log to clrk_extproc; the TLVs travel as custom tags, and the gateway
    listener of the chain as a literal one.  `of_listener`: the listener's own log, which
    also names the chain that took the connection (`clrk.wire.CHAIN_TAG`)."""
    tags = [build(CustomTag, tag=tlv_tag(t), value=tlv_format(TLV_FIELDS[t])) for t in TAGGED_TLVS]
    tags.append(build(CustomTag, tag=LISTENER_TAG, value=listener))
    if of_listener:
        tags.append(build(CustomTag, tag=CHAIN_TAG, value=CHAIN_NAME_FORMAT))
    config = build(
        TcpGrpcAccessLogConfig,
        common_config=build(
            CommonGrpcAccessLogConfig,
            log_name=ACCESS_LOG_NAME,
            grpc_service=_envoy_grpc(),
            transport_api_version=ApiVersion.V3,
            buffer_flush_interval=ACCESS_LOG_FLUSH,
            buffer_size_bytes=ACCESS_LOG_BUFFER,
            custom_tags=tags,
        ),
    )
    return build(AccessLog, name="envoy.access_loggers.tcp_grpc", typed_config=pack(config))


def http_access_log(facts: ChainFacts) -> AccessLog:
    """gRPC access log of an L7 chain without ext_proc: one entry per request, the TLVs,
    the chain's listener, route and rule and the agent's method as custom tags."""
    tags = [CustomTag(tag=tlv_tag(t), value=tlv_format(TLV_FIELDS[t])) for t in HTTP_TAGGED_TLVS]
    # "-" for no route: Envoy drops an empty tag, and its presence marks this log.
    chain = [(LISTENER_TAG, facts.listener), (CHAIN_ROUTE_TAG, facts.route or "-")]
    if facts.rule is not None:
        chain.append((CHAIN_RULE_TAG, str(facts.rule)))
    config = HttpGrpcAccessLogConfig(
        common_config=CommonGrpcAccessLogConfig(
            log_name=tc.HTTP_ACCESS_LOG_NAME,
            grpc_service=_envoy_grpc(),
            transport_api_version=ApiVersion.V3,
            buffer_flush_interval=ACCESS_LOG_FLUSH,
            buffer_size_bytes=ACCESS_LOG_BUFFER,
            custom_tags=[
                *tags,
                *(CustomTag(tag=k, value=v) for k, v in chain),
                CustomTag(tag=METHOD_TAG, value="%REQ(:METHOD)%"),
            ],
        )
    )
    return AccessLog(name="envoy.access_loggers.http_grpc", typed_config=Any.pack(config))


# --- clusters ------------------------------------------------------------------------


def _protocol_options(message) -> dict[str, Any]:
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": Any.pack(message)}


def extproc_cluster(address: tuple[str, int] | str) -> Cluster:
    """clrk_extproc at (host, port), or at the path of a Unix socket."""
    by_name = False
    if isinstance(address, str):
        where = build(Address, pipe=build(Pipe, path=address))
    else:
        where = build(
            Address,
            socket_address=build(SocketAddress, address=address[0], port_value=address[1]),
        )
        by_name = not is_ip_literal(address[0])  # a Service's name: resolved by Envoy
    endpoint = build(LbEndpoint, endpoint=build(Endpoint, address=where))
    return build(
        Cluster,
        name=EXTPROC_CLUSTER,
        type=ClusterDiscoveryType.STRICT_DNS if by_name else ClusterDiscoveryType.STATIC,
        connect_timeout=datetime.timedelta(seconds=1),
        load_assignment=build(
            ClusterLoadAssignment,
            cluster_name=EXTPROC_CLUSTER,
            endpoints=[build(LocalityLbEndpoints, lb_endpoints=[endpoint])],
        ),
        typed_extension_protocol_options=_protocol_options(
            build(
                HttpProtocolOptions,
                explicit_http_config=build(
                    HttpProtocolOptionsExplicitHttpConfig,
                    http2_protocol_options=build(Http2ProtocolOptions),
                ),
            )
        ),
    )


def original_dst_tls_cluster(ca_bundle: str | None) -> Cluster:
    """Re-originated TLS: SNI = the request's host, its certificate must name that host
    and chain to the trust bundle, else the request fails (502-class), never passes."""
    context = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=ca_bundle or SYSTEM_CA_BUNDLE)
            ),
            alpn_protocols=["http/1.1"],
        )
    )
    return Cluster(
        name=ORIGINAL_DST_TLS_CLUSTER,
        type=ClusterDiscoveryType.ORIGINAL_DST,
        lb_policy=ClusterLbPolicy.CLUSTER_PROVIDED,
        connect_timeout=CONNECT_TIMEOUT,
        transport_socket=TransportSocket(
            name="envoy.transport_sockets.tls", typed_config=Any.pack(context)
        ),
        typed_extension_protocol_options=_protocol_options(
            HttpProtocolOptions(
                upstream_http_protocol_options=UpstreamHttpProtocolOptions(
                    auto_sni=True, auto_san_validation=True
                ),
                explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                    http_protocol_options=Http1ProtocolOptions()
                ),
            )
        ),
    )
