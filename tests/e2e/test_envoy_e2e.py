"""The whole data path end to end (issue 4, SPEC 10 topology): an agent sandbox's
unmodified clients -> the real dialer (transparent) -> the real Envoy, programmed over
ADS by the real control plane -> real servers on documentation addresses.  All three
run in gw; the dialer follows the control plane's policy stream, so one manifest file
drives both.  Envoy re-checks what the dialer decided: a hand-made PROXY header naming
what no route allows is closed by Envoy itself.
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from clrk_worker_dialer.proxy_v2 import ProxyHeader, clrk_tlvs, encode
from clrk_xds.envoy_process import EnvoyProcess, render_bootstrap
from tests.e2e.dialer_proc import DialerProcess
from tests.e2e.topology import (
    HALF_CLOSING_ECHO_CLIENT,
    Topology,
    TopologyError,
    python_module,
    sources,
    wait_until,
)

AGENT_INDEX = 60
CONTROL_SOCKET = "control-plane.socket"  # beside Envoy's listener sockets, as in `clrk up`
STATUS = "127.0.0.1:18001"
CURL = ["curl", "-sS", "--max-time", "5"]

POLICY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: egress}
spec:
  listeners:
  - {name: tcp, protocol: TCP}
  - {name: tls, protocol: TLS, port: 443}
  dns: {upstream: ["198.51.100.53:53"]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: web}
spec:
  parentRefs: [{name: egress, sectionName: tcp}]
  rules:
  - matches: [{destinationHostnames: [example.test], ports: [{port: 80}]}]
  - matches: [{destinationCIDRs: [203.0.113.0/24], ports: [{port: 7}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: api}
spec:
  parentRefs: [{name: egress, sectionName: tls}]
  rules:
  - matches: [{destinationHostnames: [api.example.test]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: agent-a}
spec: {egressRefs: [{gatewayRef: egress}]}
"""

EXTRA_ROUTE = """\
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: extra}
spec:
  parentRefs: [{name: egress, sectionName: tcp}]
  rules:
  - matches: [{destinationHostnames: [third.test], ports: [{port: 80}]}]
"""

# Runs in gw: send a PROXY v2 header (hex) and a payload to Envoy's listener and report
# what came back before the close (or a timeout).
PROXY_CLIENT = textwrap.dedent("""
    import json, socket, sys
    path, header, payload = sys.argv[1], sys.argv[2], sys.argv[3]
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect(path)
    s.sendall(bytes.fromhex(header) + payload.encode())
    got, closed = b"", False
    try:
        while chunk := s.recv(65536):
            got += chunk
        closed = True
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = True
    print(json.dumps({"closed": closed, "data": got.decode(errors="replace")}))
""")

# Runs in the agent: 50 MiB through the echo server; sha256 of what went and came back.
BULK_CLIENT = textwrap.dedent("""
    import hashlib, json, os, socket, sys, threading
    size = int(sys.argv[3])
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
    sent = hashlib.sha256()
    def send():
        rng, left = os.urandom, size
        while left:
            block = rng(min(left, 1 << 20))
            sent.update(block)
            s.sendall(block)
            left -= len(block)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    got, n = hashlib.sha256(), 0
    while chunk := s.recv(1 << 20):
        got.update(chunk)
        n += len(chunk)
    t.join()
    print(json.dumps({"sent": sent.hexdigest(), "received": got.hexdigest(), "bytes": n}))
""")


class ControlPlaneProcess:
    """`python -m clrk_xds` in gw, with its status page."""

    def __init__(self, topology: Topology, manifests, sockets: str, ads: str) -> None:
        self.topology = topology
        self.proc = topology.start_in_gw(
            python_module(
                "clrk_xds",
                "--manifests",
                str(manifests),
                "--listen",
                ads,
                "--status-listen",
                STATUS,
                "--envoy-socket-dir",
                sockets,
            )
        )
        try:
            wait_until(lambda: "server.listening" in self.log() or self.proc.poll() is not None)
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise TopologyError(f"the control plane did not start: {self.log()}")

    def log(self) -> str:
        return self.topology.processes.stderr_text(self.proc)

    def status(self) -> dict:
        out = self.topology.run_in_gw(["curl", "-sS", "--max-time", "2", f"http://{STATUS}/status"])
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def stop(self) -> None:
        self.topology.processes.stop(self.proc)


@pytest.fixture(scope="module")
def world(topology: Topology, tmp_path_factory):
    directory = tmp_path_factory.mktemp("envoy-e2e")
    manifests = directory / "policy.yaml"
    manifests.write_text(POLICY)
    agent = topology.add_agent(AGENT_INDEX)
    # Envoy's listeners are Unix sockets here, as `clrk up` lays them out (test_l7 keeps
    # loopback ports, so both kinds of next hop run end to end).  A short directory: a
    # socket path must fit in 107 bytes.
    sockets = tempfile.mkdtemp(prefix="clrk-e2e-")
    plane = envoy = dialer = None
    try:
        ads = f"unix:{sockets}/{CONTROL_SOCKET}"
        plane = ControlPlaneProcess(topology, manifests, sockets, ads)
        envoy = EnvoyProcess(
            render_bootstrap("default/egress", ads, admin_port=0),
            netns=topology.gw,
            log_level="warning",
        ).start()
        wait_until(lambda: listener_names(envoy) >= {"tcp", "tls"}, what="Envoy listeners")
        dialer = DialerProcess(
            topology,
            manifests,  # ignored: --control-plane wins; DialerProcess always passes -f
            gateway="default/egress",
            sources=sources(AGENT_INDEX, "default/agent-a"),
            extra=["--control-plane", ads, "--next-hop-socket-dir", sockets],
            name="envoy-e2e-dialer",
        )
        yield {"agent": agent, "plane": plane, "envoy": envoy, "dialer": dialer,
               "manifests": manifests, "sockets": Path(sockets)}  # fmt: skip
    finally:
        if dialer is not None:
            dialer.stop()
        if envoy is not None:
            envoy.stop()
        if plane is not None:
            plane.stop()
        topology.remove_agent(agent)
        shutil.rmtree(sockets, ignore_errors=True)


def tcp_listener(world) -> str:
    return str(world["sockets"] / "tcp.sock")


def tls_listener(world) -> str:
    return str(world["sockets"] / "tls.sock")


def listener_names(envoy: EnvoyProcess) -> set[str]:
    status, body = envoy.admin_get("/listeners?format=json")
    if status != 200:
        return set()
    return {entry["name"] for entry in json.loads(body).get("listener_statuses", [])}


def downstream_total(envoy: EnvoyProcess, listener: str, stat: str = "downstream_cx_total") -> int:
    """Connections Envoy accepted on a listener (stat_prefix = the listener's name), or
    another of its listener counters."""
    name = f"listener.{listener}.{stat}"
    _, body = envoy.admin_get(f"/stats?filter=^{name}$")
    line = body.strip()
    assert line.startswith(name + ": "), body
    return int(line.split(": ")[1])


def proxied(topology: Topology, listener: str, header: ProxyHeader, payload: str) -> dict:
    out = topology.run_in_gw(
        [
            sys.executable,
            "-c",
            PROXY_CLIENT,
            listener,
            encode(header).hex(),
            payload,
        ]
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def header(dst: tuple[str, int], authority: str | None = None) -> ProxyHeader:
    tlvs = clrk_tlvs(authority=authority, agent_namespace="default", agent_name="agent-a",
                     connection_id="00112233445566778899aabbccddeeff")  # fmt: skip
    return ProxyHeader("198.18.0.2", 40000, dst[0], dst[1], tlvs)


HTTP_GET = "GET / HTTP/1.0\r\nHost: x\r\n\r\n"


def envoy_allows_third(world, topology: Topology) -> bool:
    third = header(("192.0.2.12", 80), "third.test")
    got = proxied(topology, tcp_listener(world), third, HTTP_GET)
    return got["data"].startswith("HTTP/1.1 200")


def upstream_saw(topology: Topology, mark: int, address: str) -> list[dict]:
    return [e for e in topology.server_log.entries(mark) if address in json.dumps(e)]


def curl_code(agent, url: str) -> str:
    out = agent.run([*CURL, "-o", "/dev/null", "-w", "%{http_code}", url])
    return out.stdout if out.returncode == 0 else f"exit {out.returncode}"


@pytest.mark.parametrize(
    ("family", "server", "envoy_source"),
    [("-4", "192.0.2.10", "198.19.0.1"), ("-6", "2001:db8:1::10", "2001:db8:fffe::1")],
)
def test_an_allowed_hostname_goes_through_envoy_to_the_server(
    world, topology, family, server, envoy_source
):
    mark = topology.server_log.mark()
    before = downstream_total(world["envoy"], "tcp")
    out = world["agent"].run([*CURL, family, "-o", "/dev/null", "-w", "%{http_code}",
                              "http://example.test/"])  # fmt: skip
    assert out.stdout == "200", out.stderr
    assert downstream_total(world["envoy"], "tcp") == before + 1
    (seen,) = upstream_saw(topology, mark, server)
    assert seen["peer"][0] == envoy_source  # Envoy's own connection, from gw's uplink


def test_envoys_listeners_are_unix_sockets_only_its_user_and_group_may_use(world):
    for path in (tcp_listener(world), tls_listener(world)):
        mode = Path(path).stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660, (path, oct(mode))


def test_an_allowed_cidr_reaches_the_echo_server(world):
    out = world["agent"].run(["python3", "-c", textwrap.dedent("""
        import socket
        s = socket.create_connection(("203.0.113.5", 7), timeout=5)
        s.sendall(b"ping"); print(s.recv(4).decode())
    """)])  # fmt: skip
    assert out.stdout.strip() == "ping", out.stderr


def test_an_agent_that_half_closes_right_after_its_request_gets_the_answer(world):
    """Its FIN follows the request at once (`printf ping | nc -N`).  Envoy closes a
    connection whose FIN is there before it has read the dialer's PROXY header, so the
    dialer passes the FIN on only once Envoy has read what came before it.  Without
    that, some in ten of these were reset (Envoy counting each as a listener filter's
    remote close).  Over Envoy's Unix sockets, as `clrk up` has them."""
    stat = "downstream_listener_filter_remote_close"
    closes = downstream_total(world["envoy"], "tcp", stat)
    out = world["agent"].run(
        ["python3", "-c", HALF_CLOSING_ECHO_CLIENT, "203.0.113.5", "7", "200"], timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"failed": 0, "first": []}
    assert downstream_total(world["envoy"], "tcp", stat) == closes


def test_fifty_mib_round_trip_intact(world):
    size = 50 * 1024 * 1024
    out = world["agent"].run(
        ["python3", "-c", BULK_CLIENT, "203.0.113.5", "7", str(size)], timeout=60
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["bytes"] == size
    assert result["received"] == result["sent"]


def test_tls_passes_through_envoy_untouched(world, topology):
    ca = str(topology.certs["ca"])
    before = downstream_total(world["envoy"], "tls")
    out = world["agent"].run([*CURL, "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}",
                              "https://api.example.test/"])  # fmt: skip
    assert out.stdout == "200", out.stderr
    out = world["agent"].run(["openssl", "s_client", "-connect", "api.example.test:443",
                              "-servername", "api.example.test", "-CAfile", ca,
                              "-verify_return_error", "-brief"], input="", timeout=10)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Verification: OK" in out.stderr
    assert downstream_total(world["envoy"], "tls") == before + 2


@pytest.mark.parametrize(
    ("dst", "authority"),
    [
        (("192.0.2.12", 80), "third.test"),  # a hostname no route names
        (("192.0.2.11", 7), None),  # an address outside every CIDR
        (("192.0.2.10", 81), "example.test"),  # an allowed name on another port
    ],
    ids=["hostname", "cidr", "port"],
)
def test_envoy_closes_a_proxy_header_outside_the_routes(world, topology, dst, authority):
    mark = topology.server_log.mark()
    got = proxied(topology, tcp_listener(world), header(dst, authority), HTTP_GET)
    assert got == {"closed": True, "data": ""}
    time.sleep(0.2)  # a connection Envoy made would be logged by now
    assert upstream_saw(topology, mark, dst[0]) == []
    # The control: the same path with an allowed destination is proxied.
    allowed = header(("192.0.2.10", 80), "example.test")
    ok = proxied(topology, tcp_listener(world), allowed, HTTP_GET)
    assert ok["data"].startswith("HTTP/1.1 200"), ok


def test_envoy_closes_a_tls_listener_header_naming_another_hostname(world, topology):
    mark = topology.server_log.mark()
    got = proxied(topology, tls_listener(world), header(("203.0.113.5", 443), "evil.test"), "x")
    assert got["closed"] and got["data"] == ""
    time.sleep(0.2)
    assert upstream_saw(topology, mark, "203.0.113.5") == []


def test_a_connection_the_dialer_denies_never_reaches_envoy(world, topology):
    envoy = world["envoy"]
    before = downstream_total(envoy, "tcp"), downstream_total(envoy, "tls")
    mark = topology.server_log.mark()
    assert curl_code(world["agent"], "http://third.test/").startswith("exit")
    assert curl_code(world["agent"], "http://192.0.2.11/").startswith("exit")
    assert (downstream_total(envoy, "tcp"), downstream_total(envoy, "tls")) == before
    assert upstream_saw(topology, mark, "192.0.2.1") == []  # .11 and .12


def test_hot_reload_opens_and_closes_a_route_in_the_dialer_and_envoy(world, topology):
    agent, manifests = world["agent"], world["manifests"]
    version = world["plane"].status()["version"]
    manifests.write_text(POLICY + EXTRA_ROUTE)
    try:
        wait_until(lambda: envoy_allows_third(world, topology), what="Envoy opens third.test")
        wait_until(lambda: curl_code(agent, "http://third.test/") == "200", what="dialer opens")
        status = world["plane"].status()
        assert status["version"] != version and status["errors"] == []
        acked = status["nodes"]["default/egress"]["Listener"]["acked_version"]
        assert acked is not None
    finally:
        manifests.write_text(POLICY)
    wait_until(lambda: not envoy_allows_third(world, topology), what="Envoy closes third.test")
    wait_until(lambda: curl_code(agent, "http://third.test/") != "200", what="dialer closes")
    assert world["plane"].status()["version"] == version  # same content, same version


def test_an_invalid_edit_keeps_the_previous_policy_everywhere(world, topology):
    agent, manifests, plane = world["agent"], world["manifests"], world["plane"]
    dialer = world["dialer"]
    good = plane.status()
    applied = dialer.log().count("policy applied")
    # Two independent errors, and the route that would open third.test: nothing applies.
    bad = (POLICY + EXTRA_ROUTE).replace("[{port: 80}]", "[{port: 99999}]")
    bad = bad.replace("protocol: TCP}", "protocol: SCTP}")
    manifests.write_text(bad)
    try:
        status = wait_until(lambda: (s := plane.status())["blocked"] and s, what="rejected")
        assert status["version"] == good["version"]
        assert all(str(manifests) in line for line in status["errors"])
        assert any("spec.listeners" in line for line in status["errors"])
        assert sum("ports" in line for line in status["errors"]) >= 2
        assert "provider.rejected" in plane.log()
        # The previous policy is in force in the dialer and in Envoy.
        assert curl_code(agent, "http://example.test/") == "200"
        assert curl_code(agent, "http://third.test/").startswith("exit")
        assert not envoy_allows_third(world, topology)
        assert dialer.log().count("policy applied") == applied
        acked = status["nodes"]["default/egress"]["Listener"]
        assert (
            acked["acked_version"] == good["nodes"]["default/egress"]["Listener"]["acked_version"]
        )
    finally:
        manifests.write_text(POLICY)
    wait_until(lambda: not plane.status()["blocked"], what="recovered")
