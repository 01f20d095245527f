"""File provider: real files in a tmp dir, the real loader, compiler and translator."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from clrk.api import load_documents
from clrk.api.resources import Source
from clrk_xds.admin_status import object_statuses
from clrk_xds.consistency import LISTENER
from clrk_xds.policy_stream import PolicyHub
from clrk_xds.provider import (
    FileProvider,
    Provider,
    default_translator,
    plan,
    prepare,
    read_manifests,
)
from clrk_xds.snapshot import EMPTY, SnapshotCache
from clrk_xds.translate import translate

GATEWAY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {{name: {name}}}
spec:
  listeners:
  - {{name: tcp-out, protocol: TCP}}
"""
ROUTE = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: {gateway}}}]
  rules:
  - matches:
    - destinationHostnames: [{host}]
      ports: [{{port: 443}}]
"""
AGENT = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: TaskAgent
metadata: {name: coder, labels: {team: a}}
spec:
  egressRefs: [{gatewayRef: gw}]
"""


def write_set(tmp_path, host="api.example.com", *, extra=""):
    (tmp_path / "gw.yaml").write_text(GATEWAY.format(name="gw"))
    (tmp_path / "route.yaml").write_text(
        ROUTE.format(name="r1", gateway="gw", host=host) + "---\n" + AGENT + extra
    )


def provider(tmp_path, **kw):
    cache, hub = SnapshotCache(), PolicyHub()
    p = FileProvider(cache, hub, default_translator(), paths=[tmp_path], **kw)
    return p, cache, hub


def test_read_manifests_keeps_documents_as_written(tmp_path):
    write_set(tmp_path)
    load = read_manifests([tmp_path])
    assert not load.errors
    assert sorted(r.kind for r in load.resources) == [
        "EgressGateway",
        "EgressL4Route",
        "TaskAgent",
    ]
    raw = dict(load.raw)
    for res in load.resources:
        assert raw[res.source]["metadata"]["name"] == res.name


def test_a_plan_compiles_once_and_carries_status_findings_and_the_dialer_policy(tmp_path):
    write_set(tmp_path, extra="---\n" + ROUTE.format(name="r2", gateway="nowhere", host="x.com"))
    plan = prepare([tmp_path], default_translator())
    assert not plan.blocked and set(plan.snapshots) == {"default/gw"}
    gw = plan.policies.gateways[("default", "gw")]
    assert [e.route for e in gw.matches] == ["default/r1"]
    conditions = plan.loaded.compiled.conditions[("EgressL4Route", "default", "r2")]
    assert [(c.type, c.status) for c in conditions] == [("Accepted", False)]
    assert [f.name for f in plan.loaded.findings if f.is_error] == ["r2"]


def test_valid_set_installs_snapshot_and_publishes_policy(tmp_path):
    write_set(tmp_path)

    async def go():
        p, cache, hub = provider(tmp_path)
        assert await p.reload()
        st = p.status()
        assert st.version and st.errors == () and not st.blocked
        assert st.gateways == ("default/gw",)
        snap = cache.get("default/gw")
        assert snap is not None and snap.named(LISTENER)
        update = hub.current("default/gw")
        assert [m.route for m in update.policy.matches] == ["default/r1"]
        assert [a.name for a in update.policy.agents] == ["coder"]
        # an unchanged reload is not a new version
        assert not await p.reload()
        assert p.status().version == st.version
        # a real change is
        write_set(tmp_path, host="other.example.com")
        assert await p.reload()
        assert p.status().version != st.version
        assert cache.get("default/gw").version != snap.version

    asyncio.run(go())


def test_invalid_set_keeps_last_good_and_reports_every_error(tmp_path):
    write_set(tmp_path)

    async def go():
        p, cache, hub = provider(tmp_path)
        await p.reload()
        good, snap, docs = p.status().version, cache.get("default/gw"), hub.current("default/gw")
        write_set(tmp_path, host="bad*host.example.com")
        (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
        assert not await p.reload()
        st = p.status()
        assert st.blocked and st.version == good
        assert len(st.errors) == 2
        assert any(
            "route.yaml: document 1: EgressL4Route/r1: spec.rules[0]" in e for e in st.errors
        )
        assert any("broken.yaml: document 1" in e and "invalid YAML" in e for e in st.errors)
        assert cache.get("default/gw") is snap
        assert hub.current("default/gw") is docs

    asyncio.run(go())


def test_object_scope_error_is_reported_but_the_rest_applies(tmp_path):
    write_set(tmp_path, extra="---\n" + ROUTE.format(name="r2", gateway="nowhere", host="x.com"))

    async def go():
        p, _, _ = provider(tmp_path)
        assert await p.reload()
        st = p.status()
        assert not st.blocked
        assert [e for e in st.errors if "EgressGateway default/nowhere does not exist" in e]

    asyncio.run(go())


def test_removed_gateway_gets_an_empty_snapshot(tmp_path):
    write_set(tmp_path)

    async def go():
        p, cache, _ = provider(tmp_path)
        await p.reload()
        (tmp_path / "gw.yaml").write_text(GATEWAY.format(name="gw2"))
        assert await p.reload()
        assert cache.get("default/gw") is EMPTY
        assert cache.get("default/gw2") is not None

    asyncio.run(go())


def test_translator_failure_keeps_last_good(tmp_path):
    write_set(tmp_path)

    def broken(policies):
        raise RuntimeError("boom")

    plan = prepare([tmp_path], broken)
    assert plan.blocked and plan.errors == ("translation failed: boom",)


def test_a_message_the_translator_built_wrong_blocks_the_set_when_it_is_serialized(tmp_path):
    """Messages are built unvalidated and checked as they are serialized: a translator
    bug found there blocks the set like one raised while translating."""
    from envoy_data_plane.envoy.config.listener.v3 import FilterChain, Listener

    from clrk_xds.betterproto_speed import build

    write_set(tmp_path)

    def wrong(policies):
        res = translate(policies)["default/gw"]
        bad = build(Listener, name="l", filter_chains=[build(FilterChain, name=7)])
        return {"default/gw": type(res)(res.gateway, (bad,), res.clusters)}

    plan = prepare([tmp_path], wrong)
    assert plan.blocked and not plan.snapshots
    (error,) = plan.errors
    assert error.startswith("gateway default/gw: translation failed:") and "name" in error

    async def go():
        p, cache, _ = provider(tmp_path)
        assert await p.reload()
        version = cache.get("default/gw").version
        p.translator = wrong
        write_set(tmp_path, host="changed.example.com")
        assert not await p.reload()
        assert cache.get("default/gw").version == version

    asyncio.run(go())


def test_inconsistent_translation_is_refused_whole(tmp_path):
    """Two gateways translated onto one port of one Envoy would be rejected by it."""
    write_set(tmp_path)

    def clashing(policies):
        out = translate(policies)
        res = out["default/gw"]
        twice = res.listeners + tuple(
            type(lst)(name=lst.name + "-copy", address=lst.address) for lst in res.listeners
        )
        return {"default/gw": type(res)(res.gateway, twice, res.clusters)}

    plan = prepare([tmp_path], clashing)
    assert plan.blocked and any("is also bound by listener" in e for e in plan.errors)


@pytest.mark.timeout(30)
def test_watch_reloads_on_change_and_debounces_bursts(tmp_path):
    write_set(tmp_path)

    async def go():
        p, cache, _ = provider(tmp_path, debounce_ms=50)
        stop = asyncio.Event()
        task = asyncio.create_task(p.run(stop))
        try:
            await until(lambda: p.status().version is not None)
            first = p.status().version
            await asyncio.sleep(0.2)  # let the watcher start
            reloads = p.reloads
            for i in range(5):  # a burst of writes: one (or very few) reloads
                write_set(tmp_path, host=f"h{i}.example.com")
            await until(lambda: p.status().version != first)
            await asyncio.sleep(0.3)
            assert p.reloads - reloads < 5
            final = dict(read_manifests([tmp_path]).raw)
            assert any("h4.example.com" in str(v) for v in final.values())
            (match,) = p.hub.current("default/gw").policy.matches
            assert list(match.hostnames) == ["h4.example.com"]
            write_set(tmp_path, host="bad*")
            await until(lambda: p.status().blocked)
            assert cache.get("default/gw") is not None
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(go())


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.02)


def test_documents_of_another_source_take_the_same_pipeline_and_give_status(tmp_path):
    """What a Kubernetes provider does: decoded objects, each named by its Source,
    through load_documents -> plan -> apply, status from the plan."""
    docs = [
        (Source("k8s:default/EgressGateway/gw", 0), yaml.safe_load(GATEWAY.format(name="gw"))),
        (
            Source("k8s:default/EgressL4Route/r1", 0),
            yaml.safe_load(ROUTE.format(name="r1", gateway="gw", host="api.example.com")),
        ),
        (
            Source("k8s:default/EgressL4Route/r2", 0),
            yaml.safe_load(ROUTE.format(name="r2", gateway="nowhere", host="x.com")),
        ),
    ]

    async def go():
        cache, hub = SnapshotCache(), PolicyHub()
        installer = Provider(cache, hub, default_translator())
        planned = plan(load_documents(docs), installer.translator)
        assert installer.apply(planned)
        assert cache.get("default/gw") is not None
        assert [m.route for m in hub.current("default/gw").policy.matches] == ["default/r1"]
        statuses = {
            (s.kind, s.name): {c.type: c.status for c in s.conditions}
            for s in object_statuses(planned.loaded, in_force=True)
        }
        assert statuses[("EgressL4Route", "r1")] == {"Accepted": True, "Programmed": True}
        assert statuses[("EgressL4Route", "r2")] == {"Accepted": False, "Programmed": False}
        (error,) = [f for f in planned.loaded.findings if f.is_error]
        assert error.file == "k8s:default/EgressL4Route/r2"

    asyncio.run(go())


def test_an_own_address_change_is_translated_on_the_next_reload_of_the_same_files(tmp_path):
    """The control plane reloads when its namespace's addresses change: same documents,
    a new guard, so the snapshot changes and is installed."""
    write_set(tmp_path)
    own: list[str] = []
    cache = SnapshotCache()
    p = FileProvider(cache, None, default_translator(lambda: own), paths=[tmp_path])

    def guard_text() -> str:
        return str(cache.get("default/gw").resources[LISTENER])

    async def go() -> tuple[str, str, bool]:
        await p.reload()
        before = guard_text()
        own.append("192.0.2.77")
        installed = await p.reload()
        return before, guard_text(), installed

    before, after, installed = asyncio.run(go())
    assert installed
    assert "192.0.2.77" not in before and "192.0.2.77" in after
