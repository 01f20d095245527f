"""The serialization shortcuts change the cost, never the bytes."""

from __future__ import annotations

from envoy_data_plane.envoy.config.listener.v3 import Listener

from bench.decide_bench import policy_documents
from clrk.api import load_objects
from clrk_xds import betterproto_speed
from clrk_xds.translate import serialize, translate


def test_memoized_route_parts_serialize_to_the_same_bytes_as_a_fresh_build():
    docs = policy_documents(50)
    first = translate(load_objects(docs).resources)  # builds and freezes the route parts
    again = translate(load_objects(docs).resources)  # new objects: built afresh
    for gw in first:
        for a, b in zip(first[gw].listeners, again[gw].listeners, strict=True):
            plain = betterproto_speed._plain_bytes(b)
            assert serialize(a) == plain
            assert Listener.parse(plain).to_dict() == b.to_dict()


def test_a_frozen_message_still_validates():
    listener = Listener(name="x")
    betterproto_speed.freeze(listener)
    listener._validate()  # the memo is not a field
    assert bytes(listener) == betterproto_speed._plain_bytes(listener)
