import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clrk_xds.consistency import CLUSTER, LISTENER
from clrk_xds.snapshot import EMPTY, InconsistentSnapshot, Snapshot, SnapshotCache, content_version
from tests.xds.xds_messages import static_cluster, tcp_listener, tcp_snapshot


def test_same_content_same_version_in_any_order():
    a = Snapshot.from_messages(
        [tcp_listener("a", 1, "up"), tcp_listener("b", 2, "up")], [static_cluster("up", 3)]
    )
    b = Snapshot.from_messages(
        [tcp_listener("b", 2, "up"), tcp_listener("a", 1, "up")], [static_cluster("up", 3)]
    )
    assert a.version == b.version
    assert tcp_snapshot(1, 2).version != tcp_snapshot(1, 3).version


def test_type_versions_change_only_with_their_type():
    a, b = tcp_snapshot(1, 2), tcp_snapshot(1, 3)
    assert a.version_of(LISTENER) == b.version_of(LISTENER)
    assert a.version_of(CLUSTER) != b.version_of(CLUSTER)


def test_duplicate_names_are_refused():
    with pytest.raises(InconsistentSnapshot, match="'up': defined twice"):
        Snapshot.from_messages([], [static_cluster("up", 1), static_cluster("up", 2)])


def test_inconsistent_snapshot_is_refused_and_previous_kept():
    cache = SnapshotCache()
    good = tcp_snapshot(1, 2)
    assert cache.set_snapshot("ns/gw", good)
    bad = Snapshot.from_messages([tcp_listener("l", 1, "missing")], [])
    with pytest.raises(InconsistentSnapshot, match="missing cluster 'missing'"):
        cache.set_snapshot("ns/gw", bad)
    assert cache.get("ns/gw") is good


def test_setting_the_same_version_is_not_a_change():
    cache = SnapshotCache()
    assert cache.set_snapshot("n", tcp_snapshot(1, 2))
    assert not cache.set_snapshot("n", tcp_snapshot(1, 2))
    assert cache.get("unknown") is None
    assert cache.nodes() == ["n"]


def test_waiters_wake_on_change_only():
    async def go():
        cache = SnapshotCache()
        waiter = asyncio.create_task(cache.next_change("n", None))
        await asyncio.sleep(0)
        assert not waiter.done()
        cache.set_snapshot("other", EMPTY)
        await asyncio.sleep(0)
        assert not waiter.done()
        cache.set_snapshot("n", EMPTY)
        assert await waiter is EMPTY
        # a waiter that has not seen the current one returns at once
        assert await cache.next_change("n", None) is EMPTY

    asyncio.run(go())


@given(
    st.dictionaries(st.text(min_size=1, max_size=8), st.binary(max_size=16), max_size=6),
    st.randoms(use_true_random=False),
)
def test_version_is_a_function_of_content_only(named, rnd):
    items = list(named.items())
    rnd.shuffle(items)
    assert content_version({CLUSTER: named}) == content_version({CLUSTER: dict(items)})
    if named:
        name = next(iter(named))
        changed = {**named, name: named[name] + b"x"}
        assert content_version({CLUSTER: named}) != content_version({CLUSTER: changed})
