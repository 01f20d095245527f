"""Predicates of the listener's filter-chain matcher (xds matcher API), one per route match.

Inputs, as Envoy sees a connection after the `proxy_protocol` listener filter:
- the PROXY TLVs, stored as fields of one filter-state object (tlv_location FILTER_STATE);
- the destination IP and port, which the PROXY header restored to the original ones;
- the TLS SNI from `tls_inspector` (TLS listeners only: SPEC 4 counts the SNI nowhere
  else).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from envoy_data_plane.envoy.config.core.v3 import CidrRange
from envoy_data_plane.envoy.extensions.matching.common_inputs.network.v3 import (
    DestinationIpInput,
    DestinationPortInput,
    FilterStateInput,
    ServerNameInput,
)
from envoy_data_plane.envoy.extensions.matching.input_matchers.ip.v3 import Ip
from envoy_data_plane.google.protobuf import StringValue
from envoy_data_plane.xds.core.v3 import TypedExtensionConfig
from envoy_data_plane.xds.type.matcher.v3 import (
    MatcherMatcherListFieldMatcher,
    MatcherMatcherListPredicate,
    MatcherMatcherListPredicatePredicateList,
    MatcherMatcherListPredicateSinglePredicate,
    MatcherOnMatch,
    RegexMatcher,
    RegexMatcherGoogleRe2,
    StringMatcher,
)

from clrk.wire import TLV_FIELDS, TLV_FILTER_STATE_KEY, TlvType
from clrk_xds import betterproto_speed
from clrk_xds.betterproto_speed import build, pack
from clrk_xds.translate_regex import hostname_regex

Predicate = MatcherMatcherListPredicate
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# Every message of a predicate is made by `build`: one or two dozen per route, validated
# once, as they are serialized (betterproto_speed).


def _input(name: str, message) -> TypedExtensionConfig:
    return build(TypedExtensionConfig, name=name, typed_config=pack(message))


def _constant_input(name: str) -> TypedExtensionConfig:
    """A matcher input without parameters ("sni", "destination_ip", ...): a handful in
    all, so each is built (and, with the shortcuts installed, serialized) once and
    shared by every predicate; building them per predicate was a fifth of a cold
    translation."""
    return _shared_input(name, betterproto_speed.installed())


@functools.cache
def _shared_input(name: str, frozen: bool) -> TypedExtensionConfig:
    # `frozen` keys the cache: once the shortcuts are installed, a frozen one is built.
    message = {
        "sni": ServerNameInput,
        "destination_ip": DestinationIpInput,
        "destination_port": DestinationPortInput,
    }[name]()
    shared = _input(name, message)
    betterproto_speed.freeze(shared)
    return shared


def _tlv_input(tlv: TlvType) -> TypedExtensionConfig:
    """One PROXY TLV as a matcher input, shared as `_constant_input`'s are."""
    return _shared_tlv_input(tlv, betterproto_speed.installed())


@functools.cache
def _shared_tlv_input(tlv: TlvType, frozen: bool) -> TypedExtensionConfig:
    # `frozen` keys the cache, as in `_shared_input`.
    field = TLV_FIELDS[tlv]
    shared = _input(f"tlv.{field}", FilterStateInput(key=TLV_FILTER_STATE_KEY, field=field))
    betterproto_speed.freeze(shared)
    return shared


def _port_value(pattern: str) -> StringMatcher:
    """One port (`^443$`) as an exact string, a set of them as the pattern: Envoy
    compiles every regex of every chain again on each listener update, an exact string
    costs nothing."""
    digits = pattern.removeprefix("^").removesuffix("$")
    if digits.isascii() and digits.isdigit():
        return build(StringMatcher, exact=digits)
    return _regex(pattern)


def _regex(pattern: str) -> StringMatcher:
    regex = build(RegexMatcher, google_re2=_google_re2(), regex=pattern)
    return build(StringMatcher, safe_regex=regex)


# Once the shortcuts are installed, a predicate many routes have alike (a port range,
# "an SNI is present") is built, validated and serialized once and shared, frozen, by
# all of them, as the inputs are: at 10,000 routes that was a third of the messages.
SHARED_PREDICATES = 4096


def _google_re2() -> RegexMatcherGoogleRe2:
    if betterproto_speed.installed():
        return _frozen_google_re2()
    return build(RegexMatcherGoogleRe2)


@functools.cache
def _frozen_google_re2() -> RegexMatcherGoogleRe2:
    shared = build(RegexMatcherGoogleRe2)
    betterproto_speed.freeze(shared)
    return shared


def _single(input_: TypedExtensionConfig, value: StringMatcher) -> Predicate:
    single = build(MatcherMatcherListPredicateSinglePredicate, input=input_, value_match=value)
    return build(Predicate, single_predicate=single)


def all_of(predicates: Sequence[Predicate]) -> Predicate:
    """AND; a single predicate stays as it is (the API wants 2+ in a list)."""
    if len(predicates) == 1:
        return predicates[0]
    both = build(MatcherMatcherListPredicatePredicateList, predicate=list(predicates))
    return build(Predicate, and_matcher=both)


def any_of(predicates: Sequence[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    either = build(MatcherMatcherListPredicatePredicateList, predicate=list(predicates))
    return build(Predicate, or_matcher=either)


def authority_in(hostnames: Sequence[str]) -> Predicate:
    """The hostname TLV the dialer sent matches one of the route's patterns."""
    return _single(_tlv_input(TlvType.AUTHORITY), _regex(hostname_regex(hostnames)))


def sni_in(hostnames: Sequence[str]) -> Predicate:
    """The SNI matches one of the patterns (one trailing dot allowed, as decide() folds)."""
    return _single(_constant_input("sni"), _regex(hostname_regex(hostnames, True)))


def sni_absent_or_in(hostnames: Sequence[str]) -> Predicate:
    """No SNI, or an SNI that matches the patterns (a TLS client naming another host is
    refused even when the dialer's hostname evidence matched)."""
    return any_of([_no_sni(), sni_in(hostnames)])


def _no_sni() -> Predicate:
    if betterproto_speed.installed():
        return _frozen_no_sni()
    return build(Predicate, not_matcher=_single(_constant_input("sni"), _regex(".+")))


@functools.cache
def _frozen_no_sni() -> Predicate:
    shared = build(Predicate, not_matcher=_single(_constant_input("sni"), _regex(".+")))
    betterproto_speed.freeze(shared)
    return shared


def destination_in(networks: Sequence[Network], stat_prefix: str) -> Predicate:
    ranges = [
        build(CidrRange, address_prefix=str(net.network_address), prefix_len=net.prefixlen)
        for net in networks
    ]
    single = build(
        MatcherMatcherListPredicateSinglePredicate,
        input=_constant_input("destination_ip"),
        custom_match=_input("ip", build(Ip, cidr_ranges=ranges, stat_prefix=stat_prefix)),
    )
    return build(Predicate, single_predicate=single)


def port_matches(pattern: str) -> Predicate:
    if betterproto_speed.installed():
        return _frozen_port_matches(pattern)
    return _single(_constant_input("destination_port"), _port_value(pattern))


@functools.lru_cache(maxsize=SHARED_PREDICATES)
def _frozen_port_matches(pattern: str) -> Predicate:
    shared = _single(_constant_input("destination_port"), _port_value(pattern))
    betterproto_speed.freeze(shared)
    return shared


def agent_in(agents: Sequence[tuple[str, str]]) -> Predicate:
    """The agent TLVs name one of `agents` ((namespace, name), non-empty), grouped by
    namespace so that each namespace costs one name pattern."""
    if betterproto_speed.installed():
        return _frozen_agent_in(tuple(agents))  # routes selecting the same agents share it
    return _agent_in(agents)


@functools.lru_cache(maxsize=SHARED_PREDICATES)
def _frozen_agent_in(agents: tuple[tuple[str, str], ...]) -> Predicate:
    shared = _agent_in(agents)
    betterproto_speed.freeze(shared)
    return shared


def _agent_in(agents: Sequence[tuple[str, str]]) -> Predicate:
    by_namespace: dict[str, list[str]] = {}
    for namespace, name in agents:
        by_namespace.setdefault(namespace, []).append(name)
    options = []
    for namespace in sorted(by_namespace):
        names = sorted(set(by_namespace[namespace]))
        alternation = "|".join(n.replace(".", r"\.") for n in names)
        # One name (the common case) is an exact string: no regex for Envoy to compile.
        name = (
            build(StringMatcher, exact=names[0])
            if len(names) == 1
            else _regex(f"^(?:{alternation})$")
        )
        options.append(
            all_of(
                [
                    _single(
                        _tlv_input(TlvType.AGENT_NAMESPACE), build(StringMatcher, exact=namespace)
                    ),
                    _single(_tlv_input(TlvType.AGENT_NAME), name),
                ]
            )
        )
    return any_of(options)


def field_matcher(predicate: Predicate, chain: str) -> MatcherMatcherListFieldMatcher:
    """On match, use the filter chain named `chain`."""
    action = build(
        TypedExtensionConfig, name=chain, typed_config=pack(build(StringValue, value=chain))
    )
    return build(
        MatcherMatcherListFieldMatcher,
        predicate=predicate,
        on_match=build(MatcherOnMatch, action=action),
    )
