"""The ADS protocol decisions of one stream, without gRPC."""

import itertools

from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret
from hypothesis import given
from hypothesis import strategies as st

from clrk_xds.ads_state import Kind, Request, StreamState
from clrk_xds.consistency import CLUSTER, LISTENER, SECRET
from clrk_xds.snapshot import Snapshot
from tests.xds.xds_messages import tcp_snapshot

SERVED = frozenset({LISTENER, CLUSTER, SECRET})


def first(state, type_url, snap, version=""):
    return state.on_request(Request(type_url, version, node_id="ns/gw"), snap)


def test_first_request_gets_the_snapshot():
    state, snap = StreamState(SERVED), tcp_snapshot(1, 2)
    verdict, out = first(state, CLUSTER, snap)
    assert verdict.kind is Kind.INITIAL and state.node_id == "ns/gw"
    assert [(r.type_url, r.version, r.nonce, list(r.resources)) for r in out] == [
        (CLUSTER, snap.version_of(CLUSTER), "1", ["up"])
    ]


def test_no_snapshot_yet_sends_nothing_until_one_arrives():
    state = StreamState(SERVED)
    assert first(state, LISTENER, None)[1] == []
    out = state.on_snapshot(tcp_snapshot(1, 2))
    assert [r.type_url for r in out] == [LISTENER]


def test_ack_records_version_and_sends_nothing():
    state, snap = StreamState(SERVED), tcp_snapshot(1, 2)
    _, [resp] = first(state, LISTENER, snap)
    verdict, out = state.on_request(Request(LISTENER, resp.version, resp.nonce), snap)
    assert (verdict.kind, verdict.version, out) == (Kind.ACK, resp.version, [])


def test_nack_records_rejected_version_and_never_resends_it():
    state, snap = StreamState(SERVED), tcp_snapshot(1, 2)
    _, [resp] = first(state, LISTENER, snap)
    verdict, out = state.on_request(Request(LISTENER, "", resp.nonce, error="bind failed"), snap)
    assert (verdict.kind, verdict.version, verdict.message) == (
        Kind.NACK,
        resp.version,
        "bind failed",
    )
    assert out == []
    assert state.on_snapshot(snap) == []  # same version again: still nothing
    # a change of listeners is sent
    [again] = state.on_snapshot(tcp_snapshot(5, 2))
    assert again.version != resp.version and again.nonce != resp.nonce


def test_stale_nonce_is_ignored():
    state, snap = StreamState(SERVED), tcp_snapshot(1, 2)
    _, [r1] = first(state, LISTENER, snap)
    [r2] = state.on_snapshot(tcp_snapshot(7, 2))
    verdict, out = state.on_request(Request(LISTENER, "", r1.nonce, error="old"), snap)
    assert (verdict.kind, out) == (Kind.STALE, [])
    verdict, _ = state.on_request(Request(LISTENER, r2.version, r2.nonce), snap)
    assert verdict.kind is Kind.ACK


def test_reconnect_holding_current_version_gets_no_resend():
    snap = tcp_snapshot(1, 2)
    state = StreamState(SERVED)
    _, out = first(state, LISTENER, snap, version=snap.version_of(LISTENER))
    assert out == []
    _, out = first(StreamState(SERVED), LISTENER, snap, version="older")
    assert len(out) == 1


def test_cluster_change_does_not_resend_listeners():
    state = StreamState(SERVED)
    first(state, LISTENER, tcp_snapshot(1, 2))
    first(state, CLUSTER, tcp_snapshot(1, 2))
    out = state.on_snapshot(tcp_snapshot(1, 3))
    assert [r.type_url for r in out] == [CLUSTER]


def test_secrets_are_sent_by_name_and_a_new_name_is_sent():
    snap = Snapshot.from_messages(secrets=[Secret(name="a"), Secret(name="b")])
    state = StreamState(SERVED)
    _, [r] = state.on_request(Request(SECRET, resource_names=("a",), node_id="n"), snap)
    assert list(r.resources) == ["a"]
    _, [r2] = state.on_request(Request(SECRET, r.version, r.nonce, ("a", "b")), snap)
    assert sorted(r2.resources) == ["a", "b"]


def test_unknown_type_is_not_answered():
    verdict, out = first(StreamState(SERVED), "type.googleapis.com/x", tcp_snapshot(1, 2))
    assert (verdict.kind, out) == (Kind.UNKNOWN_TYPE, [])


SNAPS = [tcp_snapshot(1, 2), tcp_snapshot(1, 3), tcp_snapshot(4, 3)]


@given(st.lists(st.tuples(st.sampled_from(["ack", "nack", "stale", "snap"]), st.integers(0, 2))))
def test_a_version_is_never_sent_twice_in_a_row(ops):
    """Whatever Envoy answers, a type is resent only when its version changed."""
    state, snap = StreamState(SERVED), SNAPS[0]
    sent: dict[str, list[str]] = {}
    last: dict[str, object] = {}

    def note(out):
        for r in out:
            sent.setdefault(r.type_url, []).append(r.version)
            last[r.type_url] = r

    for t in (LISTENER, CLUSTER):
        note(state.on_request(Request(t, node_id="n"), snap)[1])
    for op, i in ops:
        t = LISTENER if i % 2 else CLUSTER
        r = last.get(t)
        if op == "snap":
            snap = SNAPS[i]
            note(state.on_snapshot(snap))
        elif r is not None:
            nonce = "stale" if op == "stale" else r.nonce
            error = "bad" if op == "nack" else None
            note(state.on_request(Request(t, r.version, nonce, error=error), snap)[1])
    for versions in sent.values():
        assert all(a != b for a, b in itertools.pairwise(versions))
