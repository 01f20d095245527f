"""The policy stream over a real gRPC socket, and what a dialer does with an update."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from clrk.policy import Agent, Connection, decide
from clrk_runtime.policy_messages import (
    SCHEMA,
    PolicyDecodeError,
    pb2,
    policy_from_update,
    policy_update,
    to_plain,
)
from clrk_worker_dialer.policy_client import watch_policy
from clrk_xds.policy_stream import PolicyHub, PolicyStreamServer
from tests.conftest import compile_yaml

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
GW = ("default", "gw")


def compiled(host="api.example.com"):
    return compile_yaml(SET.replace("HOST", host))


def test_an_update_carries_the_gateways_own_routes_denies_and_agents():
    update = policy_update("default/gw", compiled().gateways[GW])
    assert (update.gateway, update.schema) == ("default/gw", SCHEMA)
    assert [(m.route, m.deny_policy) for m in update.policy.matches] == [
        ("default/mine", "default/deny-mine")
    ]
    assert [a.name for a in update.policy.agents] == ["coder"]
    assert policy_update("default/gw", compiled().gateways[GW]).version == update.version
    assert policy_update("default/gw", compiled("x.org").gateways[GW]).version != update.version
    assert not policy_update("default/none", None).HasField("policy")


def test_the_decoded_policy_decides_like_the_compiled_one():
    there = compiled().gateways[GW]
    wire = pb2.PolicyUpdate.FromString(policy_update("default/gw", there).SerializeToString())
    here = policy_from_update(wire)
    agent = Agent("default", "coder", {"team": "a"})
    for names, port in [({"api.example.com"}, 443), ({"api.example.com"}, 80), ({"x.org"}, 443)]:
        conn = Connection("TCP", "192.0.2.7", port, frozenset(names))
        assert decide(here, agent, conn) == decide(there, agent, conn)
    assert to_plain(here) == to_plain(there)


def test_an_update_without_a_policy_or_of_another_schema_is_refused():
    with pytest.raises(PolicyDecodeError, match="not defined or not accepted"):
        policy_from_update(policy_update("default/none", None))
    update = policy_update("default/gw", compiled().gateways[GW])
    update.schema = SCHEMA + 1
    with pytest.raises(PolicyDecodeError, match="schema"):
        policy_from_update(update)


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
            hub.publish(compiled())
            first = await asyncio.wait_for(first_task, 5)
            assert first.gateway == "default/gw" and len(first.policy.matches) == 1
            # a change to another gateway only is not sent; a change to this one is
            hub.publish(compile_yaml(SET.replace("HOST", "api.example.com").replace("theirs", "x")))
            hub.publish(compiled("new.example.com"))
            second = await asyncio.wait_for(anext(updates), 5)
            assert second.version != first.version
            assert list(second.policy.matches[0].hostnames) == ["new.example.com"]
            await updates.aclose()
        finally:
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(go(), 30))


def test_unknown_gateway_gets_an_empty_update():
    async def go():
        hub = PolicyHub()
        hub.publish(compile_yaml(""))
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((PolicyStreamServer(hub).handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with contextlib.aclosing(watch_policy(f"127.0.0.1:{port}", "ns/x")) as it:
                update = await asyncio.wait_for(anext(it), 5)
            assert update.gateway == "ns/x" and not update.HasField("policy")
        finally:
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_gateway_gone_from_the_set_keeps_no_match_bytes():
    hub = PolicyHub()
    hub.publish(compiled())
    assert hub.current("default/gw").HasField("policy")
    hub.current("ns/asked-for-by-nobody-real")
    hub.publish(compile_yaml(""))
    assert not hub.current("default/gw").HasField("policy")
    assert hub._matches == {}
