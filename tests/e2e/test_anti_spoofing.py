"""One agent cannot speak as another (issue 11, item 4), with the sandbox rules as they
are created for `clrk run`: a privileged process inside agent A's sandbox adds agent B's
address (or one it made up) to A's link and sends from it.  Nothing it sends reaches
the dialer or an upstream; every spoofed flow is one `unknown_agent` record; A and B
themselves are served as before.  (Under `clrk run` the agent cannot add an address at
all: tests/embedded/test_run_confinement.py.)"""

from __future__ import annotations

import textwrap
import time

import pytest

from clrk.nexthops import DEFAULT_BASE_PORT
from clrk_worker_dialer.redirect_rules import DEFAULT_SPOOF_LOG_GROUP
from tests.e2e.dialer_proc import DialerProcess
from tests.e2e.topology import Agent, Topology, sources

A_INDEX, B_INDEX = 50, 51
DENIED = "egress.dial.denied"
POLICY = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: egress}
spec:
  listeners:
  - {name: dgram, protocol: UDP}
  - {name: tcp, protocol: TCP}
  dns: {upstream: ["198.51.100.53:53"]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: echo}
spec:
  parentRefs: [{name: egress, sectionName: dgram}]
  rules:
  - matches:
    - {destinationCIDRs: [192.0.2.0/24, "2001:db8:1::/64"], protocol: UDP, ports: [{port: 7}]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: echo-tcp}
spec:
  parentRefs: [{name: egress, sectionName: tcp}]
  rules:
  - matches: [{destinationCIDRs: [203.0.113.0/24], ports: [{port: 7}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: agent-a}
spec: {egressRefs: [{gatewayRef: egress}]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: agent-b}
spec: {egressRefs: [{gatewayRef: egress}]}
"""
SEND_UDP = textwrap.dedent("""
    import socket, sys
    src, dst = sys.argv[1], sys.argv[2]
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((src, 40007))
    s.settimeout(1.0)
    for _ in range(3):
        s.sendto(b"spoofed", (dst, 7))
    try:
        print(s.recv(100).decode())
    except OSError:
        print("nothing")
""")
CONNECT_TCP = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.bind((sys.argv[1], 40008))
    s.settimeout(3.5)  # the SYN is retransmitted in this time: still one flow
    try:
        s.connect((sys.argv[2], 7))
        print("connected")
    except OSError:
        print("nothing")
""")


@pytest.fixture(scope="module")
def world(topology: Topology):
    manifests = topology.workdir / "anti-spoofing.yaml"
    manifests.write_text(POLICY)
    a = topology.add_agent(A_INDEX)
    b = topology.add_agent(B_INDEX)
    # The PROXY v2 stand-in for Envoy's listener of `tcp` (the gateway's second listener).
    hop, _ = topology.start_next_hop([f"127.0.0.1:{DEFAULT_BASE_PORT + 1}"])
    dialer = None
    try:
        dialer = DialerProcess(
            topology,
            manifests,
            gateway="default/egress",
            sources={**sources(A_INDEX, "default/agent-a"), **sources(B_INDEX, "default/agent-b")},
            extra=["--spoof-log-group", str(DEFAULT_SPOOF_LOG_GROUP)],
            name="anti-spoofing-dialer",
        )
        yield {"a": a, "b": b, "dialer": dialer}
    finally:
        if dialer is not None:
            dialer.stop()
        topology.processes.stop(hop)
        topology.remove_agent(a)
        topology.remove_agent(b)


def _as_root_in(agent: Agent, *argv: str) -> None:
    """What only a privileged process in the sandbox can do (never the agent itself)."""
    out = agent.run(list(argv))
    assert out.returncode == 0, out.stderr


@pytest.fixture
def claimed(world):
    """Agent B's addresses added to agent A's link, removed afterwards."""
    a, b = world["a"], world["b"]
    added = [(b.address_v4, "32"), (b.address_v6, "128")]
    for address, length in added:
        _as_root_in(a, "ip", "addr", "add", f"{address}/{length}", "dev", "eth0", "nodad")
    try:
        yield b
    finally:
        for address, length in added:
            a.run(["ip", "addr", "del", f"{address}/{length}", "dev", "eth0"])


def _served(topology: Topology, mark: int) -> list[dict]:
    """What the upstream servers saw since `mark` (the dialer relays from its own address,
    so everything counts)."""
    return topology.server_log.entries(mark)


def _unknown_agent(world, t0: int, src: str) -> list[dict]:
    found = world["dialer"].records(DENIED, {"clrk.egress.deny_reason": "unknown_agent"}, 4.0, t0)
    return [r for r in found if r["attributes"].get("client.address", "").startswith(src + ":")]


@pytest.mark.parametrize("family", [4, 6])
def test_udp_sent_from_another_agents_address_is_dropped_and_recorded(
    world, topology, claimed, family
):
    a, b = world["a"], claimed
    source = b.address_v4 if family == 4 else b.address_v6
    dst = "192.0.2.10" if family == 4 else "2001:db8:1::10"
    # A's own datagram first: the host's link address is then known, and the spoofed
    # datagram does not wait for a neighbour solicitation (which, sent from B's address,
    # the rules drop too).
    own = a.address_v4 if family == 4 else a.address_v6
    assert a.run(["python3", "-c", SEND_UDP, own, dst]).stdout.strip() == "spoofed"
    t0, mark = time.time_ns(), topology.server_log.mark()
    out = a.run(["python3", "-c", SEND_UDP, source, dst])
    assert out.stdout.strip() == "nothing", out.stderr
    time.sleep(0.5)
    assert _served(topology, mark) == []
    records = _unknown_agent(world, t0, source)
    assert sorted(r["signal"] for r in records) == ["log", "span"], records  # one flow
    attrs = records[0]["attributes"]
    assert (attrs["agent.name"], attrs["network.transport"]) == ("", "udp")
    assert (attrs["network.peer.address"], attrs["network.peer.port"]) == (dst, 7)


def test_tcp_from_another_agents_address_is_dropped_and_recorded_once(world, topology, claimed):
    a, b = world["a"], claimed
    t0, mark = time.time_ns(), topology.server_log.mark()
    out = a.run(["python3", "-c", CONNECT_TCP, b.address_v4, "203.0.113.5"])
    assert out.stdout.strip() == "nothing", out.stderr
    assert _served(topology, mark) == []
    records = _unknown_agent(world, t0, b.address_v4)
    assert sorted(r["signal"] for r in records) == ["log", "span"], records
    attrs = records[0]["attributes"]
    assert (attrs["network.transport"], attrs["network.peer.port"]) == ("tcp", 7)
    assert "agent.name" in attrs and attrs["agent.name"] == ""


def test_an_address_the_agent_made_up_is_dropped_and_recorded(world, topology):
    a = world["a"]
    made_up = "198.18.250.1"
    _as_root_in(a, "ip", "addr", "add", f"{made_up}/32", "dev", "eth0")
    try:
        t0 = time.time_ns()
        out = a.run(["python3", "-c", SEND_UDP, made_up, "192.0.2.10"])
        assert out.stdout.strip() == "nothing", out.stderr
        assert len(_unknown_agent(world, t0, made_up)) == 2
    finally:
        a.run(["ip", "addr", "del", f"{made_up}/32", "dev", "eth0"])
    assert world["dialer"].wait_for_log(f"{made_up}:40007")  # the log names the sandbox too
    assert a.name in world["dialer"].log()


def test_each_agent_is_still_served_from_its_own_address(world, topology, claimed):
    a, b = world["a"], world["b"]
    for agent in (a, b):
        out = agent.run(["python3", "-c", SEND_UDP, agent.address_v4, "192.0.2.10"])
        assert out.stdout.strip() == "spoofed", out.stderr  # the echo of its own datagram
        ok = agent.run(["nc", "-w", "3", "203.0.113.5", "7"], input="hi\n")
        assert ok.stdout == "hi\n", ok.stderr
