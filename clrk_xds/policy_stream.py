"""The policy stream's server: each worker dialer watches its gateway's validated
resources.  `PolicyHub` holds what the provider published last; `PolicyStreamServer`
serves it over gRPC (messages in `clrk_runtime.policy_messages`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence

import grpc

from clrk.api import Resource
from clrk.api.resources import Source
from clrk_runtime.logs import fields
from clrk_runtime.policy_messages import (
    METHOD,
    SERVICE,
    GatewayPolicyDocs,
    gateway_documents,
    pb2,
    to_message,
)

log = logging.getLogger("clrk_xds.policy_stream")


class PolicyHub:
    """The latest published resource set; watchers wait for the next one.

    Use from the event loop's thread only.
    """

    def __init__(self) -> None:
        self._resources: tuple[Sequence[Resource], Mapping[Source, object], frozenset] | None = None
        self._generation = 0
        self._changed = asyncio.Event()
        self._cache: dict[tuple[int, str], GatewayPolicyDocs] = {}

    def publish(
        self,
        resources: Sequence[Resource],
        raw: Mapping[Source, object],
        rejected: frozenset[tuple[str, str, str]] = frozenset(),
    ) -> None:
        self._resources = (tuple(resources), dict(raw), rejected)
        self._generation += 1
        self._cache.clear()
        self._changed.set()
        self._changed = asyncio.Event()

    def current(self, gateway: str) -> GatewayPolicyDocs | None:
        if self._resources is None:
            return None
        key = (self._generation, gateway)
        if key not in self._cache:
            self._cache[key] = gateway_documents(gateway, *self._resources)
        return self._cache[key]

    async def updates(self, gateway: str) -> AsyncIterator[GatewayPolicyDocs]:
        """The current set once published, then each one with a different version."""
        last: str | None = None
        while True:
            changed = self._changed
            docs = self.current(gateway)
            if docs is not None and docs.version != last:
                last = docs.version
                yield docs
            await changed.wait()


class PolicyStreamServer:
    def __init__(self, hub: PolicyHub) -> None:
        self.hub = hub

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                METHOD: grpc.unary_stream_rpc_method_handler(
                    self._watch,
                    request_deserializer=pb2.WatchRequest.FromString,
                    response_serializer=pb2.PolicyUpdate.SerializeToString,
                )
            },
        )

    async def _watch(
        self, request: pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb2.PolicyUpdate]:
        gateway = request.gateway
        if "/" not in gateway:
            gateway = f"default/{gateway}"
        async for docs in self.hub.updates(gateway):
            log.info(
                "policy.send",
                extra=fields(gateway=gateway, version=docs.version, documents=len(docs.documents)),
            )
            yield to_message(docs)
