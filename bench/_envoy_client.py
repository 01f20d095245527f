"""The Envoy benchmark's client: `bench/_client.py`, optionally speaking for the dialer.

    python -m bench._envoy_client [--proxy AGENT_NS/AGENT ROUTE DST_IP:DST_PORT] MODE ...
    python -m bench._envoy_client --connect PROXY_IP:PROXY_PORT MODE ...

MODE and its arguments are `_client.py`'s (`cps`, `bulk`, `deny`).  With `--proxy`,
every connection starts with the PROXY v2 header the dialer would send for an allowed
connection (source = this socket, destination and TLVs as given), so the client can
talk to Envoy's listener directly: the "Envoy alone" path.  A HOST that is a path is
Envoy's Unix socket listener (PORT is then ignored; the header's source is the agent
address of sandbox 1).  With `--connect`, every connection goes to the HTTP proxy
(Squid) and asks it `CONNECT HOST:PORT`; a refusal (Squid's 403) counts as the reset
`deny` times.  Without either, this is `_client.py` itself, so all paths run the same
measuring code.
"""

from __future__ import annotations

import os
import socket
import sys
import time

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


def _read_head(sock: socket.socket) -> bytes:
    """The proxy's response head.  The upstream never speaks first, so no byte of the
    tunnel can follow a 200 in the same read; a refusal's body is never read."""
    head = b""
    while b"\r\n\r\n" not in head:
        more = sock.recv(4096)
        if not more:
            raise ConnectionResetError("the proxy closed before answering CONNECT")
        head += more
    return head


def http_connect(proxy: str):
    """A `_client._connect` that tunnels through an HTTP proxy: CONNECT, then the 200."""
    proxy_ip, _, proxy_port = proxy.rpartition(":")
    plain_connect = _client._connect

    def connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
        sock = plain_connect(proxy_ip, int(proxy_port), timeout)
        try:
            sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            status = _read_head(sock).split(b" ", 2)[1]
            if status != b"200":
                raise ConnectionResetError(f"the proxy answered {status.decode()}")
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def refused_by_proxy(host: str, port: int, count: int) -> dict:
    """`_client.deny` through the proxy: connect() until the proxy's refusal is read."""
    samples, surprises = [], 0
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        try:
            _client._connect(host, port).close()
            surprises += 1  # the proxy let it through
        except ConnectionResetError:
            pass
        samples.append((clock() - start) / 1000)
    return {"samples_us": samples, "not_refused": surprises}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--proxy"]:
        agent, route, destination, *argv = argv[1:]
        _client._connect = proxy_connect(agent, route, destination)
    elif argv[:1] == ["--connect"]:
        proxy, *argv = argv[1:]
        _client._connect = http_connect(proxy)
        _client.deny = refused_by_proxy
    _client.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
