"""ADS server (xDS v3, state of the world) on grpc.aio, reading from a SnapshotCache.

A thin shell: the protocol decisions are in ads_state.StreamState; this module moves
bytes, waits on the cache and records ACK/NACK status per node and type.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import grpc
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.protobuf import Any

from clrk_runtime import grpc_auth
from clrk_runtime.logs import fields
from clrk_xds.ads_state import Kind, Request, Response, StreamState
from clrk_xds.consistency import CLUSTER, LISTENER, SECRET
from clrk_xds.snapshot import Snapshot, SnapshotCache

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = "StreamAggregatedResources"
FULL_METHOD = f"/{SERVICE}/{METHOD}"

log = logging.getLogger("clrk_xds.ads")


def _log(level: int, msg: str, **kw: object) -> None:
    log.log(level, msg, extra=fields(**kw))


@dataclass(frozen=True)
class TypeStatus:
    """What one node did with one resource type, across its streams."""

    acked_version: str | None = None
    nacked_version: str | None = None
    nack_message: str | None = None


def to_request(msg: DiscoveryRequest) -> Request:
    error = msg.error_detail
    return Request(
        type_url=msg.type_url,
        version_info=msg.version_info,
        response_nonce=msg.response_nonce,
        resource_names=tuple(msg.resource_names),
        node_id=msg.node.id if msg.node is not None else "",
        error=(error.message or f"code {error.code}") if error is not None else None,
    )


def to_message(resp: Response) -> DiscoveryResponse:
    return DiscoveryResponse(
        version_info=resp.version,
        type_url=resp.type_url,
        nonce=resp.nonce,
        resources=[
            Any(type_url=resp.type_url, value=raw) for _, raw in sorted(resp.resources.items())
        ],
    )


class AdsServer:
    def __init__(
        self, cache: SnapshotCache, served_types: Iterable[str] = (LISTENER, CLUSTER, SECRET)
    ) -> None:
        self.cache = cache
        self.served_types = frozenset(served_types)
        self._status: dict[str, dict[str, TypeStatus]] = {}
        # (node, type_url) -> responses sent: how a resend loop would show.
        self.sent: Counter[tuple[str, str]] = Counter()
        # Called with the node id after each ACK or NACK (status depends on them).
        self.on_status: list[Callable[[str], None]] = []

    def status(self, node_id: str) -> dict[str, TypeStatus]:
        """type_url -> last ACKed version and last NACKed version with Envoy's message."""
        return dict(self._status.get(node_id, {}))

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                METHOD: grpc.stream_stream_rpc_method_handler(
                    self._stream,
                    # Parsing happens in the loop, so bad bytes end one stream cleanly.
                    request_deserializer=None,
                    response_serializer=bytes,
                )
            },
        )

    def _record(self, node_id: str, kind: Kind, type_url: str, version: str, message: str) -> None:
        per_type = self._status.setdefault(node_id, {})
        old = per_type.get(type_url, TypeStatus())
        if kind is Kind.ACK:
            per_type[type_url] = TypeStatus(version, old.nacked_version, old.nack_message)
            _log(logging.INFO, "ads.ack", node=node_id, type_url=type_url, version=version)
        elif kind is Kind.NACK:
            per_type[type_url] = TypeStatus(old.acked_version, version, message)
            _log(
                logging.WARNING,
                "ads.nack",
                node=node_id,
                type_url=type_url,
                version=version,
                error=message,
            )
        if kind in (Kind.ACK, Kind.NACK):
            for callback in self.on_status:
                callback(node_id)

    async def _stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DiscoveryResponse]:
        state = StreamState(self.served_types)
        inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for raw in requests:
                    await inbox.put(raw)
            finally:
                await inbox.put(None)

        reader = asyncio.create_task(read())
        waiter: asyncio.Task[Snapshot] | None = None
        seen: Snapshot | None = None
        next_request: asyncio.Task[bytes | None] | None = None
        try:
            while True:
                if next_request is None:
                    next_request = asyncio.create_task(inbox.get())
                if waiter is None and state.node_id:
                    waiter = asyncio.create_task(self.cache.next_change(state.node_id, seen))
                pending = {next_request} | ({waiter} if waiter else set())
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                out: list[Response] = []
                if waiter in done:
                    seen = waiter.result()
                    waiter = None
                    out += state.on_snapshot(seen)
                if next_request in done:
                    raw = next_request.result()
                    next_request = None
                    if raw is None:
                        return  # the client closed its side
                    try:
                        req = to_request(DiscoveryRequest.parse(raw))
                    except Exception as exc:
                        _log(logging.WARNING, "ads.bad_request", error=str(exc))
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
                        return
                    if not state.node_id:
                        # A gateway's certificate decides the node, not the request.
                        state.node_id = await grpc_auth.scoped_gateway(context, req.node_id)
                    if not state.node_id:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no node id")
                        return
                    seen = self.cache.get(state.node_id) if seen is None else seen
                    verdict, responses = state.on_request(req, seen)
                    self._record(
                        state.node_id,
                        verdict.kind,
                        verdict.type_url,
                        verdict.version,
                        verdict.message,
                    )
                    if verdict.kind in (Kind.STALE, Kind.UNKNOWN_TYPE):
                        _log(
                            logging.DEBUG,
                            f"ads.{verdict.kind}",
                            node=state.node_id,
                            type_url=req.type_url,
                            nonce=req.response_nonce,
                        )
                    out += responses
                for resp in out:
                    _log(
                        logging.INFO,
                        "ads.send",
                        node=state.node_id,
                        type_url=resp.type_url,
                        version=resp.version,
                        nonce=resp.nonce,
                        resources=len(resp.resources),
                    )
                    self.sent[(state.node_id, resp.type_url)] += 1
                    yield to_message(resp)
        finally:
            for task in (reader, waiter, next_request):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
