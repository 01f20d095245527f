"""The compiled policy on the wire: what the control plane encodes, the dialer decodes to
a policy that decides the same, and a malformed or newer message is refused whole."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clrk.api import load_objects
from clrk.policy import Agent, decide
from clrk.policy.compiled import DenyResponse
from clrk.policy.loaded import compile_loaded
from clrk_runtime import policy_messages
from clrk_runtime.policy_messages import (
    SCHEMA,
    DecodedMatches,
    MatchBytes,
    PolicyDecodeError,
    decode_policy,
    encode_policy,
    from_plain,
    pb2,
    policy_from_update,
    policy_update,
    to_plain,
)
from tests.conftest import EXAMPLES, compile_paths, compile_yaml
from tests.policy.strategies import LABELS, connection, policy_with_modes

GW = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners:
  - {name: tcp, protocol: TCP}
  - {name: pass, protocol: TLS, port: 443}
  - {name: dgram, protocol: UDP}
  dns: {mode: Filtered, upstream: ["192.0.2.53:53", "[2001:db8::53]:5353"], minTTL: 2s}
  upstreamTLS: {caBundle: /etc/ca.pem}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - destinationHostnames: [api.example.com, "*.example.org"]
      destinationCIDRs: [10.0.0.0/8, "2001:db8::/32"]
      ports: [{port: 443}, {startPort: 8000, endPort: 8099}]
      sourceAgents:
        matchLabels: {team: a}
        matchExpressions: [{key: tier, operator: NotIn, values: [dev, test]}]
    - {protocol: UDP, destinationCIDRs: [192.0.2.0/24]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: no-r}
spec:
  targetRef: {name: r}
  denyResponse: {statusCode: 451, message: "not today"}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: a, labels: {team: a, tier: prod}}
spec: {egressRefs: [{gatewayRef: gw}]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: elsewhere}
spec: {egressRefs: [{gatewayRef: other}]}
"""


def _policy():
    return compile_yaml(GW).gateways[("default", "gw")]


def _round_trip(policy):
    wire = pb2.GatewayPolicy.FromString(encode_policy(policy).SerializeToString())
    return decode_policy(wire)


def test_every_field_survives_the_trip():
    original = _policy()
    back = _round_trip(original)
    assert to_plain(back) == to_plain(original)
    assert back.listeners == original.listeners
    assert back.dns == original.dns and back.dns.upstream[1] == ("2001:db8::53", 5353)
    assert dict(back.deny_responses) == dict(original.deny_responses)
    assert back.upstream_ca_bundle == "/etc/ca.pem"
    assert [a.name for a in back.agents] == ["a"]  # only the gateway's own agents travel
    for mine, theirs in zip(back.matches, original.matches, strict=True):
        for name in MatchFields:
            if name != "listeners":
                assert getattr(mine, name) == getattr(theirs, name), name
        assert [lst.name for lst in mine.listeners] == [lst.name for lst in theirs.listeners]


MatchFields = (
    "route", "rule", "match", "order", "protocol", "hostnames", "networks", "ports",
    "selector", "listeners", "deny_policy",
)  # fmt: skip


def test_the_plain_form_is_the_message_in_proto_json_and_reads_back():
    plain = to_plain(_policy())
    assert plain["listeners"][1] == {
        "name": "pass",
        "protocol": "PROTOCOL_TLS",
        "tlsMode": "TLS_MODE_PASSTHROUGH",
        "port": 443,
    }
    assert plain["matches"][0]["cidrs"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert to_plain(from_plain(plain)) == plain


def test_every_example_gateway_decides_the_same_after_the_trip():
    for ref, original in compile_paths(EXAMPLES).gateways.items():
        assert to_plain(_round_trip(original)) == to_plain(original), ref


def test_report_modes_survive_the_trip_and_an_unset_mode_is_enforce():
    original = dataclasses.replace(
        _policy(),
        mode="Report",
        deny_responses={"default/no-r": DenyResponse(451, "not today", "Report")},
    )
    back = _round_trip(original)
    assert back.mode == "Report" and back.deny_responses["default/no-r"].mode == "Report"
    msg = encode_policy(original)
    msg.ClearField("mode")
    for r in msg.deny_responses:
        r.ClearField("mode")
    older = decode_policy(msg)
    assert older.mode == "Enforce" and older.deny_responses["default/no-r"].mode == "Enforce"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=policy_with_modes(),
    conns=st.lists(connection(), min_size=1, max_size=6),
    labels=LABELS,
)
def test_random_policies_decide_the_same_after_the_trip(docs, conns, labels):
    original = compile_loaded(load_objects(docs)).compiled.gateways[("default", "gw")]
    back = _round_trip(original)
    agent = Agent("default", "a", labels)
    for conn in conns:
        assert decide(back, agent, conn) == decide(original, agent, conn)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=policy_with_modes(), after=policy_with_modes())
def test_an_update_reusing_the_last_ones_match_bytes_is_the_same_update(before, after):
    """The hub keeps the bytes of the matches it sent last: a reload encodes only the
    changed ones, and what the dialer receives is what encoding all of them gives."""
    matches = MatchBytes()
    for docs in (before, after, before):
        policy = compile_loaded(load_objects(docs)).compiled.gateways[("default", "gw")]
        reused = policy_update("default/gw", policy, matches)
        assert reused.SerializeToString() == policy_update("default/gw", policy).SerializeToString()


def _decoded(policy, matches: DecodedMatches | None = None):
    """`policy` through the wire, and accepted: `matches` keeps its entries."""
    wire = pb2.GatewayPolicy.FromString(encode_policy(policy).SerializeToString())
    back = decode_policy(wire, matches)
    if matches is not None:
        matches.keep(back)
    return back


def _same_policy(mine, theirs) -> None:
    assert to_plain(mine) == to_plain(theirs)
    assert mine.listeners == theirs.listeners
    for a, b in zip(mine.matches, theirs.matches, strict=True):
        assert all(getattr(a, n) == getattr(b, n) for n in MatchFields)
        assert all(any(lst is own for own in mine.listeners) for lst in a.listeners)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=policy_with_modes(), after=policy_with_modes(), conns=st.lists(connection()))
def test_a_dialer_reusing_the_last_updates_entries_decodes_what_decoding_all_gives(
    before, after, conns
):
    """The dialer keeps the entries of the matches it decoded last: an update decodes
    only the changed ones, and the policy is the one decoding every match gives."""
    matches = DecodedMatches()
    agent = Agent("default", "a", {"team": "a"})
    for docs in (before, after, after, before):
        policy = compile_loaded(load_objects(docs)).compiled.gateways[("default", "gw")]
        reused, fresh = _decoded(policy, matches), _decoded(policy)
        _same_policy(reused, fresh)
        for conn in conns:
            assert decide(reused, agent, conn) == decide(fresh, agent, conn)


def test_a_kept_entry_is_checked_again_when_its_listeners_or_deny_policies_change():
    matches = DecodedMatches()
    _decoded(_policy(), matches)
    for edit, says in [
        (lambda m: m.ClearField("deny_responses"), "no deny response"),
        (lambda m: setattr(m.listeners[0], "name", "renamed"), "no TCP listener 'tcp'"),
    ]:
        with pytest.raises(PolicyDecodeError, match=says):
            decode_policy(_broken(edit), matches)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda m: setattr(m, "ref", "gw"), "ref"),
        (lambda m: setattr(m, "default_policy", 99), "default_policy"),
        (lambda m: setattr(m.dns, "min_ttl_seconds", math.nan), "TTL bounds"),
        (lambda m: setattr(m.dns.upstream[0], "address", "resolver"), "dns.upstream"),
        (lambda m: m.credentials.add(route="default/nowhere"), "has no match"),
        (lambda m: setattr(m, "mode", 9), "mode"),
    ],
)
def test_an_update_refused_after_its_matches_decoded_leaves_the_kept_entries_as_they_were(
    edit, says
):
    """Its matches differ (one changed, one added), and decoded well: the next update
    with the kept ones' matches reuses them all the same."""
    matches = DecodedMatches()
    kept = _decoded(_policy(), matches).matches

    def changed(m):
        m.matches[0].hostnames.append("new.example.com")
        m.matches.add().CopyFrom(m.matches[1])
        m.matches[2].cidrs[:] = ["198.51.100.0/24"]
        edit(m)

    with pytest.raises(PolicyDecodeError, match=says):
        decode_policy(_broken(changed), matches)
    again = _decoded(_policy(), matches).matches
    assert all(mine is theirs for mine, theirs in zip(again, kept, strict=True))


def test_only_the_policy_the_last_decode_gave_is_kept():
    matches = DecodedMatches()
    kept = _decoded(_policy(), matches).matches
    decode_policy(_broken(lambda m: m.matches[0].hostnames.append("new.example.com")), matches)
    matches.keep(_round_trip(_policy()))  # not what it decoded: nothing changes
    again = _decoded(_policy(), matches).matches
    assert all(mine is theirs for mine, theirs in zip(again, kept, strict=True))


FIRST = """---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: a-first}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{destinationHostnames: [first.example.com]}]}]
"""


def test_a_route_added_before_the_others_encodes_and_decodes_only_its_own_match(
    monkeypatch,
):
    """Every other match moves one place down the route order: its bytes and its entry
    are kept all the same, and only the order changes."""
    before = _policy()
    after = compile_yaml(GW + FIRST).gateways[("default", "gw")]
    assert [e.order[0] for e in after.matches] == [0, 1, 1]
    encoder, decoder = MatchBytes(), DecodedMatches()
    wire = pb2.GatewayPolicy.FromString(encode_policy(before, encoder).SerializeToString())
    decoder.keep(decode_policy(wire, decoder))
    fresh, expected = encode_policy(after).SerializeToString(deterministic=True), _decoded(after)
    encoded, decoded = [], []
    real_match, real_decode = policy_messages._match, policy_messages._decode_match
    monkeypatch.setattr(
        policy_messages, "_match", lambda e, **kw: encoded.append(e) or real_match(e, **kw)
    )
    monkeypatch.setattr(
        policy_messages, "_decode_match", lambda m, *a: decoded.append(m) or real_decode(m, *a)
    )
    msg = encode_policy(after, encoder)
    assert msg.SerializeToString(deterministic=True) == fresh
    back = decode_policy(pb2.GatewayPolicy.FromString(msg.SerializeToString()), decoder)
    assert [e.route for e in encoded] == ["default/a-first"]
    assert [m.route for m in decoded] == ["default/a-first"]
    _same_policy(back, expected)


def test_the_version_is_a_content_hash():
    first = policy_update("default/gw", _policy())
    assert first.schema == SCHEMA
    assert policy_update("default/gw", _policy()).version == first.version
    other = compile_yaml(GW.replace("451", "452")).gateways[("default", "gw")]
    assert policy_update("default/gw", other).version != first.version
    assert policy_update("default/gw", None).version != first.version


def _broken(edit) -> pb2.GatewayPolicy:
    msg = encode_policy(_policy())
    edit(msg)
    return msg


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda m: setattr(m, "ref", "gw"), "ref"),
        (lambda m: setattr(m, "default_policy", 7), "default_policy: unknown value 7"),
        (lambda m: setattr(m.listeners[0], "protocol", 9), "listeners[0].protocol"),
        (lambda m: setattr(m.listeners[1], "name", "tcp"), "listeners[1].name"),
        (lambda m: setattr(m.listeners[0], "tls_mode", 1), "listeners[0].tls_mode"),
        (lambda m: setattr(m.listeners[0], "port", 70000), "not a port"),
        (lambda m: m.matches[0].listeners.append("nowhere"), "no TCP listener 'nowhere'"),
        (lambda m: m.matches[0].listeners.append("dgram"), "no TCP listener 'dgram'"),
        (lambda m: setattr(m.matches[0], "protocol", 2), "not a transport"),
        (lambda m: m.matches[0].cidrs.append("10.0.0.1/8"), "host bits set"),
        (lambda m: m.matches[0].cidrs.append("not a net"), "cidrs"),
        (lambda m: setattr(m.matches[0].ports[0], "low", 9000), "9000 > 443"),
        (lambda m: m.matches[0].hostnames.append("API.example.com"), "hostnames"),
        (lambda m: setattr(m.matches[0], "deny_policy", "default/x"), "no deny response"),
        (lambda m: setattr(m.matches[0].selector.requirements[0], "operator", 9), "operator"),
        (lambda m: m.matches[0].selector.requirements[1].ClearField("values"), "do not fit"),
        (lambda m: setattr(m.deny_responses[0], "status_code", 200), "not 400..599"),
        (lambda m: m.agents.append(m.agents[0]), "listed twice"),
        (lambda m: setattr(m.dns, "mode", 0), "dns.mode"),
        (lambda m: setattr(m.dns, "min_ttl_seconds", 1e9), "TTL bounds"),
        (lambda m: setattr(m.dns.upstream[0], "address", "resolver"), "dns.upstream"),
    ],
)
def test_a_malformed_policy_is_refused_with_a_reason(edit, says):
    with pytest.raises(PolicyDecodeError, match=says.replace("[", r"\[").replace("]", r"\]")):
        decode_policy(_broken(edit))


def test_an_update_of_another_schema_or_without_a_policy_is_refused():
    update = policy_update("default/gw", _policy())
    update.schema = SCHEMA + 1
    with pytest.raises(PolicyDecodeError, match="schema"):
        policy_from_update(update)
    with pytest.raises(PolicyDecodeError, match="not defined or not accepted"):
        policy_from_update(policy_update("default/gw", None))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_bytes_decode_to_a_policy_or_a_refusal_never_a_crash(data):
    """... and to the same one with the entries of the undamaged policy at hand."""
    matches = DecodedMatches()
    _decoded(_policy(), matches)
    wire = bytearray(encode_policy(_policy()).SerializeToString())
    for _ in range(data.draw(st.integers(1, 8))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:
        msg = pb2.GatewayPolicy.FromString(bytes(wire))
    except Exception:
        return
    try:
        fresh = decode_policy(msg)
    except PolicyDecodeError:
        with pytest.raises(PolicyDecodeError):
            decode_policy(msg, matches)
        return
    _same_policy(decode_policy(msg, matches), fresh)
