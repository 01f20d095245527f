"""The placeholders `clrk run` gives an agent, from its gateway's compiled policy.

An agent holds a credential's placeholder, never the secret: each credential with a
`placeholderEnv` sets that variable to its placeholder, and a variable an `env` source
reads the secret from is removed (the operator's shell may hold the real key; the
agent must not inherit it).  The policy comes from the control plane's policy stream,
which carries the placeholders and where each secret is read, never a value.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from clrk.policy.compiled import CompiledCredential
from clrk_runtime import grpc_auth
from clrk_runtime.policy_messages import FULL_METHOD, PolicyDecodeError, pb2, policy_from_update


class CredentialEnvError(RuntimeError):
    pass


def variables(credentials: Iterable[CompiledCredential]) -> tuple[dict[str, str], set[str]]:
    """(variables to set, variables to remove) for the agent's environment."""
    credentials = list(credentials)
    given = {c.placeholder_env: c.placeholder for c in credentials if c.placeholder_env}
    removed = {c.source_ref for c in credentials if c.source == "env"} - given.keys()
    return given, removed


def apply(env: dict[str, str], credentials: Iterable[CompiledCredential]) -> None:
    given, removed = variables(credentials)
    for name in removed:
        env.pop(name, None)
    env.update(given)


def gateway_credentials(
    control_plane: str, gateway: str, timeout: float = 10.0
) -> tuple[CompiledCredential, ...]:
    """The credentials of `gateway`'s current policy, from the policy stream."""
    try:
        with grpc_auth.channel(control_plane) as channel:
            call = channel.unary_stream(
                FULL_METHOD,
                request_serializer=pb2.WatchRequest.SerializeToString,
                response_deserializer=pb2.PolicyUpdate.FromString,
            )(pb2.WatchRequest(gateway=gateway), timeout=timeout)
            try:
                update = next(iter(call))
            finally:
                call.cancel()
        if not update.HasField("policy"):
            return ()  # the gateway is not (yet) accepted: nothing to hold
        return policy_from_update(update).credentials
    except (grpc.RpcError, StopIteration, PolicyDecodeError, grpc_auth.AuthError) as exc:
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        raise CredentialEnvError(
            f"cannot read the credentials of gateway {gateway} from the control plane: {detail}"
        ) from None
