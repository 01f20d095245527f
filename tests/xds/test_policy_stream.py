"""The policy stream over a real gRPC socket, and what a dialer does with an update."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from clrk.api import load_text
from clrk.policy import Agent, Connection, compile_policies, decide
from clrk_runtime.policy_messages import gateway_documents, load_update, to_message
from clrk_worker_dialer.policy_client import watch_policy
from clrk_xds.policy_stream import PolicyHub, PolicyStreamServer
from clrk_xds.provider import read_manifests

SET = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp-out, protocol: TCP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: other}
spec:
  listeners: [{name: tcp-out, protocol: TCP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: mine}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{destinationHostnames: [HOST], ports: [{port: 443}]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: theirs}
spec:
  parentRefs: [{name: other}]
  rules: [{matches: [{destinationHostnames: [theirs.example.com]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: deny-mine}
spec:
  targetRef: {group: clrk.apoxy.dev, kind: EgressL4Route, name: mine}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: TaskAgent
metadata: {name: coder, labels: {team: a}}
spec:
  egressRefs: [{gatewayRef: gw}]
"""


def manifests(tmp_path, host="api.example.com"):
    (tmp_path / "set.yaml").write_text(SET.replace("HOST", host))
    m = read_manifests([tmp_path])
    assert not m.load.errors
    return m


def test_gateway_documents_are_its_own_routes_denies_and_agents(tmp_path):
    m = manifests(tmp_path)
    docs = gateway_documents("default/gw", m.load.resources, m.raw)
    names = [(d.kind, d.source_document) for d in docs.documents]
    assert names == [
        ("EgressGateway", 1),
        ("EgressL4Route", 3),
        ("EgressDenyPolicy", 5),
        ("TaskAgent", 6),
    ]
    assert gateway_documents("default/gw", m.load.resources, m.raw).version == docs.version
    assert gateway_documents("default/none", m.load.resources, m.raw).documents == ()


def test_update_recompiles_to_the_same_policy(tmp_path):
    m = manifests(tmp_path)
    update = to_message(gateway_documents("default/gw", m.load.resources, m.raw))
    loaded = load_update(update)
    assert not loaded.errors
    here = compile_policies(loaded.resources, rejected=loaded.rejected).gateways[("default", "gw")]
    there = compile_policies(m.load.resources).gateways[("default", "gw")]
    agent = Agent("default", "coder", {"team": "a"})
    for names, port in [({"api.example.com"}, 443), ({"api.example.com"}, 80), ({"x.org"}, 443)]:
        conn = Connection("TCP", "192.0.2.7", port, frozenset(names))
        assert decide(here, agent, conn) == decide(there, agent, conn)
    assert {r.source.file for r in loaded.resources} == {str(tmp_path / "set.yaml")}


def test_bad_json_in_an_update_is_a_finding_not_a_crash(tmp_path):
    m = manifests(tmp_path)
    update = to_message(gateway_documents("default/gw", m.load.resources, m.raw))
    update.documents[0].json = "{not json"
    assert load_update(update).errors


def test_client_receives_current_set_then_changes(tmp_path):
    async def go():
        hub = PolicyHub()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((PolicyStreamServer(hub).handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            updates = watch_policy(f"127.0.0.1:{port}", "gw")
            first_task = asyncio.ensure_future(anext(updates))
            await asyncio.sleep(0.1)
            assert not first_task.done()  # nothing published yet: nothing to send
            m = manifests(tmp_path)
            hub.publish(m.load.resources, m.raw, m.load.rejected)
            first = await asyncio.wait_for(first_task, 5)
            assert first.gateway == "default/gw" and len(first.documents) == 4
            # a change to another gateway only is not sent; a change to this one is
            (tmp_path / "set.yaml").write_text(
                SET.replace("HOST", "api.example.com").replace("theirs.example", "x.example")
            )
            m2 = read_manifests([tmp_path])
            hub.publish(m2.load.resources, m2.raw, m2.load.rejected)
            m3 = manifests(tmp_path, host="new.example.com")
            hub.publish(m3.load.resources, m3.raw, m3.load.rejected)
            second = await asyncio.wait_for(anext(updates), 5)
            assert second.version != first.version
            assert "new.example.com" in second.documents[1].json
            await updates.aclose()
        finally:
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(go(), 30))


def test_unknown_gateway_gets_an_empty_update():
    async def go():
        hub = PolicyHub()
        loaded = load_text("")
        hub.publish(loaded.resources, {})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((PolicyStreamServer(hub).handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with contextlib.aclosing(watch_policy(f"127.0.0.1:{port}", "ns/x")) as it:
                update = await asyncio.wait_for(anext(it), 5)
            assert (update.gateway, len(update.documents)) == ("ns/x", 0)
        finally:
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(go(), 30))
