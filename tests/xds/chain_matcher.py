"""A pure evaluator of a translated Envoy listener: which filter chain a connection gets,
and what that chain does with it.

It reads the listener as Envoy does: the `proxy_protocol` listener filter's rules say
which PROXY TLVs land in filter state and under which field; `tls_inspector`, when the
listener has it, makes the SNI visible; the `filter_chain_matcher` is evaluated field
matcher by field matcher, first match wins, and no match means the default chain (or a
closed connection without one).  The chain's outcome comes from its filters: tcp_proxy
forwards, direct_response closes, an HTTP connection manager hands requests to
ext_proc (on an allow chain only those whose deny TLV names a policy), whose deny
decision is `clrk_extproc`'s own (chain facts or the deny TLV).

Predicate inputs and matchers the translator does not use raise `Unsupported`, so a
translator change that needs new semantics fails the tests loudly instead of being
evaluated wrongly.  `tests/xds/test_chain_matcher.py` checks this evaluator against
the real Envoy.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy_data_plane.envoy.config.listener.v3 import FilterChain, Listener
from envoy_data_plane.envoy.extensions.common.matching.v3 import ExtensionWithMatcher
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import ExternalProcessor
from envoy_data_plane.envoy.extensions.filters.listener.proxy_protocol.v3 import ProxyProtocol
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
)
from envoy_data_plane.envoy.extensions.matching.common_inputs.network.v3 import (
    DestinationIpInput,
    DestinationPortInput,
    FilterStateInput,
    ServerNameInput,
)
from envoy_data_plane.envoy.extensions.matching.input_matchers.ip.v3 import Ip
from envoy_data_plane.google.protobuf import StringValue
from envoy_data_plane.xds.type.matcher.v3 import MatcherMatcherListPredicate, StringMatcher

from clrk.wire import HEADER_DENY_POLICY, TLV_FILTER_STATE_KEY, ChainFacts, proxying_chain
from clrk_extproc.exchange import Exchange

# Any -> its message, by the Any's identity (kept alive here, so an id is never reused):
# the property test evaluates each translated listener many times.
_UNPACKED: dict[int, tuple[object, object]] = {}


def _unpack(any_message):
    hit = _UNPACKED.get(id(any_message))
    if hit is None:
        if len(_UNPACKED) > 100_000:
            _UNPACKED.clear()
        hit = _UNPACKED[id(any_message)] = (any_message, any_message.unpack())
    return hit[1]


class Unsupported(Exception):
    """The listener uses matcher semantics this evaluator does not model."""


class Outcome(enum.StrEnum):
    CLOSED = "closed"  # no chain, or a chain that only closes
    FORWARDED = "forwarded"  # tcp_proxy to the original destination
    HTTP_ALLOWED = "http_allowed"  # requests go to ext_proc, which lets them through
    HTTP_DENIED = "http_denied"  # ext_proc answers every request with the deny response

    @property
    def allows(self) -> bool:
        return self in (Outcome.FORWARDED, Outcome.HTTP_ALLOWED)


@dataclass(frozen=True)
class Arrival:
    """A connection as it reaches the Envoy listener from the dialer."""

    dst_ip: str  # the original destination, restored from the PROXY header
    dst_port: int
    tlvs: Mapping[int, str] = field(default_factory=dict)  # PROXY TLV type -> value
    sni: str | None = None  # what a ClientHello on the connection names


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    chain: str | None  # the chosen filter chain's name; None: no chain at all


def _filter_state(listener: Listener, arrival: Arrival) -> dict[str, str]:
    """TLV field -> value, as the proxy_protocol filter stores them (FILTER_STATE)."""
    for lf in listener.listener_filters:
        if lf.name == "envoy.filters.listener.proxy_protocol":
            config = _unpack(lf.typed_config)
            assert isinstance(config, ProxyProtocol)
            keys = {rule.tlv_type: rule.on_tlv_present.key for rule in config.rules}
            return {keys[t]: v for t, v in arrival.tlvs.items() if t in keys and v}
    raise Unsupported(f"listener {listener.name} has no proxy_protocol filter")


def _has_tls_inspector(listener: Listener) -> bool:
    return any(
        lf.name == "envoy.filters.listener.tls_inspector" for lf in listener.listener_filters
    )


@dataclass(frozen=True)
class _Inputs:
    state: Mapping[str, str]
    dst_ip: str
    dst_port: int
    sni: str | None

    def read(self, config) -> str | None:
        """The input's value; None when Envoy has no data for it."""
        message = _unpack(config.typed_config)
        if isinstance(message, FilterStateInput):
            if message.key != TLV_FILTER_STATE_KEY:
                raise Unsupported(f"filter state key {message.key}")
            return self.state.get(message.field)
        if isinstance(message, DestinationIpInput):
            return self.dst_ip
        if isinstance(message, DestinationPortInput):
            return str(self.dst_port)
        if isinstance(message, ServerNameInput):
            return self.sni or None
        raise Unsupported(f"input {type(message).__name__}")


def _string_match(matcher: StringMatcher, value: str | None) -> bool:
    if value is None:
        return False
    if matcher.ignore_case:
        raise Unsupported("ignore_case")
    if matcher.exact is not None:
        return value == matcher.exact
    if matcher.safe_regex is not None:
        return re.fullmatch(matcher.safe_regex.regex, value) is not None
    raise Unsupported(f"string matcher {matcher}")


def _ip_match(config, value: str | None) -> bool:
    matcher = _unpack(config.typed_config)
    if not isinstance(matcher, Ip):
        raise Unsupported(f"custom matcher {type(matcher).__name__}")
    if value is None:
        return False
    address = ipaddress.ip_address(value)
    return any(
        address in ipaddress.ip_network(f"{r.address_prefix}/{r.prefix_len}")
        for r in matcher.cidr_ranges
    )


def _holds(predicate: MatcherMatcherListPredicate, inputs: _Inputs) -> bool:
    if predicate.single_predicate is not None:
        single = predicate.single_predicate
        value = inputs.read(single.input)
        if single.value_match is not None:
            return _string_match(single.value_match, value)
        if single.custom_match is not None:
            return _ip_match(single.custom_match, value)
        raise Unsupported("single predicate without a matcher")
    if predicate.and_matcher is not None:
        return all(_holds(p, inputs) for p in predicate.and_matcher.predicate)
    if predicate.or_matcher is not None:
        return any(_holds(p, inputs) for p in predicate.or_matcher.predicate)
    if predicate.not_matcher is not None:
        return not _holds(predicate.not_matcher, inputs)
    raise Unsupported("empty predicate")


def _chain_named(listener: Listener, action) -> FilterChain:
    value = _unpack(action.typed_config)
    if not isinstance(value, StringValue):
        raise Unsupported(f"action {type(value).__name__}")
    found = [c for c in listener.filter_chains if c.name == value.value]
    if len(found) != 1:
        raise AssertionError(f"the matcher names chain {value.value!r}, defined {len(found)}x")
    return found[0]


def choose_chain(listener: Listener, arrival: Arrival) -> FilterChain | None:
    """The filter chain Envoy gives the connection; None: it is closed unserved."""
    inputs = _Inputs(
        _filter_state(listener, arrival),
        arrival.dst_ip,
        arrival.dst_port,
        arrival.sni if _has_tls_inspector(listener) else None,
    )
    matcher = listener.filter_chain_matcher
    if matcher is not None:
        if matcher.matcher_list is None or matcher.on_no_match is not None:
            raise Unsupported("only a matcher list without on_no_match is modelled")
        for fm in matcher.matcher_list.matchers:
            if _holds(fm.predicate, inputs):
                if fm.on_match.action is None:
                    raise Unsupported("nested matchers")
                return _chain_named(listener, fm.on_match.action)
    return listener.default_filter_chain


EXT_PROC_FILTERS = ("envoy.filters.http.ext_proc", "clrk.ext_proc_when_tagged")


def _runs_when_tagged(wrapper: ExtensionWithMatcher, deny_tlv: str) -> bool:
    """The one matcher the translator wraps ext_proc in: skip unless the deny policy
    TLV header contains the given substring."""
    matcher = wrapper.xds_matcher
    if matcher is None or matcher.matcher_list is None or matcher.on_no_match is not None:
        raise Unsupported("only a matcher list without on_no_match is modelled")
    (skip,) = matcher.matcher_list.matchers
    single = skip.predicate.not_matcher.single_predicate
    header = _unpack(single.input.typed_config)
    if header.header_name != HEADER_DENY_POLICY or single.value_match.contains is None:
        raise Unsupported("ext_proc wrapped in another matcher")
    return single.value_match.contains in deny_tlv


def _http_outcome(chain: FilterChain, state: Mapping[str, str]) -> Outcome:
    hcm = _unpack(chain.filters[0].typed_config)
    assert isinstance(hcm, HttpConnectionManager)
    (ext_proc,) = [f for f in hcm.http_filters if f.name in EXT_PROC_FILTERS]
    processor = _unpack(ext_proc.typed_config)
    # The header_mutation filter copies the deny TLV into this header for ext_proc.
    tagged = state.get("deny_policy", "")
    if isinstance(processor, ExtensionWithMatcher):
        if not _runs_when_tagged(processor, tagged):
            return Outcome.HTTP_ALLOWED  # skipped: the request goes on, logged by Envoy
        processor = _unpack(processor.extension_config.typed_config)
    assert isinstance(processor, ExternalProcessor)
    metadata = [(h.key, h.value) for h in processor.grpc_service.initial_metadata]
    facts = ChainFacts.from_metadata(metadata)
    headers = [(HEADER_DENY_POLICY, tagged)]
    answer, _record = Exchange().request(headers, facts, now_ns=0)
    return Outcome.HTTP_DENIED if answer is not None else Outcome.HTTP_ALLOWED


def evaluate(listener: Listener, arrival: Arrival) -> Verdict:
    chain = choose_chain(listener, arrival)
    if chain is None:
        return Verdict(Outcome.CLOSED, None)
    kinds = [f.name for f in chain.filters]
    # A TCP or TLS Passthrough listener's one access log makes a record of a connection
    # by its chain's name (`proxying_chain`), not by what the chain runs; a proxying chain
    # of an L7 listener logs in its own tcp_proxy.  Exactly one of them, and never both.
    by_listener = bool(listener.access_log) and proxying_chain(chain.name)
    if kinds == ["envoy.filters.network.tcp_proxy"]:
        by_chain = bool(_unpack(chain.filters[0].typed_config).access_log)
        if by_listener + by_chain != 1:
            raise AssertionError(f"chain {chain.name} proxies with {by_listener + by_chain} logs")
        return Verdict(Outcome.FORWARDED, chain.name)
    if kinds == ["envoy.filters.network.direct_response"]:
        if by_listener:
            raise AssertionError(f"chain {chain.name} closes but would make a record")
        return Verdict(Outcome.CLOSED, chain.name)
    if kinds == ["envoy.filters.network.http_connection_manager"]:
        return Verdict(_http_outcome(chain, _filter_state(listener, arrival)), chain.name)
    raise Unsupported(f"chain {chain.name} runs {kinds}")
