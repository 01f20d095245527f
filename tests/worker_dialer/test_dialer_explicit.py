"""Explicit mode on loopback, no root needed: the real dialer in-process, real curl as
the agent, a real dnsmasq as the upstream resolver, and a PROXY-v2-decoding next hop.

Allowed destinations are documentation addresses nobody serves here; the next hop only
records the header it got and answers, which is all these tests need.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from urllib.parse import quote

import pytest

from clrk.records.query import iter_records, select
from clrk_worker_dialer import proxy_v2
from clrk_worker_dialer.config import DialerConfig
from clrk_worker_dialer.proxy_credentials import ensure_token
from clrk_worker_dialer.server import Dialer
from tests.e2e.topology import dnsmasq_args

pytestmark = pytest.mark.skipif(
    not (shutil.which("dnsmasq") and shutil.which("curl")), reason="needs dnsmasq and curl"
)

POLICY = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp, protocol: TCP}]
  dns: {mode: Filtered}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: web}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{destinationHostnames: [ok.test, loop.test], ports: [{port: 80}]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: bot}
spec: {egressRefs: [{gatewayRef: gw}]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: helper}
spec: {egressRefs: [{gatewayRef: gw}]}
"""


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NextHop(threading.Thread):
    """Accepts, decodes the PROXY v2 header, records it, answers a tiny HTTP 200."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.headers: list[proxy_v2.ProxyHeader] = []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while (decoded := proxy_v2.decode(data)) is None:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if decoded:
                    self.headers.append(decoded[0])
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("explicit")
    (work / "policy.yaml").write_text(POLICY)
    dns_port = free_port(socket.SOCK_DGRAM)
    zone = {"ok.test": {"A": ["192.0.2.10"]}, "loop.test": {"A": ["127.0.0.1"]},
            "other.test": {"A": ["192.0.2.11"]}}  # fmt: skip
    argv = dnsmasq_args(zone, "127.0.0.1", str(work / "dnsmasq.log"))
    argv = [a if a != "--port=53" else f"--port={dns_port}" for a in argv]
    dnsmasq = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hop = NextHop()
    hop.start()
    socks, http = free_port(), free_port()
    credentials = work / "credentials"  # bot has a token; helper has none
    token = ensure_token(credentials, "default/bot")
    config = DialerConfig(
        manifests=[str(work / "policy.yaml")],
        gateway="default/gw",
        proxy_credentials_dir=str(credentials),
        socks5=("127.0.0.1", socks),
        http_connect=("127.0.0.1", http),
        next_hop_base_port=hop.sock.getsockname()[1],
        resolvers=[("127.0.0.1", dns_port)],
        records_path=str(work / "records.jsonl"),
        watch=False,
        raise_somaxconn=False,  # this dialer runs in the host's own namespace
    )
    loop = asyncio.new_event_loop()
    dialer = Dialer(config)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(dialer.start(), loop).result(10)
    time.sleep(0.3)  # dnsmasq up
    try:
        yield {"socks": socks, "http": http, "hop": hop, "records": work / "records.jsonl",
               "dialer": dialer, "token": token, "credentials": credentials}  # fmt: skip
    finally:
        asyncio.run_coroutine_threadsafe(dialer.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        hop.sock.close()
        dnsmasq.terminate()
        dnsmasq.wait(5)


def curl(proxy: list[str], url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "5", *proxy, url], capture_output=True, text=True
    )


def proxies(stack, user: str = "bot", password: str | None = None) -> list[list[str]]:
    """curl's proxy options for both protocols; bot's token by default."""
    if password is None:
        password = stack["token"] if user == "bot" else "x"
    who = f"{quote(user, safe='')}:{password}"
    return [
        ["--proxy", f"socks5h://{who}@127.0.0.1:{stack['socks']}"],
        ["--proxytunnel", "--proxy", f"http://{who}@127.0.0.1:{stack['http']}"],
    ]


def denials(stack, **where: str) -> list[dict]:
    stack["dialer"].writer.flush()
    path = stack["records"]
    found = list(select(iter_records(str(path)), where)) if path.exists() else []
    return [r for r in found if r["signal"] == "span"]


def test_an_allowed_name_is_resolved_by_the_dialer_and_dialed_as_the_checked_ip(stack):
    for proxy in proxies(stack):
        before = len(stack["hop"].headers)
        out = curl(proxy, "http://ok.test/")
        assert out.stdout == "ok", out.stderr
        header = stack["hop"].headers[before]
        assert (header.destination_ip, header.destination_port) == ("192.0.2.10", 80)
        assert header.authority == "ok.test" and header.agent_name == "bot"


def test_a_name_resolving_to_loopback_is_blocked(stack):
    for proxy in proxies(stack):
        assert curl(proxy, "http://loop.test/").returncode != 0
    found = denials(stack, **{"clrk.dst.name": "loop.test"})
    assert {r["attributes"]["clrk.egress.deny_reason"] for r in found} == {"blocked_address"}
    assert len(found) == 2


def test_an_unlisted_name_is_never_resolved_under_filtered_dns(stack):
    for proxy in proxies(stack):
        assert curl(proxy, "http://other.test/").returncode != 0
    stack["dialer"].writer.flush()
    dns = [r for r in iter_records(str(stack["records"])) if r["name"] == "egress.dns.denied"]
    assert len([r for r in dns if r["signal"] == "span"]) >= 2


def test_an_unknown_username_is_refused_unknown_agent(stack):
    for proxy in proxies(stack, user="stranger"):
        out = curl(proxy, "http://ok.test/")
        assert out.returncode != 0
    found = denials(stack, **{"clrk.egress.deny_reason": "unknown_agent"})
    assert len(found) >= 2


def test_the_http_proxy_says_why_it_refused(stack):
    out = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "5", "-p", "--proxy",
         f"http://bot:{stack['token']}@127.0.0.1:{stack['http']}", "http://loop.test/"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "403" in out.stdout and "x-clrk-deny-reason: blocked_address" in out.stdout


def _refused_as_unknown(stack, proxies_: list[list[str]]) -> None:
    before = len(stack["hop"].headers)
    for proxy in proxies_:
        mark = len(denials(stack, **{"clrk.egress.deny_reason": "unknown_agent"}))
        assert curl(proxy, "http://ok.test/").returncode != 0
        assert len(denials(stack, **{"clrk.egress.deny_reason": "unknown_agent"})) == mark + 1
    assert len(stack["hop"].headers) == before  # nothing reached the next hop


def test_a_username_with_a_credential_is_refused_without_its_token(stack):
    _refused_as_unknown(stack, proxies(stack, "bot", password="not-the-token"))
    _refused_as_unknown(stack, proxies(stack, "default/bot", password=stack["token"][:-1]))


def test_a_declared_agent_without_a_credential_cannot_be_named(stack):
    """No default agent is configured: a username alone selects nobody."""
    _refused_as_unknown(stack, proxies(stack, "helper", password="anything"))
    _refused_as_unknown(stack, proxies(stack, "helper", password=stack["token"]))


def test_a_rotated_token_counts_from_the_next_connection(stack):
    path = stack["credentials"] / "default_bot"
    old = stack["token"]
    path.write_text("rotated-token\n")
    try:
        assert curl(proxies(stack, "bot", "rotated-token")[0], "http://ok.test/").stdout == "ok"
        _refused_as_unknown(stack, proxies(stack, "bot", old))
    finally:
        path.write_text(old + "\n")
