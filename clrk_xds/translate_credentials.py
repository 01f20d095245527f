"""EgressCredential in Envoy (pure): injection, the tripwire and its access log.

- **Injection.** One `credential_injector` HTTP filter per credential on the chains of
  its route, wrapped in a matcher that skips it unless the request's host is one the
  credential covers (Envoy enables a filter per route only through a per-route config,
  which the injector has none of).  It reads the secret from SDS (`credential/<ns>/<name>`,
  served by the control plane), so the listener and Envoy's config dump hold only the
  secret's name, and ext_proc, which runs before it, never sees the value.  It
  overwrites whatever the agent sent in that header.
- **Tripwire.** Every L7 chain answers a request that carries a known placeholder (in
  the credential's header or in `authorization`) on a virtual host the credential does
  not cover with a direct 403 from the route table: no upstream, no Python on the
  request path.  The chain's HTTP access log, filtered to those routes, brings
  that answer to clrk_extproc, which writes the `credential_misuse` record from it.
- The forwarding route of a credential's virtual host is named after the credential
  (`injected/<ns>/<name>`): the access log's `egress.http` record names it from there,
  so an injecting chain needs no ext_proc either.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from envoy_data_plane.envoy.config.accesslog.v3 import (
    AccessLog,
    AccessLogFilter,
    ExtensionFilter,
)
from envoy_data_plane.envoy.config.core.v3 import (
    ApiVersion,
    DataSource,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    TypedExtensionConfig,
)
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
from envoy_data_plane.envoy.extensions.access_loggers.grpc.v3 import (
    CommonGrpcAccessLogConfig,
    HttpGrpcAccessLogConfig,
)
from envoy_data_plane.envoy.extensions.common.matching.v3 import ExtensionWithMatcher
from envoy_data_plane.envoy.extensions.filters.common.matcher.action.v3 import SkipFilter
from envoy_data_plane.envoy.extensions.filters.http.credential_injector.v3 import (
    CredentialInjector,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpFilter,
)
from envoy_data_plane.envoy.extensions.http.injected_credentials.generic.v3 import Generic
from envoy_data_plane.envoy.extensions.matching.common_inputs.network.v3 import FilterStateInput
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import SdsSecretConfig
from envoy_data_plane.envoy.type.matcher.v3 import HttpRequestHeaderMatchInput, StringMatcher
from envoy_data_plane.envoy.type.tracing.v3 import CustomTag
from envoy_data_plane.google.protobuf import Any
from envoy_data_plane.xds.core.v3 import TypedExtensionConfig as XdsTypedExtensionConfig
from envoy_data_plane.xds.type.matcher.v3 import (
    Matcher,
    MatcherMatcherList,
    MatcherMatcherListFieldMatcher,
    MatcherMatcherListPredicatePredicateList,
    MatcherMatcherListPredicateSinglePredicate,
    MatcherOnMatch,
    RegexMatcher,
    RegexMatcherGoogleRe2,
)
from envoy_data_plane.xds.type.matcher.v3 import (
    MatcherMatcherListPredicate as Predicate,
)
from envoy_data_plane.xds.type.matcher.v3 import StringMatcher as XdsStringMatcher

from clrk.api.resolve import covers
from clrk.policy.compiled import CompiledCredential
from clrk.wire import (
    CREDENTIAL_MISUSE,
    DENY_REASON_HEADER,
    INJECTED_ROUTE_PREFIX,
    LISTENER_TAG,
    MISUSE_ROUTE_PREFIX,
    TAGGED_TLVS,
    TLV_FIELDS,
    TLV_FILTER_STATE_KEY,
    TlvType,
    tlv_format,
    tlv_tag,
)
from clrk_xds.translate_regex import hostname_regex

SECRET_PREFIX = "credential/"
FILTER_PREFIX = "clrk.credential/"
HTTP_ACCESS_LOG_NAME = "clrk.http"
MISUSE_BODY = (
    "clrk: credential_misuse: this request carries the placeholder of a credential that "
    "is not valid for this destination\n"
)


def secret_name(credential: str) -> str:
    """The SDS name of a credential's secret ("ns/name" -> credential/ns/name)."""
    return f"{SECRET_PREFIX}{credential}"


def filter_name(credential: str) -> str:
    return f"{FILTER_PREFIX}{credential}"


def injector_filter(
    credential: CompiledCredential, sds: SdsSecretConfig, hosts: Sequence[str]
) -> HttpFilter:
    """The credential's injector for requests to `hosts` ("*": any).  No secret (an
    unreadable source) fails the request with 401 rather than sending it without."""
    generic = Generic(
        credential=sds, header=credential.header, header_value_prefix=credential.prefix or ""
    )
    injector = CredentialInjector(
        overwrite=True,
        allow_request_without_credential=False,
        credential=TypedExtensionConfig(
            name="envoy.http.injected_credentials.generic", typed_config=Any.pack(generic)
        ),
    )
    config = TypedExtensionConfig(
        name="envoy.filters.http.credential_injector", typed_config=Any.pack(injector)
    )
    if "*" in hosts:
        return HttpFilter(name=filter_name(credential.ref), typed_config=config.typed_config)
    names = hostname_regex(hosts)
    # Both the request's host and the name the dialer bound the connection's address to
    # (the PROXY authority TLV) must be the credential's: a Host header alone could send
    # the secret to an address of the agent's choosing over plain HTTP.
    elsewhere = Predicate(
        not_matcher=Predicate(
            and_matcher=MatcherMatcherListPredicatePredicateList(
                predicate=[
                    _matches(
                        "authority",
                        Any.pack(HttpRequestHeaderMatchInput(header_name=":authority")),
                        names,
                    ),
                    _matches(
                        "tlv.authority",
                        Any.pack(
                            FilterStateInput(
                                key=TLV_FILTER_STATE_KEY, field=TLV_FIELDS[TlvType.AUTHORITY]
                            )
                        ),
                        names,
                    ),
                ]
            )
        )
    )
    skip = XdsTypedExtensionConfig(name="skip", typed_config=Any.pack(SkipFilter()))
    matcher = Matcher(
        matcher_list=MatcherMatcherList(
            matchers=[
                MatcherMatcherListFieldMatcher(
                    predicate=elsewhere, on_match=MatcherOnMatch(action=skip)
                )
            ]
        )
    )
    wrapped = ExtensionWithMatcher(xds_matcher=matcher, extension_config=config)
    return HttpFilter(name=filter_name(credential.ref), typed_config=Any.pack(wrapped))


def _matches(name: str, matcher_input: Any, regex: str) -> Predicate:
    return Predicate(
        single_predicate=MatcherMatcherListPredicateSinglePredicate(
            input=XdsTypedExtensionConfig(name=name, typed_config=matcher_input),
            value_match=XdsStringMatcher(
                safe_regex=RegexMatcher(google_re2=RegexMatcherGoogleRe2(), regex=regex)
            ),
        )
    )


def _header(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(
        header=HeaderValue(key=key, value=value),
        append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def misuse_routes(credentials: Sequence[CompiledCredential]) -> list[Route]:
    """Direct 403s for a placeholder of `credentials` in its header or authorization."""
    routes = []
    for cred in credentials:
        for header in dict.fromkeys((cred.header, "authorization")):
            routes.append(
                Route(
                    name=f"{MISUSE_ROUTE_PREFIX}{cred.ref}",
                    match=RouteMatch(
                        prefix="/",
                        headers=[
                            HeaderMatcher(
                                name=header,
                                string_match=StringMatcher(
                                    contains=cred.placeholder, ignore_case=True
                                ),
                            )
                        ],
                    ),
                    direct_response=DirectResponseAction(
                        status=403, body=DataSource(inline_string=MISUSE_BODY)
                    ),
                    response_headers_to_add=[_header(DENY_REASON_HEADER, CREDENTIAL_MISUSE)],
                )
            )
    return routes


def _forward(cluster: str, injected: Sequence[CompiledCredential]) -> Route:
    return Route(
        name=INJECTED_ROUTE_PREFIX + ",".join(c.ref for c in injected) if injected else "",
        match=RouteMatch(prefix="/"),
        route=RouteAction(cluster=cluster),
        # An upstream cannot speak for the gateway in ext_proc's record.
        response_headers_to_remove=[DENY_REASON_HEADER],
    )


def _covered(domains: Sequence[str], name: str) -> bool:
    return any(d == "*" or covers(d, name) for d in domains)


def coverage(
    domains: Sequence[str], injected: Sequence[CompiledCredential]
) -> dict[str, tuple[CompiledCredential, ...]]:
    """Host pattern -> the credentials injected there: the chain's `domains`, and the
    names of credentials that the domains allow (a credential without hostnames
    covers every domain)."""
    covering: dict[str, tuple[CompiledCredential, ...]] = {d: () for d in domains}
    for cred in injected:
        for name in cred.hostnames or domains:
            if name in covering or _covered(domains, name):
                covering[name] = (*covering.get(name, ()), cred)
    return covering


def injected_hosts(
    covering: dict[str, tuple[CompiledCredential, ...]], credential: CompiledCredential
) -> list[str]:
    return [name for name, creds in covering.items() if credential in creds]


def virtual_hosts(
    stat: str,
    covering: dict[str, tuple[CompiledCredential, ...]],
    cluster: str,
    known: Sequence[CompiledCredential],
) -> list[VirtualHost]:
    """The chain's virtual hosts: its hosts grouped by the credentials injected there,
    each with the tripwire for every other known credential, then the forwarding
    route."""
    hosts = []
    groups = sorted(covering.items(), key=lambda kv: [c.ref for c in kv[1]])
    for creds, group in itertools.groupby(groups, key=lambda kv: kv[1]):
        names = sorted(name for name, _ in group)
        others = [c for c in known if c not in creds]
        suffix = "".join(f"/{c.ref}" for c in creds)
        hosts.append(
            VirtualHost(
                name=stat + suffix.replace("/", "."),
                domains=names,
                routes=[*misuse_routes(others), _forward(cluster, creds)],
            )
        )
    if known and "*" not in covering:  # a host no route allows: 404 as before, the tripwire first
        hosts.append(VirtualHost(name=f"{stat}.other", domains=["*"], routes=misuse_routes(known)))
    return hosts


def misuse_access_log(listener: str, extproc: object) -> AccessLog:
    """The chain's HTTP access log to clrk_extproc, of the tripwire's answers only (a
    CEL filter on the route's name): no other request costs a log entry."""
    tags = [CustomTag(tag=tlv_tag(t), value=tlv_format(TLV_FIELDS[t])) for t in TAGGED_TLVS]
    config = HttpGrpcAccessLogConfig(
        common_config=CommonGrpcAccessLogConfig(
            log_name=HTTP_ACCESS_LOG_NAME,
            grpc_service=extproc,
            transport_api_version=ApiVersion.V3,
            custom_tags=[*tags, CustomTag(tag=LISTENER_TAG, value=listener)],
        )
    )
    return AccessLog(
        name="envoy.access_loggers.http_grpc",
        filter=AccessLogFilter(
            extension_filter=ExtensionFilter(
                name="envoy.access_loggers.extension_filters.cel",
                typed_config=Any.pack(
                    ExpressionFilter(
                        expression=f"xds.route_name.startsWith('{MISUSE_ROUTE_PREFIX}')"
                    )
                ),
            )
        ),
        typed_config=Any.pack(config),
    )
