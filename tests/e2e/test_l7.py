"""L7 egress end to end (issue 5, SPEC 7/8, SPEC 10 topology): an agent sandbox's curl ->
the real dialer -> the real Envoy (TLS Terminate, HTTP and TCP listeners, translated by
`clrk_xds.translate`, served from a static bootstrap) -> real HTTPS/HTTP/echo servers on
documentation addresses, with the real `python -m clrk_extproc` answering ext_proc and
receiving the TCP access logs.  The leaf certificates come from a gateway CA made here
(the control plane's CA is tested on its own); the upstreams' certificates come from a
separate test CA that the gateway trusts through `upstreamTLS.caBundle`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import textwrap
import time
import uuid

import pytest

from clrk.api import load_text
from clrk.nexthops import envoy_listener_addresses
from clrk.policy.loaded import compile_loaded
from clrk.records.query import iter_records, select
from clrk_xds.envoy_process import EnvoyProcess, static_bootstrap_with_secrets
from clrk_xds.translate import to_plain, translate
from tests.e2e.dialer_proc import DialerProcess
from tests.e2e.topology import (
    DEFAULT_ZONE,
    HALF_CLOSING_ECHO_CLIENT,
    JsonLog,
    Topology,
    TopologyError,
    make_certificates,
    python_module,
    run,
    wait_until,
)
from tests.extproc.gateway_ca import GATEWAY_CA_NAME, GatewayCA

AGENT_INDEX = 70
EXTPROC = "127.0.0.1:18002"
API, PASTE, BAD = "203.0.113.80", "203.0.113.81", "203.0.113.82"
ZONE = {
    **DEFAULT_ZONE,
    "api.anthropic.com": {"A": [API], "ttl": 60},
    "bulk.test": {"A": [API], "ttl": 60},
    "pastebin.com": {"A": [PASTE], "ttl": 60},
    "legal.test": {"A": [PASTE], "ttl": 60},
    "untrusted.test": {"A": [BAD], "ttl": 60},
}
BODY = "hello from the internet\n"  # what tests.e2e.servers answers
MESSAGE = "pastebin is blocked for agents"
BULK = 10 * 1024 * 1024

POLICY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {{name: egress}}
spec:
  defaultPolicy: allow-all
  listeners:
  - {{name: tcp, protocol: TCP}}
  - {{name: tls-term, protocol: TLS, port: 443, tls: {{mode: Terminate}}}}
  - {{name: web, protocol: HTTP, port: 80}}
  dns: {{upstream: ["198.51.100.53:53"]}}
  upstreamTLS: {{caBundle: {ca}}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: llm}}
spec:
  parentRefs: [{{name: egress, sectionName: tls-term}}]
  rules:
  - matches: [{{destinationHostnames: [api.anthropic.com, untrusted.test]}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: bulk}}
spec:
  parentRefs: [{{name: egress, sectionName: tcp}}]
  rules:
  - matches: [{{destinationHostnames: [bulk.test], ports: [{{port: 7}}]}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: paste}}
spec:
  parentRefs: [{{name: egress, sectionName: tls-term}}, {{name: egress, sectionName: web}}]
  rules:
  - matches: [{{destinationHostnames: [pastebin.com]}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: legal}}
spec:
  parentRefs: [{{name: egress, sectionName: web}}]
  rules:
  - matches: [{{destinationHostnames: [legal.test]}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {{name: no-paste}}
spec:
  targetRef: {{group: clrk.apoxy.dev, kind: EgressL4Route, name: paste}}
  denyResponse: {{statusCode: 403, message: "{message}"}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {{name: unavailable}}
spec:
  targetRef: {{group: clrk.apoxy.dev, kind: EgressL4Route, name: legal}}
  denyResponse: {{statusCode: 451}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {{name: agent-a}}
spec: {{egressRefs: [{{gatewayRef: egress}}]}}
"""

# Runs in the agent: BULK bytes to the echo server and back; the counts seen.
BULK_CLIENT = textwrap.dedent("""
    import json, os, socket, sys, threading
    size = int(sys.argv[3])
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
    def send():
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    n = 0
    while chunk := s.recv(1 << 20):
        n += len(chunk)
    t.join()
    s.close()
    print(json.dumps({"received": n}))
""")


# --- Envoy's configuration ------------------------------------------------------------------


def envoy_config(manifest: str, ca: GatewayCA) -> dict:
    loaded = load_text(manifest, "policy.yaml")
    assert not [f for f in loaded.findings if f.is_error], [f.line() for f in loaded.findings]
    res = translate(compile_loaded(loaded).compiled, leaf_secret=ca.leaf_secret)
    return static_bootstrap_with_secrets(to_plain(res["default/egress"]))


# --- processes --------------------------------------------------------------------------------


class ExtProc:
    """`python -m clrk_extproc` in gw."""

    def __init__(self, topology: Topology, records) -> None:
        self.topology = topology
        self.records_path = records
        self.proc = topology.start_in_gw(
            python_module("clrk_extproc", "--listen", EXTPROC, "--records", str(records))
        )
        try:
            wait_until(
                lambda: "extproc.listening" in self.log() or self.proc.poll() is not None,
                what="clrk_extproc listening",
            )
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise TopologyError(f"clrk_extproc did not start: {self.log()}")

    def log(self) -> str:
        return self.topology.processes.stderr_text(self.proc)

    def stop(self) -> None:
        self.topology.processes.stop(self.proc)


def records(path, name: str, where: dict, count: int = 1, wait: float = 5.0) -> list[dict]:
    """Records (spans and logs) of `name` with these attributes, once `count` of each are
    there (the writer batches), plus a moment so that an extra one would show."""

    def read() -> list[dict]:
        if not path.exists():
            return []
        return list(select(iter_records(str(path)), where, name=name))

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = read()
        spans = [r for r in found if r["signal"] == "span"]
        logs = [r for r in found if r["signal"] == "log"]
        if len(spans) >= count and len(logs) >= count:
            time.sleep(0.3)
            return read()
        time.sleep(0.05)
    return read()


@pytest.fixture(scope="module")
def l7(topology: Topology, tmp_path_factory):
    directory = tmp_path_factory.mktemp("l7")
    upstream = make_certificates(
        directory, ["api.anthropic.com", "pastebin.com", "legal.test"], [API, PASTE]
    )
    (directory / "bad").mkdir()
    untrusted = make_certificates(directory / "bad", ["untrusted.test"], [BAD])
    ca = GatewayCA()
    ca_path = directory / "gateway-ca.pem"
    ca_path.write_bytes(ca.pem())
    manifest = POLICY.format(ca=upstream["ca"], message=MESSAGE)
    manifests = directory / "policy.yaml"
    manifests.write_text(manifest)
    for ip in (API, PASTE, BAD):
        run(topology.inet_argv(["ip", "addr", "add", f"{ip}/32", "dev", "lo"]))
    topology.restart_dns(ZONE)
    agent = topology.add_agent(AGENT_INDEX)
    extproc = envoy = dialer = good = bad = None
    try:
        server_log = JsonLog(directory / "l7-servers.jsonl")
        args = ["--log", str(server_log.path), "--cert", str(upstream["cert"]),
                "--key", str(upstream["key"]), "--echo", f"{API}:7"]  # fmt: skip
        for ip in (API, PASTE):
            args += ["--tls", f"{ip}:443", "--http", f"{ip}:80"]
        good = topology.processes.start(
            topology.inet_argv(python_module("tests.e2e.servers", *args)), ready="ready"
        )
        bad = topology.processes.start(
            topology.inet_argv(python_module(
                "tests.e2e.servers", "--log", str(server_log.path), "--tls", f"{BAD}:443",
                "--cert", str(untrusted["cert"]), "--key", str(untrusted["key"]),
            )),
            ready="ready",
        )  # fmt: skip
        extproc = ExtProc(topology, directory / "extproc-records.jsonl")
        envoy = EnvoyProcess(
            envoy_config(manifest, ca),
            netns=topology.gw,
            log_level=os.environ.get("L7_ENVOY_LOG", "warning"),
        ).start()
        dialer = DialerProcess(
            topology, manifests, gateway="default/egress", name="l7-dialer",
            sources={agent.address_v4: "default/agent-a", agent.address_v6: "default/agent-a"},
        )  # fmt: skip
        yield {"agent": agent, "extproc": extproc, "envoy": envoy, "dialer": dialer,
               "server_log": server_log, "ca": ca_path, "directory": directory,
               "records": directory / "extproc-records.jsonl"}  # fmt: skip
    finally:
        if dialer is not None:
            dialer.stop()
        if envoy is not None:
            envoy.stop()
        if extproc is not None:
            extproc.stop()
        for proc in (good, bad):
            if proc is not None:
                topology.processes.stop(proc)
        topology.remove_agent(agent)
        topology.restart_dns(DEFAULT_ZONE)
        for ip in (API, PASTE, BAD):
            run(topology.inet_argv(["ip", "addr", "del", f"{ip}/32", "dev", "lo"]), check=False)


def curl(l7, *args: str, timeout: float = 10.0) -> tuple[int, dict[str, str], str, str]:
    """(status, response headers, body, curl's stderr) of one request from the agent."""
    marker = "\n--clrk-status:"
    argv = ["curl", "-sS", "-v", "--max-time", "5", "--cacert", str(l7["ca"]), "-D", "-",
            "-w", marker + "%{http_code}", *args]  # fmt: skip
    out = l7["agent"].run(argv, timeout=timeout)
    text, _, status = out.stdout.rpartition(marker)
    head, _, body = text.partition("\n\n")  # text mode: CRLF arrives as LF
    headers = {}
    for line in head.split("\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status or 0), headers, body, out.stderr


def connections_to(l7, ip: str, since: int) -> list[dict]:
    return [e for e in l7["server_log"].entries(since) if ip in json.dumps(e.get("local", ""))]


# --- acceptance 1: TLS Terminate with the gateway's certificate ---------------------------------


def test_terminate_reaches_https_upstream_with_gateway_certificate(l7) -> None:
    path = f"/v1/messages?id={uuid.uuid4().hex}"
    status, _headers, body, verbose = curl(l7, f"https://api.anthropic.com{path}")
    assert (status, body) == (200, BODY), (body, verbose)
    # curl trusted only the gateway CA, and the certificate it saw names the host.
    assert f"issuer: CN={GATEWAY_CA_NAME}" in verbose, verbose
    assert "subject: CN=api.anthropic.com" in verbose, verbose
    # acceptance 5: one egress.http record for the request, with its facts
    found = records(l7["records"], "egress.http", {"url.path": path})
    assert len([r for r in found if r["signal"] == "span"]) == 1, found
    attrs = found[0]["attributes"]
    assert attrs["http.request.method"] == "GET"
    assert attrs["clrk.http.authority"] == "api.anthropic.com"
    assert attrs["http.response.status_code"] == 200
    assert attrs["clrk.egress.route"] == "default/llm"
    assert attrs["agent.name"] == "agent-a" and attrs["agent.namespace"] == "default"
    assert attrs["clrk.dst.name"] == "api.anthropic.com"
    assert attrs.get("clrk.connection.id")


def test_agent_headers_named_like_internal_ones_never_reach_the_upstream(l7) -> None:
    """The TLV headers are Envoy's to set: an agent's x-clrk-agent-name is replaced, and
    none of them leaves the gateway (the echo shows what the upstream got)."""
    path = f"/spoof?id={uuid.uuid4().hex}"
    status, _h, _body, verbose = curl(
        l7, "-H", "x-clrk-agent-name: someone-else", f"https://api.anthropic.com{path}"
    )
    assert status == 200, verbose
    (span,) = [
        r
        for r in records(l7["records"], "egress.http", {"url.path": path})
        if r["signal"] == "span"
    ]
    assert span["attributes"]["agent.name"] == "agent-a"


# --- acceptance 2: deny policies answer over HTTP ------------------------------------------------


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_deny_policy_answers_with_its_status_and_message(l7, scheme: str) -> None:
    since = l7["server_log"].mark()
    path = f"/{scheme}-{uuid.uuid4().hex}"
    status, headers, body, verbose = curl(l7, f"{scheme}://pastebin.com{path}")
    assert status == 403, verbose
    assert body == MESSAGE
    assert headers.get("x-clrk-deny-reason") == "deny_policy"
    assert headers.get("content-type", "").startswith("text/plain")
    found = records(l7["records"], "egress.http", {"url.path": path})
    spans = [r for r in found if r["signal"] == "span"]
    assert len(spans) == 1, found
    attrs = spans[0]["attributes"]
    assert attrs["clrk.egress.deny_reason"] == "deny_policy"
    assert attrs["clrk.egress.deny_policy"] == "default/no-paste"
    assert attrs["http.response.status_code"] == 403
    assert attrs["agent.name"] == "agent-a"
    assert connections_to(l7, PASTE, since) == []


def test_custom_status_and_default_body(l7) -> None:
    since = l7["server_log"].mark()
    status, headers, body, verbose = curl(l7, "http://legal.test/")
    assert status == 451, verbose
    assert body == "blocked by egress deny policy default/unavailable\n"
    assert headers.get("x-clrk-deny-reason") == "deny_policy"
    assert connections_to(l7, PASTE, since) == []


# --- acceptance 4: an upstream certificate that does not verify ---------------------------------


def test_unverifiable_upstream_is_refused(l7) -> None:
    status, _h, body, verbose = curl(l7, "https://untrusted.test/")
    assert 502 <= status <= 504, (status, body, verbose)
    assert BODY not in body


# --- acceptance 5: egress.tcp for an L4 connection -----------------------------------------------


def test_tcp_record_counts_bytes_each_way(l7) -> None:
    out = l7["agent"].run(["python3", "-c", BULK_CLIENT, "bulk.test", "7", str(BULK)], timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["received"] == BULK
    found = records(
        l7["records"],
        "egress.tcp",
        {"clrk.dst.name": "bulk.test", "clrk.egress.bytes_up": str(BULK)},
    )
    spans = [r for r in found if r["signal"] == "span"]
    assert len(spans) == 1, found
    attrs = spans[0]["attributes"]
    assert attrs["clrk.egress.bytes_down"] == BULK
    assert attrs["clrk.egress.route"] == "default/bulk"
    assert attrs["clrk.egress.listener"] == "tcp"
    assert attrs["agent.name"] == "agent-a" and attrs["agent.namespace"] == "default"
    assert attrs["network.peer.address"] == API and attrs["network.peer.port"] == 7
    assert attrs["clrk.egress.gateway"] == "default/egress"


def test_an_agent_that_half_closes_right_after_its_request_gets_the_answer(l7) -> None:
    """test_envoy_e2e's over Envoy's Unix sockets, here over its loopback ports: the
    dialer holds the agent's FIN until Envoy has read the PROXY header before it."""
    out = l7["agent"].run(
        ["python3", "-c", HALF_CLOSING_ECHO_CLIENT, "bulk.test", "7", "200"], timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"failed": 0, "first": []}


# Runs in gw: one connection straight to Envoy's `tcp` listener behind a PROXY v2 header
# (the dialer's TLVs) and "ping", half-closed once Envoy has read them, as the dialer
# does (Envoy closes a connection whose FIN is there before it read the header); prints
# what came back before Envoy or the echo closed it.
PROXIED_CLIENT = textwrap.dedent("""
    import socket, sys, time
    from clrk_worker_dialer.peer_unread import unread
    from clrk_worker_dialer.proxy_v2 import ProxyHeader, clrk_tlvs, encode
    authority, dst, port, cid, envoy_port = sys.argv[1:6]
    tlvs = clrk_tlvs(authority=authority, agent_namespace="default", agent_name="agent-a",
                     connection_id=cid)
    s = socket.create_connection(("127.0.0.1", int(envoy_port)), timeout=5)
    data = b""
    try:  # Envoy may have closed it already
        s.sendall(encode(ProxyHeader("10.0.0.9", 40000, dst, int(port), tlvs)) + b"ping")
        deadline = time.monotonic() + 5
        while unread(s) and time.monotonic() < deadline:
            time.sleep(0.001)
        s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    print(data.decode() or "-")
""")


def test_a_connection_envoy_closes_makes_no_tcp_record(l7, topology: Topology) -> None:
    """The `tcp` listener logs every connection it ends; only one a proxying chain took
    (a route's or the default allow-all) is a record: not one its deny route's chain or
    its blocked-address guard closed."""
    tcp = envoy_listener_addresses([("tcp", "TCP"), ("tls-term", "TLS"), ("web", "HTTP")])["tcp"]
    ids = {}
    for case, authority, dst, echoed in [
        ("deny", "pastebin.com", PASTE, "-"),
        ("blocked", "bulk.test", "127.0.0.1", "-"),
        ("unrouted", "unrouted.test", API, "ping"),  # no route names it: allow-all
        ("allowed", "bulk.test", API, "ping"),  # last: its record shows the others are read
    ]:
        ids[case] = uuid.uuid4().hex
        argv = [sys.executable, "-c", PROXIED_CLIENT, authority, dst, "7", ids[case], str(tcp[1])]
        out = topology.run_in_gw(argv)
        assert (out.returncode, out.stdout.strip()) == (0, echoed), (case, out.stderr)
    found = records(l7["records"], "egress.tcp", {"clrk.connection.id": ids["allowed"]})
    assert len([r for r in found if r["signal"] == "span"]) == 1, found
    assert found[0]["attributes"]["clrk.egress.bytes_up"] == 4
    unrouted = records(l7["records"], "egress.tcp", {"clrk.connection.id": ids["unrouted"]})
    assert len([r for r in unrouted if r["signal"] == "span"]) == 1, unrouted
    for case in ("deny", "blocked"):
        assert records(l7["records"], "egress.tcp", {"clrk.connection.id": ids[case]}, wait=0) == []


# --- a deny the dialer forwards to an allow chain (Envoy's policy lags) ------------------------

# Runs in gw: a PROXY v2 header (the dialer's TLVs) and one HTTP request straight to
# Envoy's `web` listener, whose allow-all chain runs no ext_proc on untagged requests.
TAGGED_CLIENT = textwrap.dedent("""
    import socket, sys
    from clrk_worker_dialer.proxy_v2 import ProxyHeader, clrk_tlvs, encode
    deny, path = sys.argv[1] or None, sys.argv[2]
    tlvs = clrk_tlvs(authority="api.anthropic.com", agent_namespace="default",
                     agent_name="agent-a", route=None, deny_policy=deny, connection_id="c-t")
    s = socket.create_connection(("127.0.0.1", int(sys.argv[4])), timeout=5)
    s.sendall(encode(ProxyHeader("10.0.0.9", 40000, sys.argv[3], 80, tlvs)))
    head = f"GET {path} HTTP/1.1\\r\\nHost: api.anthropic.com\\r\\nConnection: close\\r\\n"
    s.sendall(head.encode() + b"\\r\\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    print(data.split(b" ")[1].decode())
""")


@pytest.mark.parametrize("deny", ["default/no-paste", ""])
def test_allow_chain_answers_a_request_the_dialer_tagged_as_denied(
    l7, topology: Topology, deny: str
) -> None:
    since = l7["server_log"].mark()
    path = f"/tagged-{uuid.uuid4().hex}"
    web = envoy_listener_addresses([("tcp", "TCP"), ("tls-term", "TLS"), ("web", "HTTP")])["web"]
    argv = [sys.executable, "-c", TAGGED_CLIENT, deny, path, API, str(web[1])]
    out = topology.run_in_gw(argv)
    assert out.returncode == 0, out.stderr
    found = records(l7["records"], "egress.http", {"url.path": path})
    (span,) = [r for r in found if r["signal"] == "span"]
    attrs = span["attributes"]
    if deny:
        assert out.stdout.strip() == "403"
        assert attrs["clrk.egress.deny_policy"] == deny
        assert connections_to(l7, API, since) == []
    else:
        assert out.stdout.strip() == "200"
        assert attrs["http.response.status_code"] == 200
        assert attrs["clrk.egress.listener"] == "web"
        assert attrs["agent.name"] == "agent-a"
        assert attrs["clrk.dst.name"] == "api.anthropic.com"


# --- acceptance 3: ext_proc down = deny chains fail closed, allow chains keep serving ---------
# (last: it replaces the ext_proc process)


def test_extproc_down_fails_deny_chains_closed_allow_chains_serve(l7, topology: Topology) -> None:
    """Allow chains take their records from the access log, so they serve without
    clrk_extproc (those records are lost); a deny chain cannot answer without it."""
    l7["extproc"].stop()
    since = l7["server_log"].mark()
    try:
        status, headers, _b, _v = curl(l7, "http://pastebin.com/closed")
        assert status >= 500 and "x-clrk-deny-reason" not in headers
        assert connections_to(l7, PASTE, since) == []
        status, _h, body, verbose = curl(l7, "https://api.anthropic.com/served")
        assert (status, body) == (200, BODY), (status, body, verbose)
    finally:
        restarted = ExtProc(topology, l7["records"])
    try:
        # pastebin.com and legal.test share an address: either deny policy may answer.
        status, headers, _b, verbose = wait_until(
            lambda: (r := curl(l7, "http://pastebin.com/again"))[0] in (403, 451) and r,
            what="a deny answer again",
        )
        assert headers.get("x-clrk-deny-reason") == "deny_policy", verbose
    finally:
        restarted.stop()


def test_addresses_are_documentation_ranges() -> None:
    for ip in (API, PASTE, BAD):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("203.0.113.0/24")
