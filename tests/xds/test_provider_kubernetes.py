"""The Kubernetes provider, driven by the official client against the fake API server:
every kind's create/update/delete reaches the snapshot and the policy stream, an invalid
object changes nothing and says why in its status, status is written once per change,
of two replicas one writes, and a stop ends a replica (Lease released, watches ended)
whatever it was doing."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from kubernetes.client.rest import ApiException

from clrk_xds.ads import TypeStatus
from clrk_xds.consistency import CLUSTER, LISTENER
from clrk_xds.credential_secrets import CredentialSecrets
from clrk_xds.k8s_acks import AckBoard
from clrk_xds.k8s_lease import LeaseElector
from clrk_xds.k8s_secrets import SecretStore
from clrk_xds.policy_stream import PolicyHub
from clrk_xds.provider import default_translator
from clrk_xds.provider_kubernetes import KubernetesProvider, policy_document
from clrk_xds.snapshot import EMPTY, SnapshotCache
from tests.k8s.fake_apiserver import FakeApiServer, api_client, control_plane_client
from tests.k8s.objects import Cluster, agent, deny, gateway, route, wait_for

GW = "default/gw"


_TRANSLATING = threading.Lock()


def one_at_a_time(translator):
    """A control plane is one process with one translator; two replicas in this test
    process take turns, as the translator's process-wide shortcuts expect."""

    def translate(policies):
        with _TRANSLATING:
            return translator(policies)

    return translate


class Running:
    """A provider running on an event loop of its own, in a thread."""

    def __init__(
        self,
        server: FakeApiServer,
        identity: str | None = None,
        ads: dict | None = None,
        rbac: tuple[dict, ...] = (),
    ) -> None:
        """`ads`: node -> {type URL: TypeStatus}, standing in for this replica's ADS
        server (what its Envoys ACKed); None: what is in force counts as programmed.
        `rbac`: RoleBindings an operator adds (the provider then reads secretRefs)."""
        api = control_plane_client(server, *rbac)  # with the rights deploy/ grants it
        elector = acks = None
        if identity is not None:
            elector = LeaseElector(api, "clrk-system", "clrk", identity, duration_seconds=15)
            acks = AckBoard(api, "clrk-system", identity)
        self.ads = ads
        self.cache, self.hub = SnapshotCache(), PolicyHub()
        # as `python -m clrk_xds --provider kubernetes` wires them
        self.secrets = SecretStore(api, backoff_max=0.5)
        self.credentials = CredentialSecrets({}, self.secrets)
        translator = one_at_a_time(default_translator(credential_secret=self.credentials))
        # A test closes the gate to hold a plan in hand (a large set, a slow machine).
        self.gate, self.planning = threading.Event(), threading.Event()
        self.gate.set()

        def translate(policies):
            self.planning.set()
            self.gate.wait()
            return translator(policies)

        self.provider = KubernetesProvider(
            self.cache, self.hub, translate, api=api,
            elector=elector, acks=acks,
            ads_status=None if ads is None else lambda node: dict(ads.get(node, {})),
            debounce_ms=20, lease_retry=0.1, backoff_max=0.5, resync=0.2,
            secrets=self.secrets, credentials=self.credentials,
        )  # fmt: skip
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def envoy_acks(self, node: str) -> None:
        """An Envoy connected to this replica ACKs the snapshot it holds for `node`."""
        snap = self.cache.get(node)
        self.ads[node] = {t: TypeStatus(snap.version_of(t)) for t in (CLUSTER, LISTENER)}
        self._loop.call_soon_threadsafe(self.provider.poke)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._running = asyncio.create_task(self.provider.run(self._stop))
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._running

    def cancel(self) -> None:
        """Cancel the provider's run, as the control plane's stop does after a grace."""
        self._loop.call_soon_threadsafe(self._running.cancel)

    def __enter__(self) -> Running:
        self._thread.start()
        self._ready.wait(10)
        return self

    def ask_to_stop(self) -> None:
        """Set the provider's stop (done when this returns); do not wait for its end."""
        if self._stop is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._set_stop(), self._loop).result(10)

    async def _set_stop(self) -> None:
        assert self._stop is not None
        self._stop.set()

    def stop(self) -> None:
        self.ask_to_stop()
        if self._thread.is_alive():
            self._thread.join(20)

    def state(self) -> str:
        """For a failure message: whether it runs, and where each task of its loop is."""
        if not self.running():
            return "ended"
        tasks = []
        with contextlib.suppress(RuntimeError):  # the loop changed its set meanwhile
            for task in asyncio.all_tasks(self._loop):
                frames = task.get_stack(limit=1)
                where = f"{frames[0].f_code.co_name}:{frames[0].f_lineno}" if frames else "?"
                tasks.append(f"{task.get_name()} at {where}")
        watching = [w.kind for w in self.provider.watchers if w.alive()]
        return f"running; tasks: {sorted(tasks)}; watch threads: {watching}"

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> bool:
        return self._thread.is_alive()

    def routes(self) -> list[str]:
        update = self.hub.current(GW)
        return [m.route for m in update.policy.matches] if update else []

    def hosts(self) -> list[str]:
        update = self.hub.current(GW)
        return [h for m in update.policy.matches for h in m.hostnames] if update else []


@pytest.fixture
def server():
    with FakeApiServer() as srv:
        yield srv
    assert srv.forbidden == []  # deploy/'s RBAC allows all the control plane does


@pytest.fixture
def cluster(server):
    return Cluster(api_client(server))


def writes(server, plural: str, name: str) -> int:
    return server.store.status_writes[(plural, "default", name)]


def test_a_status_write_is_no_change_of_the_policy_set():
    base = gateway()
    written = {
        **base,
        "metadata": {**base["metadata"], "resourceVersion": "7", "generation": 3, "uid": "u"},
        "status": {"conditions": []},
    }
    assert policy_document(written) == policy_document(base)


def test_nothing_is_applied_before_every_kind_is_listed():
    provider = KubernetesProvider(SnapshotCache(), PolicyHub(), default_translator())
    assert not asyncio.run(provider.reload())
    assert provider.status().version is None


def test_each_kinds_create_update_and_delete_reach_the_snapshot_and_the_policy_stream(
    server, cluster
):
    cluster.create(gateway())
    with Running(server) as run:
        snap = wait_for(lambda: run.cache.get(GW))
        assert len(snap.named(LISTENER)) == 1
        # EgressGateway update: a second listener
        cluster.replace(gateway(listeners=("tcp-out", "tcp-two")))
        wait_for(lambda: len(run.cache.get(GW).named(LISTENER)) == 2)
        # EgressL4Route create / update
        cluster.create(route())
        wait_for(lambda: run.routes() == ["default/r1"])
        cluster.replace(route(host="changed.example.com"))
        wait_for(lambda: run.hosts() == ["changed.example.com"])
        # EgressDenyPolicy create / update / delete
        cluster.create(deny())
        policy = lambda: run.hub.current(GW).policy  # noqa: E731
        wait_for(lambda: policy().matches[0].deny_policy == "default/no-paste")
        cluster.replace(
            {**deny(), "spec": {"targetRef": {"name": "r1"}, "denyResponse": {"statusCode": 451}}}
        )
        wait_for(lambda: [d.status_code for d in policy().deny_responses] == [451])
        cluster.delete("EgressDenyPolicy", "no-paste")
        wait_for(lambda: not policy().matches[0].deny_policy)
        # TaskAgent and DaemonAgent create / update / delete
        for kind in ("TaskAgent", "DaemonAgent"):
            name = kind.lower()
            cluster.create(agent(kind, name))
            wait_for(lambda n=name: n in [a.name for a in run.hub.current(GW).policy.agents])
            cluster.replace(agent(kind, name, labels={"team": "b"}))

            def relabelled(n=name):
                found = [a for a in run.hub.current(GW).policy.agents if a.name == n]
                return found and dict(found[0].labels) == {"team": "b"}

            wait_for(relabelled)
            cluster.delete(kind, name)
            wait_for(lambda n=name: n not in [a.name for a in run.hub.current(GW).policy.agents])
        # deletes: the route, then the gateway (its Envoy loses every listener)
        cluster.delete("EgressL4Route", "r1")
        wait_for(lambda: run.routes() == [])
        cluster.delete("EgressGateway", "gw")
        wait_for(lambda: run.cache.get(GW) is EMPTY)
        assert run.provider.status().gateways == ()


def test_an_invalid_object_gets_accepted_false_with_the_finding_and_changes_nothing(
    server, cluster
):
    cluster.create(gateway())
    cluster.create(route())
    with Running(server) as run:
        wait_for(lambda: run.routes() == ["default/r1"])
        wait_for(lambda: cluster.condition("EgressL4Route", "r1", "Programmed"))
        snap, update = run.cache.get(GW), run.hub.current(GW)
        version = run.provider.status().version
        # passes the CRD schema (a string of hostname length), not the loader
        cluster.create(route("bad", host="bad*host.example.com"))
        accepted = wait_for(lambda: cluster.condition("EgressL4Route", "bad", "Accepted"))
        assert accepted["status"] == "False" and accepted["reason"] == "Invalid"
        assert "destinationHostnames[0]" not in accepted["message"]  # the message, not the path
        assert "bad*host.example.com" in accepted["message"]
        assert accepted["observedGeneration"] == 1
        assert run.provider.status().blocked and run.provider.status().version == version
        assert run.cache.get(GW) is snap and run.hub.current(GW) is update
        # the valid route stays Accepted; its Programmed still says what is in force
        assert cluster.condition("EgressL4Route", "r1", "Accepted")["status"] == "True"
        # an edit of a good object waits behind the invalid set: Programmed says so
        cluster.replace(route(host="next.example.com"))

        def waiting():
            cond = cluster.condition("EgressL4Route", "r1", "Programmed")
            return cond["reason"] == "Invalid" and cond["observedGeneration"] == 2

        wait_for(waiting)
        assert run.hub.current(GW) is update
        # fixing the invalid object applies everything
        cluster.replace(route("bad", host="good.example.com"))
        wait_for(lambda: sorted(run.hosts()) == ["good.example.com", "next.example.com"])
        wait_for(lambda: cluster.condition("EgressL4Route", "bad", "Accepted")["status"] == "True")
        wait_for(lambda: cluster.condition("EgressL4Route", "r1", "Programmed")["status"] == "True")


def test_the_crd_schema_refuses_what_it_can_express_at_admission(cluster):
    bad = route(port=70000)
    with pytest.raises(ApiException) as err:
        cluster.create(bad)
    assert err.value.status == 422 and "out of range" in err.value.body
    typo = route()
    typo["spec"]["rules"][0]["matches"][0]["destinationCIDR"] = ["10.0.0.0/8"]
    with pytest.raises(ApiException) as err:
        cluster.create(typo)
    assert err.value.status == 422 and "unknown field" in err.value.body
    both = route()
    both["spec"]["rules"][0]["matches"][0]["ports"] = [{"port": 1, "startPort": 1, "endPort": 2}]
    with pytest.raises(ApiException) as err:  # a CEL rule
        cluster.create(both)
    assert err.value.status == 422 and "give either port or startPort/endPort" in err.value.body


def test_status_is_written_once_per_change_not_in_a_loop(server, cluster):
    cluster.create(gateway())
    cluster.create(route())
    with Running(server) as run:
        wait_for(lambda: cluster.condition("EgressL4Route", "r1", "Programmed"))
        status = cluster.get("EgressL4Route", "r1")["status"]
        assert [(c["type"], c["status"]) for c in status["conditions"]] == [
            ("Accepted", "True"),
            ("Programmed", "True"),
        ]
        assert status["observedGeneration"] == 1
        # Another change, and its own write: by then a loop would have shown.
        cluster.create(route("r2", host="two.example.com"))
        wait_for(lambda: cluster.condition("EgressL4Route", "r2", "Programmed"))
        cluster.create(route("r3", host="three.example.com"))
        wait_for(lambda: cluster.condition("EgressL4Route", "r3", "Programmed"))
        assert writes(server, "egressl4routes", "r1") == 1
        assert writes(server, "egressgateways", "gw") == 1
        # a spec change: one more write, with the new generation
        cluster.replace(route(host="changed.example.com"))
        wait_for(lambda: cluster.get("EgressL4Route", "r1")["status"]["observedGeneration"] == 2)
        cluster.create(route("r4", host="four.example.com"))
        wait_for(lambda: cluster.condition("EgressL4Route", "r4", "Programmed"))
        assert writes(server, "egressl4routes", "r1") == 2
        assert run.provider.status_writes == sum(server.store.status_writes.values())


def test_a_stale_status_write_is_a_conflict_and_is_redone_on_a_fresh_read(server, cluster):
    cluster.create(gateway())
    provider = KubernetesProvider(
        SnapshotCache(), PolicyHub(), default_translator(), api=control_plane_client(server)
    )
    old = cluster.get("EgressGateway", "gw")
    cluster.replace({**gateway(), "metadata": {**gateway()["metadata"], "labels": {"x": "y"}}})
    status = {"observedGeneration": 1, "conditions": []}
    written = provider._write(old, status)  # old resourceVersion: 409, then a fresh read
    assert written["status"] == status and written["metadata"]["labels"] == {"x": "y"}
    assert writes(server, "egressgateways", "gw") == 1


def test_of_two_replicas_both_serve_and_only_the_lease_holder_writes_status(server, cluster):
    cluster.create(gateway())
    cluster.create(route())
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(Running(server, "replica-a"))
        wait_for(lambda: a.provider.elector.leader)
        b = stack.enter_context(Running(server, "replica-b"))
        wait_for(lambda: a.routes() == ["default/r1"] and b.routes() == ["default/r1"])
        wait_for(lambda: cluster.condition("EgressL4Route", "r1", "Programmed"))
        cluster.create(route("r2", host="two.example.com"))
        wait_for(lambda: b.routes() == ["default/r1", "default/r2"])
        wait_for(lambda: cluster.condition("EgressL4Route", "r2", "Programmed"))
        assert not b.provider.elector.leader
        assert b.provider.status_writes == 0
        assert writes(server, "egressl4routes", "r1") == 1
        # the writer stops (and releases the Lease): the other takes over and writes
        a.stop()
        try:
            wait_for(lambda: b.provider.elector.leader, timeout=45)  # a loaded machine
        except AssertionError:  # say who holds the Lease and where a is, if still running
            raise AssertionError(f"b never led; a {a.state()}; {holders(server)}") from None
        cluster.replace(route(host="changed.example.com"))
        wait_for(lambda: cluster.get("EgressL4Route", "r1")["status"]["observedGeneration"] == 2)
        assert writes(server, "egressl4routes", "r1") == 2
        assert b.provider.status_writes >= 1


def holders(server) -> dict:
    return {key: lease.get("spec") for key, lease in server.objects("leases").items()}


def held_by(server) -> object:
    return (server.objects("leases")[("clrk-system", "clrk")].get("spec") or {}).get(
        "holderIdentity"
    )


def test_a_stop_while_a_change_is_planned_ends_the_provider_and_releases_the_lease(server, cluster):
    """The status loop was cancelled just as the change's plan woke it: on Python 3.11
    `asyncio.wait_for` swallowed that, so the stop waited for it for ever while the
    Lease loop renewed on and the watches ran."""
    cluster.create(gateway())
    with Running(server, "replica-a") as a:
        wait_for(lambda: a.provider.elector.leader and a.cache.get(GW))
        a.gate.clear()
        a.planning.clear()
        cluster.create(route())
        assert a.planning.wait(10)  # the change is being planned
        a.ask_to_stop()
        a.gate.set()
        a.stop()
        assert not a.running(), f"a {a.state()}; {holders(server)}"
        assert held_by(server) is None  # released: another replica leads at once
        assert not [w.kind for w in a.provider.watchers if w.alive()]


def test_a_lease_call_hung_when_the_replica_stops_holds_the_stop_only_its_timeout(server):
    """Not the client's three retries after each read timeout (a stop four times as
    long): each hung call is sent once, and no thread outlives the run."""
    lease = "/apis/coordination.k8s.io/v1/namespaces/clrk-system/leases/clrk"
    with Running(server, "replica-a") as a:
        wait_for(lambda: a.provider.elector.leader)
        before = len(server.requests)
        server.stall("PUT", lease, times=100)  # the API server hangs on the Lease's writes
        wait_for(lambda: server.stalls_left() == 99)  # a renewal is in hand, unanswered
        a.stop()
        assert not a.running(), f"a {a.state()}; {holders(server)}"
        puts = server.requests[before:].count(("PUT", lease))
        assert puts == 2  # the renewal in hand and the release, once each
        assert a.provider.elector.leader is False  # the Lease expires, as a replica lost
        assert not [w.kind for w in a.provider.watchers if w.alive()]


def test_a_run_cancelled_while_it_stops_still_releases_the_lease_and_ends_its_watches(server):
    lease = "/apis/coordination.k8s.io/v1/namespaces/clrk-system/leases/clrk"
    with Running(server, "replica-a") as a:
        wait_for(lambda: a.provider.elector.leader)
        server.stall("PUT", lease)  # the stop waits for this renewal's timeout
        wait_for(lambda: server.stalls_left() == 0)
        a.ask_to_stop()
        wait_for(lambda: not any(w.alive() for w in a.provider.watchers))  # stopping
        a.cancel()  # while the stop waits for the renewal in hand
        a.stop()
        assert not a.running(), f"a {a.state()}; {holders(server)}"
        assert held_by(server) is None
        assert not [w.kind for w in a.provider.watchers if w.alive()]


def test_the_api_server_restarting_and_a_410_lose_no_change(server, cluster):
    cluster.create(gateway())
    with Running(server) as run:
        wait_for(lambda: run.cache.get(GW))
        server.stop()
        server.start()
        cluster.create(route())
        wait_for(lambda: run.routes() == ["default/r1"])
        server.drop_watches()
        server.compact()
        cluster.create(route("r2", host="two.example.com"))
        server.expire_watches()
        wait_for(lambda: run.routes() == ["default/r1", "default/r2"])
        assert not run.provider.status().blocked  # nothing doubled


def test_a_status_someone_else_overwrote_is_set_right_again_once(server, cluster):
    cluster.create(gateway())
    with Running(server):
        wait_for(lambda: cluster.condition("EgressGateway", "gw", "Programmed"))
        current = cluster.get("EgressGateway", "gw")
        current["status"] = {"conditions": []}
        cluster.custom.replace_namespaced_custom_object_status(
            "clrk.apoxy.dev", "v1alpha1", "default", "egressgateways", "gw", current
        )
        wait_for(lambda: cluster.condition("EgressGateway", "gw", "Programmed"))
        cluster.create(route())  # and by the time this one is written, no more than once
        wait_for(lambda: cluster.condition("EgressL4Route", "r1", "Programmed"))
        assert writes(server, "egressgateways", "gw") == 3  # ours, theirs, ours again


def test_malformed_objects_from_the_server_are_skipped_not_fatal():
    provider = KubernetesProvider(SnapshotCache(), PolicyHub(), default_translator())
    provider._handle(("LIST", "EgressGateway", ["junk", {"metadata": "junk"}, gateway()]))
    provider._handle(("MODIFIED", "EgressL4Route", "junk"))
    provider._handle(("DELETED", "EgressL4Route", {"metadata": None}))
    for kind in provider.kinds:
        if kind != "EgressGateway":
            provider._handle(("LIST", kind, None))
    assert provider.synced
    assert not asyncio.run(provider.reload())  # the junk object is invalid: nothing applies
    assert provider.status().blocked and provider.status().version is None


def test_the_control_planes_rights_from_deploy_read_policy_and_write_status_only(server):
    as_control_plane = Cluster(control_plane_client(server))
    with pytest.raises(ApiException) as err:
        as_control_plane.create(route())
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:
        as_control_plane.get("EgressL4Route", "r1")  # get only through /status
    assert err.value.status == 403
    server.forbidden.clear()


def test_an_ack_seen_by_another_replica_makes_the_writer_report_programmed(server, cluster):
    cluster.create(gateway())
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(Running(server, "replica-a", ads={}))
        wait_for(lambda: a.provider.elector.leader)
        b = stack.enter_context(Running(server, "replica-b", ads={}))
        wait_for(lambda: b.cache.get(GW) is not None and a.cache.get(GW) is not None)
        assert a.cache.get(GW).version == b.cache.get(GW).version  # the same snapshot
        pending = wait_for(lambda: cluster.condition("EgressGateway", "gw", "Programmed"))
        assert pending["reason"] == "Pending"
        b.envoy_acks(GW)  # the gateway's Envoy is connected to the follower only
        wait_for(lambda: cluster.condition("EgressGateway", "gw", "Programmed")["status"] == "True")
        assert b.provider.status_writes == 0 and not b.provider.elector.leader
        # a NACK of the next version, seen by the follower, reaches the status too
        cluster.replace(gateway(listeners=("tcp-out", "tcp-two")))
        wait_for(lambda: len(b.cache.get(GW).named(LISTENER)) == 2)
        version = b.cache.get(GW).version_of(LISTENER)
        b.ads[GW] = {**b.ads[GW], LISTENER: TypeStatus(None, version, "bad listener")}
        b._loop.call_soon_threadsafe(b.provider.poke)

        def rejected():
            cond = cluster.condition("EgressGateway", "gw", "Programmed")
            return cond["reason"] == "Rejected" and "bad listener" in cond["message"]

        wait_for(rejected)


def test_a_replan_of_unchanged_objects_is_skipped_only_for_watch_events():
    """Leaf renewal, own-address changes and credential files replan the same objects:
    only the watch loop's reload may skip them as unchanged."""
    provider = KubernetesProvider(SnapshotCache(), PolicyHub(), default_translator())
    for kind in provider.kinds:
        provider._handle(("LIST", kind, [gateway()] if kind == "EgressGateway" else []))
    assert asyncio.run(provider.reload(only_if_changed=True))
    planned = provider.reloads
    assert not asyncio.run(provider.reload(only_if_changed=True))
    assert provider.reloads == planned
    asyncio.run(provider.reload())
    assert provider.reloads == planned + 1
