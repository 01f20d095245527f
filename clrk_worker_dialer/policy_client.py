"""The dialer's side of the policy stream: follow the control plane's updates."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from clrk_runtime.policy_messages import FULL_METHOD, pb2


async def watch_policy(target: str, gateway: str) -> AsyncIterator[pb2.PolicyUpdate]:
    """Updates for `gateway` from the control plane at `target` ("host:port").

    Ends with grpc.aio.AioRpcError when the stream breaks; reconnecting (and keeping the
    last good policy meanwhile) is the caller's choice.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_stream(
            FULL_METHOD,
            request_serializer=pb2.WatchRequest.SerializeToString,
            response_deserializer=pb2.PolicyUpdate.FromString,
        )(pb2.WatchRequest(gateway=gateway))
        async for update in call:
            yield update
