"""KindWatcher against the fake API server: list then watch, 410 -> relist with
nothing lost or doubled, the server restarting mid-watch, bookmarks honoured."""

from __future__ import annotations

import functools
import threading

import pytest
from kubernetes import client

from clrk.api.crds import VERSION
from clrk.api.resources import GROUP
from clrk_xds.k8s_watch import KindWatcher, ListWatcher
from tests.k8s.fake_apiserver import FakeApiServer, api_client
from tests.k8s.objects import Cluster, route, wait_for

ROUTES = (GROUP, VERSION, "egressl4routes")


class Mirror:
    """What a consumer holds after applying the watcher's items in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[str, dict] = {}
        self.items: list[tuple[str, str]] = []  # (what, name)

    def emit(self, item) -> None:
        what, _kind, payload = item
        with self.lock:
            if what == "LIST":
                self.held = {o["metadata"]["name"]: o for o in payload}
                self.items.append(("LIST", ""))
            elif what == "DELETED":
                self.held.pop(payload["metadata"]["name"], None)
                self.items.append((what, payload["metadata"]["name"]))
            else:
                self.held[payload["metadata"]["name"]] = payload
                self.items.append((what, payload["metadata"]["name"]))

    def specs(self) -> dict[str, object]:
        with self.lock:
            return {name: o.get("spec") for name, o in self.held.items()}


@pytest.fixture
def server():
    with FakeApiServer() as srv:
        yield srv


@pytest.fixture
def watching(server):
    mirror = Mirror()
    watcher = KindWatcher(
        api_client(server), GROUP, VERSION, "EgressL4Route", "egressl4routes", mirror.emit,
        backoff_max=0.5,
    )  # fmt: skip
    watcher.start()
    try:
        # Listed before the test writes: what it creates next arrives as a watch event.
        wait_for(lambda: ("LIST", "") in mirror.items)
        yield watcher, mirror
    finally:
        watcher.stop()


def server_specs(server) -> dict[str, object]:
    return {name: o.get("spec") for (_ns, name), o in server.objects("egressl4routes").items()}


def test_it_lists_first_then_watches_every_change_from_the_lists_version(server):
    cluster = Cluster(api_client(server))
    cluster.create(route("before"))
    mirror = Mirror()
    watcher = KindWatcher(
        api_client(server), GROUP, VERSION, "EgressL4Route", "egressl4routes", mirror.emit
    )
    watcher.start()
    try:
        wait_for(lambda: "before" in mirror.specs())
        cluster.create(route("after"))
        cluster.replace(route("before", host="changed.example.com"))
        cluster.delete("EgressL4Route", "after")
        wait_for(lambda: mirror.items[-1] == ("DELETED", "after"))
        assert mirror.items == [
            ("LIST", ""),
            ("ADDED", "after"),
            ("MODIFIED", "before"),
            ("DELETED", "after"),
        ]
        assert mirror.specs() == server_specs(server)
        # one list, then watches from a resourceVersion, with bookmarks asked for
        lists = [p for m, p in server.requests if m == "GET" and p.endswith("/egressl4routes")]
        assert len(lists) == 1
        watches = [p for _m, p in server.requests if "watch=true" in p]
        assert all("resourceVersion=" in p and "allowWatchBookmarks=true" in p for p in watches)
    finally:
        watcher.stop()


def test_410_gone_relists_and_ends_with_exactly_the_servers_objects(server, watching):
    watcher, mirror = watching
    cluster = Cluster(api_client(server))
    for name in ("a", "b", "c"):
        cluster.create(route(name))
    wait_for(lambda: len(mirror.specs()) == 3)
    # Changes the watcher will never see as events: the history is compacted away.
    server.drop_watches()
    server.put_directly(ROUTES, route("d"))
    with server.store.cond:
        del server.store.objects[(*ROUTES, "default", "b")]
    server.compact()
    wait_for(lambda: watcher.lists == 2)
    wait_for(lambda: mirror.specs() == server_specs(server))
    assert sorted(mirror.specs()) == ["a", "c", "d"]
    cluster.create(route("e"))  # and it watches on from the relist
    wait_for(lambda: "e" in mirror.specs())
    assert mirror.specs() == server_specs(server)


def test_an_expired_watch_event_relists_too(server, watching):
    watcher, mirror = watching
    cluster = Cluster(api_client(server))
    cluster.create(route("a"))
    wait_for(lambda: "a" in mirror.specs())
    server.compact()
    server.expire_watches()
    wait_for(lambda: watcher.lists == 2)
    cluster.create(route("b"))
    wait_for(lambda: sorted(mirror.specs()) == ["a", "b"])


def test_the_api_server_restarting_mid_watch_resumes_from_the_last_version(server, watching):
    watcher, mirror = watching
    cluster = Cluster(api_client(server))
    cluster.create(route("a"))
    wait_for(lambda: "a" in mirror.specs())
    server.stop()
    server.put_directly(ROUTES, route("while-down"))  # written to etcd meanwhile
    server.start()
    wait_for(lambda: "while-down" in mirror.specs())
    cluster.create(route("after"))
    wait_for(lambda: sorted(mirror.specs()) == ["a", "after", "while-down"])
    assert watcher.lists == 1  # resumed, not relisted
    # nothing seen twice, nothing missed
    assert mirror.items == [
        ("LIST", ""),
        ("ADDED", "a"),
        ("ADDED", "while-down"),
        ("ADDED", "after"),
    ]


def test_a_bookmark_moves_the_version_on_so_a_resume_needs_no_relist(server, watching):
    watcher, mirror = watching
    cluster = Cluster(api_client(server))
    cluster.create(route("a"))
    wait_for(lambda: "a" in mirror.specs())
    seen = watcher.resource_version
    # Other kinds move the version on; this watch sees none of it but a bookmark.
    server.put_directly(
        (GROUP, VERSION, "egressgateways"), {"metadata": {"name": "gw", "namespace": "default"}}
    )
    server.bookmark()
    wait_for(lambda: watcher.resource_version != seen)
    assert watcher.resource_version == str(server.store.rv)
    server.compact()  # the version before the bookmark is gone now
    server.drop_watches()
    cluster.create(route("b"))
    wait_for(lambda: "b" in mirror.specs())
    assert watcher.lists == 1


def test_a_signal_while_the_watch_is_being_requested_still_ends_the_thread(server):
    """There was no response to shut down yet; the thread then read a watch with no
    events for its whole timeout (minutes), and outlived the stop of its owner."""
    custom = client.CustomObjectsApi(api_client(server))
    requesting, gate = threading.Event(), threading.Event()

    @functools.wraps(custom.list_cluster_custom_object)  # its docstring types the items
    def lister(*args, **kwargs):
        if kwargs.get("watch"):
            requesting.set()
            gate.wait()  # the request is on its way
        return custom.list_cluster_custom_object(*ROUTES, *args, **kwargs)

    watcher = ListWatcher(lister, "EgressL4Route", lambda _item: None, name="routes")
    watcher.start()
    assert requesting.wait(10)
    watcher.signal()
    gate.set()
    watcher.join(10)
    assert not watcher.alive()
