"""The policy stream's server: each worker dialer watches its gateway's compiled policy.
`PolicyHub` holds the policy set the provider installed last; `PolicyStreamServer`
serves it over gRPC (messages in `clrk_runtime.policy_messages`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from clrk.policy import PolicySet
from clrk_runtime import grpc_auth
from clrk_runtime.logs import fields
from clrk_runtime.policy_messages import METHOD, SERVICE, MatchBytes, pb2, policy_update

log = logging.getLogger("clrk_xds.policy_stream")


def _key(gateway: str) -> tuple[str, str]:
    namespace, _, name = gateway.rpartition("/")
    return (namespace or "default", name)


class PolicyHub:
    """The latest published policy set; watchers wait for the next one.

    Use from the event loop's thread only.
    """

    def __init__(self) -> None:
        self._policies: PolicySet | None = None
        self._changed = asyncio.Event()
        self._cache: dict[str, pb2.PolicyUpdate] = {}  # gateway -> update, this generation
        # gateway -> its matches' bytes: the update is encoded on the event loop, ahead of
        # the Envoy snapshot's send, so only the matches that changed are encoded again.
        self._matches: dict[str, MatchBytes] = {}

    def publish(self, policies: PolicySet) -> None:
        self._policies = policies
        self._cache.clear()
        self._changed.set()
        self._changed = asyncio.Event()

    def current(self, gateway: str) -> pb2.PolicyUpdate | None:
        """The update for `gateway` ("namespace/name"); None before anything is published."""
        if self._policies is None:
            return None
        if gateway not in self._cache:
            policy = self._policies.gateways.get(_key(gateway))
            # Only a gateway that exists keeps its matches' bytes: a deleted one, or any
            # name a client asks for, must not hold memory for the server's lifetime.
            if policy is None:
                self._matches.pop(gateway, None)
                matches = MatchBytes()
            else:
                matches = self._matches.setdefault(gateway, MatchBytes())
            self._cache[gateway] = policy_update(gateway, policy, matches)
        return self._cache[gateway]

    async def updates(self, gateway: str) -> AsyncIterator[pb2.PolicyUpdate]:
        """The current policy once published, then each one with a different version."""
        last: str | None = None
        while True:
            changed = self._changed
            update = self.current(gateway)
            if update is not None and update.version != last:
                last = update.version
                yield update
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
        if gateway and "/" not in gateway:
            gateway = f"default/{gateway}"
        # A gateway's certificate decides what it watches, not the request.
        gateway = await grpc_auth.scoped_gateway(context, gateway)
        if not gateway:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no gateway")
        async for update in self.hub.updates(gateway):
            log.info(
                "policy.send",
                extra=fields(
                    gateway=gateway, version=update.version, matches=len(update.policy.matches)
                ),
            )
            yield update
