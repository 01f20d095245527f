"""The translated listeners in the real Envoy: real PROXY v2 headers (the dialer's codec),
real TCP upstreams on loopback.  A chain that proxies reaches the upstream named by the
PROXY destination; a miss or a deny chain closes the connection and the upstream never
sees a connection.

Loopback is always blocked (SPEC 4), and loopback is all a unit test may reach, so the
gateways `gw` and `open` are translated with an empty blocked list; `guarded` keeps the
real list and shows that only an explicit CIDR inside it opens a blocked address."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator

import pytest

from clrk.api import load_text
from clrk.policy.loaded import compile_loaded
from clrk_worker_dialer.proxy_v2 import ProxyHeader, clrk_tlvs, encode
from clrk_xds.envoy_process import EnvoyProcess, static_bootstrap
from clrk_xds.translate import to_plain, translate
from tests.xds.xds_messages import free_port_block

GREETING = b"upstream says hi"


class _Upstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, family=socket.AF_INET):
        self.address_family = family
        self.accepted = 0
        super().__init__(address, _Handler)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.accepted += 1
        self.request.settimeout(0.3)
        # Read what the client sent first, so that closing never resets the reply.
        with contextlib.suppress(OSError):
            self.request.recv(65536)
        self.request.sendall(GREETING)


def _serve(host: str, family: int) -> _Upstream:
    server = _Upstream((host, 0), family)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, _Upstream]]:
    servers = {
        "v4": _serve("127.0.0.1", socket.AF_INET),
        "v4b": _serve("127.0.0.2", socket.AF_INET),
        "v6": _serve("::1", socket.AF_INET6),
    }
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


def _manifests(p: int, p6: int, q: int) -> str:
    api = "apiVersion: clrk.apoxy.dev/v1alpha1"
    return f"""
{api}
kind: EgressGateway
metadata: {{name: gw}}
spec:
  listeners:
  - {{name: tcp-out, protocol: TCP}}
  - {{name: tls-out, protocol: TLS}}
---
{api}
kind: EgressGateway
metadata: {{name: open}}
spec:
  defaultPolicy: allow-all
  listeners:
  - {{name: tcp-out, protocol: TCP}}
---
{api}
kind: EgressGateway
metadata: {{name: guarded}}
spec:
  defaultPolicy: allow-all
  listeners:
  - {{name: tcp-out, protocol: TCP}}
---
{api}
kind: EgressL4Route
metadata: {{name: loopback-2}}
spec:
  parentRefs: [{{name: guarded}}]
  rules:
  - matches:
    - destinationHostnames: ["names-never-open.example.com"]
      destinationCIDRs: ["127.0.0.2/32", "0.0.0.0/0"]
---
{api}
kind: EgressL4Route
metadata: {{name: names}}
spec:
  parentRefs: [{{name: gw, sectionName: tcp-out}}]
  rules:
  - matches:
    - destinationHostnames: ["exact.example.com", "*.wild.example.com"]
      ports: [{{port: {p}}}]
---
{api}
kind: EgressL4Route
metadata: {{name: nets}}
spec:
  parentRefs: [{{name: gw, sectionName: tcp-out}}]
  rules:
  - matches:
    - destinationCIDRs: ["127.0.0.2/32", "::1/128"]
      ports: [{{startPort: {min(p, p6, q) - 3}, endPort: {max(p, p6, q) + 3}}}]
---
{api}
kind: EgressL4Route
metadata: {{name: agents}}
spec:
  parentRefs: [{{name: gw, sectionName: tcp-out}}]
  rules:
  - matches:
    - destinationHostnames: ["agents.example.com"]
      sourceAgents: {{matchLabels: {{team: data}}}}
---
{api}
kind: EgressL4Route
metadata: {{name: blocked}}
spec:
  parentRefs: [{{name: gw}}, {{name: open}}]
  rules:
  - matches: [{{destinationHostnames: ["blocked.example.com"]}}]
---
{api}
kind: EgressL4Route
metadata: {{name: also-blocked}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{destinationHostnames: ["blocked.example.com"]}}]
---
{api}
kind: EgressDenyPolicy
metadata: {{name: deny-blocked}}
spec:
  targetRef: {{name: blocked}}
---
{api}
kind: EgressL4Route
metadata: {{name: tls}}
spec:
  parentRefs: [{{name: gw, sectionName: tls-out}}]
  rules:
  - matches: [{{destinationHostnames: ["tls.example.com"]}}]
---
{api}
kind: DaemonAgent
metadata: {{name: etl, namespace: data, labels: {{team: data}}}}
spec: {{egressRefs: [{{gatewayRef: default/gw}}]}}
---
{api}
kind: DaemonAgent
metadata: {{name: dev, namespace: data, labels: {{team: dev}}}}
spec: {{egressRefs: [{{gatewayRef: default/gw}}]}}
"""


@pytest.fixture(scope="module")
def gateways(upstreams) -> Iterator[dict[str, dict[str, tuple[str, int]]]]:
    """Three Envoys (deny-all `gw`, allow-all `open` and `guarded`): listener name ->
    address, per gateway."""
    p = upstreams["v4"].server_address[1]
    p6 = upstreams["v6"].server_address[1]
    q = upstreams["v4b"].server_address[1]
    loaded = load_text(_manifests(p, p6, q), "chains.yaml")
    assert not loaded.errors, [f.line() for f in loaded.errors]
    out: dict[str, dict[str, tuple[str, int]]] = {}
    envoys = []
    try:
        for ref in ("default/gw", "default/open", "default/guarded"):
            blocked = None if ref == "default/guarded" else ()
            res = translate(
                compile_loaded(loaded).compiled,
                base_port=free_port_block(2),
                always_blocked=blocked,
            )
            res = res[ref]
            envoys.append(EnvoyProcess(static_bootstrap(to_plain(res)), log_level="warning"))
            envoys[-1].start()
            out[ref] = {
                lst.name: (
                    lst.address.socket_address.address,
                    lst.address.socket_address.port_value,
                )
                for lst in res.listeners
            }
        yield out
    finally:
        for envoy in envoys:
            envoy.stop()


def _client_hello(sni: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _send(
    listener: tuple[str, int], dst: tuple[str, int], payload: bytes = b"ping", **tlvs
) -> bytes:
    """PROXY header + payload through Envoy; what came back before the close."""
    src = "10.1.2.3" if ":" not in dst[0] else "2001:db8::7"
    header = encode(ProxyHeader(src, 40000, dst[0], dst[1], clrk_tlvs(**tlvs)))
    with socket.create_connection(listener, timeout=5) as conn:
        conn.sendall(header + payload)
        data = b""
        try:
            while chunk := conn.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        return data


def _check(upstream: _Upstream, listener, dst, expect_proxied: bool, **kw) -> None:
    before = upstream.accepted
    data = _send(listener, dst, **kw)
    if expect_proxied:
        assert data == GREETING, (dst, kw)
        assert upstream.accepted == before + 1
    else:
        assert data == b"", (dst, kw)
        assert upstream.accepted == before, "a closed connection must never reach the upstream"


V4 = "v4"


@pytest.mark.parametrize(
    ("authority", "proxied"),
    [
        ("exact.example.com", True),
        ("a.wild.example.com", True),
        ("b.a.wild.example.com", False),  # one label only
        ("wild.example.com", False),
        ("other.example.com", False),
        (None, False),
    ],
)
def test_hostname_chain(upstreams, gateways, authority, proxied) -> None:
    up = upstreams[V4]
    _check(up, gateways["default/gw"]["tcp-out"], up.server_address, proxied, authority=authority)


def test_hostname_chain_checks_port(upstreams, gateways) -> None:
    other = _serve("127.0.0.1", socket.AF_INET)
    try:
        listener = gateways["default/gw"]["tcp-out"]
        _check(other, listener, other.server_address, False, authority="exact.example.com")
    finally:
        other.shutdown()
        other.server_close()


def test_cidr_chains_v4_and_v6(upstreams, gateways) -> None:
    listener = gateways["default/gw"]["tcp-out"]
    up4, up6 = upstreams["v4b"], upstreams["v6"]
    _check(up4, listener, up4.server_address, True)
    _check(up6, listener, up6.server_address[:2], True)
    # 127.0.0.1 is outside the route's CIDRs and no hostname was sent.
    _check(upstreams[V4], listener, upstreams[V4].server_address, False)


@pytest.mark.parametrize(
    ("agent", "proxied"),
    [(("data", "etl"), True), (("data", "dev"), False), (("other", "etl"), False), (None, False)],
)
def test_source_agents_by_tlvs(upstreams, gateways, agent, proxied) -> None:
    up = upstreams[V4]
    tlvs = {"agent_namespace": agent[0], "agent_name": agent[1]} if agent else {}
    listener = gateways["default/gw"]["tcp-out"]
    _check(up, listener, up.server_address, proxied, authority="agents.example.com", **tlvs)


def test_deny_route_closes_before_allow_route(upstreams, gateways) -> None:
    up = upstreams[V4]
    listener = gateways["default/gw"]["tcp-out"]
    _check(up, listener, up.server_address, False, authority="blocked.example.com")


def test_allow_all_default_chain_and_deny_chain(upstreams, gateways) -> None:
    up = upstreams[V4]
    listener = gateways["default/open"]["tcp-out"]
    _check(up, listener, up.server_address, True, authority="anything.example.net")
    _check(up, listener, up.server_address, True)
    _check(up, listener, up.server_address, False, authority="blocked.example.com")


@pytest.mark.parametrize(
    ("sni", "proxied"),
    [("tls.example.com", True), ("TLS.Example.com", True), (None, True), ("evil.example", False)],
)
def test_tls_passthrough_checks_sni(upstreams, gateways, sni, proxied) -> None:
    up = upstreams[V4]
    listener = gateways["default/gw"]["tls-out"]
    hello = _client_hello(sni)
    _check(up, listener, up.server_address, proxied, payload=hello, authority="tls.example.com")


def test_connection_without_proxy_header_is_closed(upstreams, gateways) -> None:
    before = upstreams[V4].accepted
    with socket.create_connection(gateways["default/open"]["tcp-out"], timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert conn.recv(4096) == b""
    assert upstreams[V4].accepted == before


def test_blocked_addresses_need_an_explicit_cidr_inside_them(upstreams, gateways) -> None:
    listener = gateways["default/guarded"]["tcp-out"]
    up, up2, up6 = upstreams[V4], upstreams["v4b"], upstreams["v6"]
    _check(up2, listener, up2.server_address, True)  # 127.0.0.2/32 opens it
    # Neither the default allow-all, nor 0.0.0.0/0, nor a matching hostname opens these.
    _check(up, listener, up.server_address, False)
    _check(up, listener, up.server_address, False, authority="names-never-open.example.com")
    _check(up6, listener, up6.server_address[:2], False)
    mapped = ("::ffff:127.0.0.1", up.server_address[1])
    _check(up, listener, mapped, False, authority="names-never-open.example.com")
