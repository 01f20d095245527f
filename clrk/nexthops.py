"""Where the dialer hands an allowed connection: one Envoy listener per gateway listener.

The control plane binds each Envoy listener and the dialer dials it; both derive the
address from this one function so that they can never disagree.  UDP listeners get
no Envoy listener (the dialer relays UDP itself) but keep their slot, so adding a UDP
listener never moves the ports of the others.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 15100


def envoy_listener_addresses(
    listeners: Iterable[tuple[str, str]],
    host: str = DEFAULT_HOST,
    base_port: int = DEFAULT_BASE_PORT,
) -> dict[str, tuple[str, int]]:
    """(listener name, protocol) in gateway order -> (host, port) of its Envoy listener."""
    out: dict[str, tuple[str, int]] = {}
    for index, (name, protocol) in enumerate(listeners):
        if protocol != "UDP":
            out[name] = (host, base_port + index)
    return out
