"""SNI as hostname evidence, end to end (issue 11 item 2): openssl, nc and dig in agent
sandboxes, dnsmasq as the gateway's resolver, real TLS and echo servers, the real dialer
and a PROXY-v2-decoding next hop standing in for Envoy.

The reproduced attack: a ClientHello naming an allowed host, sent straight to an
address of the agent's choosing without any DNS lookup.  An SNI counts only on TLS
listeners' routes, and there only once the dialer's own lookup of the name answers the
destination address.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from clrk.nexthops import DEFAULT_BASE_PORT
from tests.e2e.dialer_proc import DialerProcess
from tests.e2e.topology import DEFAULT_ZONE, JsonLog, Topology, python_module, run, sources

ATTACKER, ATTACKER_PORTS = "203.0.113.66", (5432, 6379, 443)
# Agents: one attacker, one that confirms, one bystander, one whose resolver hangs.
EVE, CAROL, BOB, DAVE = 70, 71, 72, 73
CONFIRM_BOUND = 1.5  # seconds: --sni-confirm-timeout
ZONE = {**DEFAULT_ZONE, "pg.prod.internal": {"A": ["192.0.2.12"], "ttl": 60}}

POLICY = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: egress}
spec:
  listeners:
  - {name: tcp-out, protocol: TCP}
  - {name: tls-out, protocol: TLS, tls: {mode: Terminate}}
  dns: {upstream: ["198.51.100.53:53"]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: app-postgres}
spec:
  parentRefs: [{name: egress, sectionName: tcp-out}]
  rules: [{matches: [{destinationHostnames: [pg.prod.internal], ports: [{port: 5432}]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: cluster}
spec:
  parentRefs: [{name: egress, sectionName: tcp-out}]
  rules:
  - matches: [{destinationHostnames: ["*.svc.cluster.local"]}]
  - matches: [{destinationCIDRs: [203.0.113.5/32], ports: [{port: 7}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: api}
spec:
  parentRefs: [{name: egress, sectionName: tls-out}]
  rules: [{matches: [{destinationHostnames: [api.example.test, www.example.test]}]}]
""" + "".join(
    f"""---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {{name: {name}}}
spec: {{egressRefs: [{{gatewayRef: egress}}]}}
"""
    for name in ("eve", "carol", "bob", "dave")
)

DENIED = "egress.dial.denied"


@pytest.fixture(scope="module")
def world(topology: Topology):
    topology.restart_dns(ZONE)
    manifests = topology.workdir / "sni-policy.yaml"
    manifests.write_text(POLICY)
    agents = {i: topology.add_agent(i) for i in (EVE, CAROL, BOB, DAVE)}
    run(topology.inet_argv(["ip", "addr", "add", f"{ATTACKER}/32", "dev", "lo"]))
    attacker_log = JsonLog(topology.workdir / "attacker.jsonl")
    listens = [arg for port in ATTACKER_PORTS for arg in ("--echo", f"{ATTACKER}:{port}")]
    attacker = topology.processes.start(
        topology.inet_argv(python_module("tests.e2e.servers", "--log", str(attacker_log.path),
                                         *listens)),
        ready="ready",
    )  # fmt: skip
    hop, hop_log = topology.start_next_hop(
        [f"127.0.0.1:{DEFAULT_BASE_PORT}", f"127.0.0.1:{DEFAULT_BASE_PORT + 1}"]
    )
    names = {EVE: "eve", CAROL: "carol", BOB: "bob", DAVE: "dave"}
    dialer = None
    try:
        dialer = DialerProcess(
            topology,
            manifests,
            gateway="default/egress",
            sources={k: v for i, n in names.items() for k, v in sources(i, n).items()},
            extra=["--sni-confirm-timeout", str(CONFIRM_BOUND)],
            name="sni-dialer",
        )
        yield {"agents": agents, "hop_log": hop_log, "attacker_log": attacker_log,
               "dialer": dialer}  # fmt: skip
    finally:
        if dialer is not None:
            dialer.stop()
        topology.processes.stop(hop)
        topology.processes.stop(attacker)
        run(topology.inet_argv(["ip", "addr", "del", f"{ATTACKER}/32", "dev", "lo"]))
        for agent in agents.values():
            topology.remove_agent(agent)
        topology.restart_dns(DEFAULT_ZONE)


@pytest.fixture(autouse=True)
def _test_start(world):
    world["t0"] = time.time_ns()  # records of earlier tests are not this test's


def denials(world, agent: str, address: str) -> list[dict]:
    """The deny records (span and log once each per denial) of this test for `agent`."""
    found = world["dialer"].records(
        DENIED, {"agent.name": agent, "network.peer.address": address}, since_ns=world["t0"]
    )
    spans = [r["attributes"] for r in found if r["signal"] == "span"]
    assert len(spans) == len([r for r in found if r["signal"] == "log"]), found
    return spans


def s_client(address: str, port: int, sni: str, *more: str) -> list[str]:
    return ["openssl", "s_client", "-connect", f"{address}:{port}", "-servername", sni,
            "-brief", *more]  # fmt: skip


def test_an_sni_naming_a_tcp_route_opens_nothing_at_an_address_the_agent_chose(world):
    """The reproduced attack: refused, one record, and the attacker's listener gets no
    connection, let alone bytes."""
    eve = world["agents"][EVE]
    hops, attacker = world["hop_log"].mark(), world["attacker_log"].mark()
    out = eve.run(s_client(ATTACKER, 5432, "pg.prod.internal"), input="", timeout=10)
    assert out.returncode != 0, out.stdout
    assert world["hop_log"].entries(hops) == []
    assert world["attacker_log"].entries(attacker) == []
    (attrs,) = denials(world, "eve", ATTACKER)
    assert attrs["clrk.egress.deny_reason"] == "policy"
    assert attrs["clrk.dst.name"] == "pg.prod.internal"
    assert str(attrs["network.peer.port"]) == "5432"


def test_a_wildcard_tcp_route_without_ports_opens_no_address_or_port_by_sni(world):
    eve = world["agents"][EVE]
    hops, attacker = world["hop_log"].mark(), world["attacker_log"].mark()
    for port in (6379, 443):
        out = eve.run(s_client(ATTACKER, port, "redis.svc.cluster.local"), input="", timeout=10)
        assert out.returncode != 0, out.stdout
    assert world["hop_log"].entries(hops) == []
    assert world["attacker_log"].entries(attacker) == []
    found = denials(world, "eve", ATTACKER)
    assert sorted(str(a["network.peer.port"]) for a in found) == ["443", "6379"]
    assert {a["clrk.egress.deny_reason"] for a in found} == {"policy"}


def test_an_sni_alone_that_resolves_to_the_destination_is_confirmed_allowed_and_bound(
    world, topology
):
    carol, bob = world["agents"][CAROL], world["agents"][BOB]
    plain = ["nc", "-w", "2", "203.0.113.5", "443"]
    hops, queries = world["hop_log"].mark(), topology.dns_log.mark()
    # Without a binding, a plain connection to the address has no name at all.
    assert carol.run(plain, input="x\n").stdout == ""
    assert world["hop_log"].entries(hops) == []
    ca = str(topology.certs["ca"])
    out = carol.run(s_client("203.0.113.5", 443, "api.example.test", "-CAfile", ca,
                             "-verify_return_error"), input="", timeout=10)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Verification: OK" in out.stderr
    (hop,) = world["hop_log"].entries(hops)
    assert hop["dst"] == ["203.0.113.5", 443]
    assert (hop["tlvs"]["0x02"], hop["tlvs"]["0xe3"]) == ("api.example.test", "default/api")
    assert any(q[1] == "api.example.test" for q in topology.dns_log.queries(queries))
    # The answer is bound for carol now, as if she had resolved it: a plain connection
    # to the address carries the name.  Bob's bindings are his own.
    hops = world["hop_log"].mark()
    carol.run(plain, input="x\n")
    (hop,) = world["hop_log"].entries(hops)
    assert hop["tlvs"]["0x02"] == "api.example.test"
    bob.run(plain, input="x\n")
    assert len(world["hop_log"].entries(hops)) == 1
    (attrs,) = denials(world, "bob", "203.0.113.5")
    assert attrs["clrk.egress.deny_reason"] == "policy"


def test_the_confirmation_follows_a_cname_chain(world, topology):
    carol = world["agents"][CAROL]
    hops = world["hop_log"].mark()
    out = carol.run(s_client("192.0.2.10", 443, "www.example.test"), input="", timeout=10)
    assert out.returncode == 0, out.stderr
    (hop,) = world["hop_log"].entries(hops)
    assert (hop["dst"], hop["tlvs"]["0x02"]) == (["192.0.2.10", 443], "www.example.test")


def test_an_sni_alone_that_resolves_elsewhere_is_refused_sni_unverified(world, topology):
    eve = world["agents"][EVE]
    hops, servers = world["hop_log"].mark(), topology.server_log.mark()
    out = eve.run(s_client("192.0.2.11", 443, "api.example.test"), input="", timeout=10)
    assert out.returncode != 0, out.stdout
    assert world["hop_log"].entries(hops) == []
    assert [e for e in topology.server_log.entries(servers) if e["local"][0] == "192.0.2.11"] == []
    (attrs,) = denials(world, "eve", "192.0.2.11")
    assert attrs["clrk.egress.deny_reason"] == "sni_unverified"
    assert attrs["clrk.dst.name"] == "api.example.test"
    assert attrs["clrk.egress.route"] == "default/api"


# One round trip to the CIDR-allowed echo server, done as soon as the echo is back.
ECHO_ONCE = (
    "import socket; s = socket.create_connection(('203.0.113.5', 7), timeout=5);"
    " s.sendall(b'hi'); print(s.recv(2).decode(), end='')"
)


def _resolver_silent(topology: Topology, on: bool) -> None:
    """Drop every DNS packet at the resolver's host: queries go unanswered."""
    for proto in ("udp", "tcp"):
        rule = ["INPUT", "-p", proto, "--dport", "53", "-j", "DROP"]
        for tool in ("iptables", "ip6tables"):
            run(topology.inet_argv([tool, "-I" if on else "-D", *rule]))


def test_a_resolver_that_does_not_answer_is_sni_unverified_after_the_bound_and_blocks_no_one(
    world, topology
):
    dave, bob = world["agents"][DAVE], world["agents"][BOB]
    hops = world["hop_log"].mark()
    _resolver_silent(topology, True)
    try:
        started = time.monotonic()
        claim = subprocess.Popen(
            dave.argv(s_client("203.0.113.5", 443, "api.example.test")),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(0.3)  # the ClientHello is in, the lookup hangs
            echo = bob.run(["python3", "-c", ECHO_ONCE])
            still_waiting = claim.poll() is None
            code = claim.wait(timeout=10)
        finally:
            if claim.poll() is None:
                claim.kill()
                claim.wait()
        elapsed = time.monotonic() - started
    finally:
        _resolver_silent(topology, False)
    assert echo.stdout == "hi", echo.stderr  # another agent served meanwhile
    assert still_waiting and code != 0
    assert elapsed >= CONFIRM_BOUND  # refused when the bound ran out, not before
    assert [h for h in world["hop_log"].entries(hops) if h["dst"][1] == 443] == []
    (attrs,) = denials(world, "dave", "203.0.113.5")
    assert attrs["clrk.egress.deny_reason"] == "sni_unverified"
