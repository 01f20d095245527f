"""Hand-built Envoy resources for the snapshot, ADS and Envoy tests."""

from __future__ import annotations

import socket

from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
from envoy_data_plane.google.protobuf import Any

from clrk_xds.snapshot import Snapshot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(count: int) -> int:
    """A base port with `count` free consecutive ports on 127.0.0.1: an Envoy base port
    (its listeners take base, base + 1, ...), of which `free_port` checks only the first."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def tcp_listener(name: str, port: int, cluster: str, host: str = "127.0.0.1") -> Listener:
    proxy = TcpProxy(stat_prefix=name, cluster=cluster)
    return Listener(
        name=name,
        address=address(host, port),
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(name="envoy.filters.network.tcp_proxy", typed_config=Any.pack(proxy))
                ]
            )
        ],
    )


def static_cluster(name: str, port: int, host: str = "127.0.0.1") -> Cluster:
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC,
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=address(host, port)))]
                )
            ],
        ),
    )


def tcp_snapshot(listen_port: int, upstream_port: int, name: str = "l1") -> Snapshot:
    return Snapshot.from_messages(
        [tcp_listener(name, listen_port, "up")], [static_cluster("up", upstream_port)]
    )
