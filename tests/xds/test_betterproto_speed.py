"""The serialization shortcuts change the cost, never the bytes."""

from __future__ import annotations

import subprocess
import sys

import betterproto2
import pydantic
import pytest
from envoy_data_plane.envoy.config.listener.v3 import FilterChain, Listener
from envoy_data_plane.google.protobuf import Any
from envoy_data_plane.xds.type.matcher.v3 import (
    MatcherMatcherListPredicateSinglePredicate,
    StringMatcher,
)

from bench.decide_bench import policy_documents
from clrk.api import load_objects
from clrk.policy.loaded import compile_loaded
from clrk_xds import betterproto_speed
from clrk_xds.betterproto_check import InvalidMessage
from clrk_xds.translate import ChainCache, serialize, translate


def test_cached_route_parts_serialize_to_the_same_bytes_as_a_fresh_build():
    policies = compile_loaded(load_objects(policy_documents(50))).compiled
    cache = ChainCache()  # installs the shortcuts
    translate(policies, cache=cache)  # builds and freezes the route parts
    cached = translate(policies, cache=cache)  # reuses them
    fresh = translate(policies)  # built afresh, nothing frozen
    for gw in cached:
        for a, b in zip(cached[gw].listeners, fresh[gw].listeners, strict=True):
            plain = betterproto_speed._plain_bytes(b)
            assert serialize(a) == plain
            assert Listener.parse(plain).to_dict() == b.to_dict()


def test_a_frozen_message_still_validates():
    betterproto_speed.install()
    listener = Listener(name="x")
    betterproto_speed.freeze(listener)
    betterproto_speed.derived(listener, lambda m: m.name)
    listener._validate()  # the memos are not fields
    assert bytes(listener) == betterproto_speed._plain_bytes(listener)


_DIGESTS = """
import hashlib, sys, yaml
from clrk_xds import betterproto_speed
if sys.argv[1] == "constructed":  # before the translator binds `build`
    betterproto_speed.build = lambda cls, **fields: cls(**fields)
from bench.decide_bench import policy_documents
from clrk.api import load_objects
from clrk.policy.loaded import compile_loaded
from clrk_runtime.policy_messages import from_plain
from clrk_xds.translate import translate, translate_gateway
from tests.golden_cases import COMPILED, GOLDEN, cases, options

if sys.argv[1] == "installed":
    betterproto_speed.install()
gateways = list(translate(compile_loaded(load_objects(policy_documents(50))).compiled).values())
for case in cases():
    compiled = yaml.safe_load((GOLDEN / case / COMPILED).read_text())
    for plain in compiled["gateways"].values():
        gateways.append(translate_gateway(from_plain(plain), **options(case)))
for gw in gateways:
    for message in (*gw.listeners, *gw.clusters, *gw.secrets):
        print(message.name, hashlib.sha256(bytes(message)).hexdigest())
"""


def test_the_planned_serializer_writes_betterproto2s_own_bytes_for_every_translated_message():
    """Every golden case and a bench policy, serialized in a process with the shortcuts
    and in one without any (a patched class serializes its nested messages patched too),
    and with every `build` a validating constructor: the same bytes, so no value the
    translator builds with is one pydantic would have coerced."""

    def digests(mode: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", _DIGESTS, mode], capture_output=True, text=True, check=True
        )
        return run.stdout

    plain = digests("plain")
    assert plain.count("\n") > 50
    assert digests("installed") == plain
    assert digests("constructed") == plain


def test_a_derived_value_is_computed_once_only_for_a_frozen_message():
    betterproto_speed.install()
    calls = []

    def names(message):
        calls.append(message)
        return frozenset({message.name})

    listener = Listener(name="x")
    assert betterproto_speed.derived(listener, names) == {"x"}
    assert betterproto_speed.derived(listener, names) == {"x"}
    assert len(calls) == 2  # not frozen: it may change
    betterproto_speed.freeze(listener)
    assert betterproto_speed.derived(listener, names) == {"x"}
    assert betterproto_speed.derived(listener, names) == {"x"}
    assert len(calls) == 3
    listener._validate()  # the memo is not a field


def test_a_built_message_equals_the_one_its_constructor_makes():
    single = betterproto_speed.build(
        MatcherMatcherListPredicateSinglePredicate, value_match=StringMatcher(exact="x")
    )
    constructed = MatcherMatcherListPredicateSinglePredicate(value_match=StringMatcher(exact="x"))
    assert single == constructed
    assert single.to_dict() == constructed.to_dict()
    assert betterproto_speed._plain_bytes(single) == betterproto_speed._plain_bytes(constructed)


def test_built_messages_never_share_a_list():
    a, b = (betterproto_speed.build(Listener, name=n) for n in "ab")
    a.filter_chains.append(FilterChain(name="x"))
    assert b.filter_chains == []


def test_a_built_message_of_a_wrong_value_fails_when_it_is_serialized():
    """`build` leaves the validation to serialization: with or without the shortcuts
    (pydantic's validation, or the check that stands for it), a wrong type, a field the
    class lacks or two members of a oneof never reach Envoy."""
    wrong = [
        betterproto_speed.build(Listener, name=7),
        betterproto_speed.build(Listener, nmae="x"),
        betterproto_speed.build(StringMatcher, exact="a", prefix="b"),
    ]
    for message in wrong:
        with pytest.raises(pydantic.ValidationError):
            betterproto_speed._plain_bytes(message)
    betterproto_speed.install()
    for message in wrong:
        with pytest.raises(InvalidMessage):
            bytes(message)
        with pytest.raises(InvalidMessage):
            betterproto_speed.freeze(message)


def test_a_length_is_written_as_betterproto2_writes_its_varint():
    for n in (*range(0x4100), 2**21 - 1, 2**21, 2**28, 2**35):
        assert betterproto_speed._length(n) == betterproto2.encode_varint(n)


def test_a_packed_message_is_the_any_of_its_bytes():
    inner = StringMatcher(exact="x")
    assert betterproto_speed.pack(inner) == Any.pack(inner)
