"""The Envoy benchmark's client: `bench/_client.py`, optionally speaking for the dialer.

    python -m bench._envoy_client [--proxy AGENT_NS/AGENT ROUTE DST_IP:DST_PORT] MODE ...

MODE and its arguments are `_client.py`'s (`cps`, `bulk`).  With `--proxy`, every
connection starts with the PROXY v2 header the dialer would send for an allowed
connection (source = this socket, destination and TLVs as given), so the client can
talk to Envoy's listener directly: the "Envoy alone" path.  A HOST that is a path is
Envoy's Unix socket listener (PORT is then ignored; the header's source is the agent
address of sandbox 1).  Without `--proxy`, this is `_client.py` itself, so all paths run
the same measuring code.
"""

from __future__ import annotations

import os
import socket
import sys

from bench import _client

UNIX_SOURCE = ("198.18.0.2", 0)  # what the dialer would name for sandbox 1's agent


def proxy_connect(agent: str, route: str, destination: str):
    """A `_client._connect` that sends the dialer's header right after connecting."""
    from clrk_worker_dialer.proxy_v2 import ProxyHeader, clrk_tlvs, encode

    namespace, _, name = agent.partition("/")
    dst_ip, _, dst_port = destination.rpartition(":")
    plain_connect = _client._connect

    def connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout)
            sock.connect(host)
            src_ip, src_port = UNIX_SOURCE[0], int.from_bytes(os.urandom(2), "big") | 1024
        else:
            sock = plain_connect(host, port, timeout)
            src_ip, src_port = sock.getsockname()[:2]
        header = ProxyHeader(
            source_ip=src_ip,
            source_port=src_port,
            destination_ip=dst_ip,
            destination_port=int(dst_port),
            tlvs=clrk_tlvs(
                agent_namespace=namespace,
                agent_name=name,
                route=route,
                connection_id=os.urandom(8).hex(),  # as the dialer's: 16 hex digits
            ),
        )
        sock.sendall(encode(header))
        return sock

    return connect


def main(argv: list[str]) -> None:
    if argv[:1] == ["--proxy"]:
        agent, route, destination, *argv = argv[1:]
        _client._connect = proxy_connect(agent, route, destination)
    _client.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
