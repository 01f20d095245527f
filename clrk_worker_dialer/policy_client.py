"""The dialer's side of the policy stream: follow the control plane's updates."""

from __future__ import annotations

from collections.abc import AsyncIterator

from clrk_runtime.grpc_auth import ClientAuth, aio_channel
from clrk_runtime.policy_messages import FULL_METHOD, pb2


async def watch_policy(
    target: str, gateway: str, auth: ClientAuth | None = None
) -> AsyncIterator[pb2.PolicyUpdate]:
    """Updates for `gateway` from the control plane at `target` ("unix:PATH" or
    "host:port", the latter with `auth`).

    Ends with grpc.aio.AioRpcError when the stream breaks; reconnecting (and keeping the
    last good policy meanwhile) is the caller's choice.
    """
    async with aio_channel(target, auth) as channel:
        call = channel.unary_stream(
            FULL_METHOD,
            request_serializer=pb2.WatchRequest.SerializeToString,
            response_deserializer=pb2.PolicyUpdate.FromString,
        )(pb2.WatchRequest(gateway=gateway))
        async for update in call:
            yield update
