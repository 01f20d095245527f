"""The ADS server over a real gRPC socket, driven by a hand-written xDS client."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.rpc import Status

from clrk_xds.ads import FULL_METHOD, AdsServer
from clrk_xds.consistency import CLUSTER, LISTENER
from clrk_xds.snapshot import SnapshotCache
from tests.xds.xds_messages import tcp_snapshot

NODE = "default/gw"
QUIET = 0.3  # how long "nothing arrives" is watched for


@contextlib.asynccontextmanager
async def running(cache: SnapshotCache):
    ads = AdsServer(cache)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((ads.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield ads, f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


class Client:
    """One ADS stream: send requests, receive responses."""

    def __init__(self, channel: grpc.aio.Channel):
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        method = channel.stream_stream(
            FULL_METHOD, request_serializer=None, response_deserializer=DiscoveryResponse.parse
        )
        self.call = method(self._requests())

    async def _requests(self):
        while (raw := await self.outbox.get()) is not None:
            yield raw

    def send(self, type_url, *, version="", nonce="", error=None, node=NODE, raw=None):
        req = DiscoveryRequest(
            type_url=type_url,
            version_info=version,
            response_nonce=nonce,
            node=Node(id=node) if node else None,
            error_detail=Status(code=13, message=error) if error else None,
        )
        self.outbox.put_nowait(raw if raw is not None else bytes(req))

    async def recv(self, timeout=5.0) -> DiscoveryResponse:
        pending = self._read()
        resp = await asyncio.wait_for(asyncio.shield(pending), timeout)
        self._next = None
        return resp

    async def nothing(self) -> bool:
        """True if no response arrives for a while (a later recv() gets it if one does)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._read()), QUIET)
        except TimeoutError:
            return True
        return False

    def _read(self) -> asyncio.Future:
        if getattr(self, "_next", None) is None:
            self._next = asyncio.ensure_future(self.call.read())
        return self._next


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 30))


def test_first_request_gets_snapshot_and_ack_is_recorded():
    async def go():
        cache = SnapshotCache()
        snap = tcp_snapshot(1111, 2222)
        cache.set_snapshot(NODE, snap)
        async with running(cache) as (ads, target), grpc.aio.insecure_channel(target) as ch:
            c = Client(ch)
            c.send(CLUSTER)
            resp = await c.recv()
            assert resp.type_url == CLUSTER
            assert resp.version_info == snap.version_of(CLUSTER)
            assert [a.unpack().name for a in resp.resources] == ["up"]
            c.send(LISTENER, node=None)  # Envoy sends the node on the first message only
            lds = await c.recv()
            assert [a.unpack().name for a in lds.resources] == ["l1"]
            assert lds.nonce != resp.nonce
            c.send(CLUSTER, version=resp.version_info, nonce=resp.nonce)
            assert await c.nothing()  # an ACK is not answered
            status = ads.status(NODE)
            assert status[CLUSTER].acked_version == resp.version_info
            assert status[CLUSTER].nacked_version is None

    run(go())


def test_nack_is_recorded_and_not_resent_until_version_changes():
    async def go():
        cache = SnapshotCache()
        cache.set_snapshot(NODE, tcp_snapshot(1111, 2222))
        async with running(cache) as (ads, target), grpc.aio.insecure_channel(target) as ch:
            c = Client(ch)
            c.send(LISTENER)
            bad = await c.recv()
            c.send(LISTENER, nonce=bad.nonce, error="cannot bind 127.0.0.1:1111")
            assert await c.nothing()
            st = ads.status(NODE)[LISTENER]
            assert (st.acked_version, st.nacked_version) == (None, bad.version_info)
            assert st.nack_message == "cannot bind 127.0.0.1:1111"
            # the same listeners with other clusters: listeners are not resent
            cache.set_snapshot(NODE, tcp_snapshot(1111, 3333))
            assert await c.nothing()
            cache.set_snapshot(NODE, tcp_snapshot(4444, 3333))
            good = await c.recv()
            assert good.version_info != bad.version_info
            c.send(LISTENER, version=good.version_info, nonce=good.nonce)
            assert await c.nothing()
            st = ads.status(NODE)[LISTENER]
            assert (st.acked_version, st.nacked_version) == (good.version_info, bad.version_info)

    run(go())


def test_stale_nonce_is_ignored():
    async def go():
        cache = SnapshotCache()
        cache.set_snapshot(NODE, tcp_snapshot(1111, 2222))
        async with running(cache) as (ads, target), grpc.aio.insecure_channel(target) as ch:
            c = Client(ch)
            c.send(LISTENER)
            first = await c.recv()
            cache.set_snapshot(NODE, tcp_snapshot(5555, 2222))
            second = await c.recv()
            # a NACK of the superseded response: ignored, not recorded
            c.send(LISTENER, nonce=first.nonce, error="late complaint")
            assert await c.nothing()
            assert LISTENER not in ads.status(NODE)
            c.send(LISTENER, version=second.version_info, nonce=second.nonce)
            assert await c.nothing()
            assert ads.status(NODE)[LISTENER].acked_version == second.version_info

    run(go())


def test_version_change_pushes_and_no_snapshot_waits():
    async def go():
        cache = SnapshotCache()
        async with running(cache) as (_, target), grpc.aio.insecure_channel(target) as ch:
            c = Client(ch)
            c.send(LISTENER)
            assert await c.nothing()  # nothing for this node yet
            snap = tcp_snapshot(1111, 2222)
            cache.set_snapshot(NODE, snap)
            resp = await c.recv()
            assert resp.version_info == snap.version_of(LISTENER)

    run(go())


def test_bad_bytes_end_the_stream_not_the_server():
    async def go():
        cache = SnapshotCache()
        cache.set_snapshot(NODE, tcp_snapshot(1111, 2222))
        async with running(cache) as (_, target), grpc.aio.insecure_channel(target) as ch:
            c = Client(ch)
            c.send(LISTENER, raw=b"\x0a\xff")
            try:
                await c.recv()
                raise AssertionError("stream should have failed")
            except grpc.aio.AioRpcError as err:
                assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            ok = Client(ch)
            ok.send(LISTENER)
            assert (await ok.recv()).type_url == LISTENER

    run(go())
