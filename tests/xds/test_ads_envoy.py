"""The ADS server with the real Envoy binary: it takes listeners, NACKs what it cannot
bind (reported, not resent in a loop) and reconnects after a control-plane restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import grpc
import pytest

from clrk_xds.ads import AdsServer
from clrk_xds.consistency import LISTENER
from clrk_xds.envoy_process import EnvoyProcess, render_bootstrap
from clrk_xds.snapshot import Snapshot, SnapshotCache
from tests.xds.xds_messages import free_port, static_cluster, tcp_listener, tcp_snapshot

NODE = "default/gw"
_base_ids = iter(range(1, 1000))


@contextlib.asynccontextmanager
async def ads_server(cache: SnapshotCache, port: int = 0):
    ads = AdsServer(cache)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((ads.handler(),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield ads, bound
    finally:
        await server.stop(grace=None)


@contextlib.asynccontextmanager
async def echo_server():
    async def echo(reader, writer):
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def envoy(ads_port: int):
    base_id = str(os.getpid() % 4000 * 100 + next(_base_ids))
    proc = EnvoyProcess(
        render_bootstrap(NODE, f"127.0.0.1:{ads_port}", 0),
        extra_args=("--base-id", base_id),
        log_level="warning",
    )
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


async def echoes(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {predicate}")


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


def test_envoy_gets_listener_and_acks():
    async def go():
        cache = SnapshotCache()
        port = free_port()
        async with echo_server() as upstream:
            snap = tcp_snapshot(port, upstream)
            cache.set_snapshot(NODE, snap)
            async with ads_server(cache) as (ads, ads_port), envoy(ads_port) as proc:
                await until(lambda: echoes(port))
                status, body = await asyncio.to_thread(proc.admin_get, "/listeners")
                assert status == 200 and "l1::127.0.0.1:" in body
                await until(lambda: ads.status(NODE).get(LISTENER))
                assert ads.status(NODE)[LISTENER].acked_version == snap.version_of(LISTENER)

    run(go())


def test_envoy_nack_is_reported_and_not_resent():
    async def go():
        cache = SnapshotCache()
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        try:
            async with echo_server() as upstream:
                cache.set_snapshot(NODE, tcp_snapshot(busy, upstream))
                async with ads_server(cache) as (ads, ads_port), envoy(ads_port):
                    st = await until(
                        lambda: (s := ads.status(NODE).get(LISTENER)) and s.nacked_version and s
                    )
                    assert st.nacked_version == cache.get(NODE).version_of(LISTENER)
                    assert "address already in use" in st.nack_message.lower(), st.nack_message
                    before = ads.sent[(NODE, LISTENER)]
                    await asyncio.sleep(2)
                    assert ads.sent[(NODE, LISTENER)] == before == 1
                    # a fixed snapshot is sent and accepted
                    port = free_port()
                    fixed = tcp_snapshot(port, upstream)
                    cache.set_snapshot(NODE, fixed)
                    await until(lambda: echoes(port))
                    await until(
                        lambda: (
                            ads.status(NODE)[LISTENER].acked_version == fixed.version_of(LISTENER)
                        )
                    )
        finally:
            taken.close()

    run(go())


def test_envoy_keeps_serving_and_reconnects_after_server_restart():
    # Envoy must outlive the first server, so the contexts are entered by hand.
    async def go_restart():
        cache = SnapshotCache()
        port, port2 = free_port(), free_port()
        ads_port = free_port()
        async with echo_server() as upstream:
            cache.set_snapshot(NODE, tcp_snapshot(port, upstream))
            stack = contextlib.AsyncExitStack()
            async with stack:
                _, bound = await stack.enter_async_context(ads_server(cache, ads_port))
                assert bound == ads_port
                proc_ctx = envoy(ads_port)
                await proc_ctx.__aenter__()
                try:
                    await until(lambda: echoes(port))
                    await stack.aclose()  # the control plane goes away
                    await asyncio.sleep(0.5)
                    assert await echoes(port)  # Envoy keeps its last config meanwhile
                    async with ads_server(cache, ads_port) as (ads, _):
                        both = Snapshot.from_messages(
                            [tcp_listener("l1", port, "up"), tcp_listener("l2", port2, "up")],
                            [static_cluster("up", upstream)],
                        )
                        cache.set_snapshot(NODE, both)
                        await until(lambda: echoes(port2), timeout=30)
                        assert await echoes(port)
                        await until(
                            lambda: (
                                ads.status(NODE).get(LISTENER)
                                and ads.status(NODE)[LISTENER].acked_version
                                == both.version_of(LISTENER)
                            )
                        )
                finally:
                    await proc_ctx.__aexit__(None, None, None)

    run(go_restart())


pytestmark = pytest.mark.timeout(120)
