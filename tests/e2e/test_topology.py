"""Smoke tests of the end-to-end topology: the harness itself and the interception rules
with tiny stand-ins for the dialer (tests/e2e/probes.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clrk_worker_dialer import proxy_v2
from tests.e2e.topology import (
    DIALER_DNS_PORT,
    DIALER_TCP_PORT,
    DIALER_UDP_PORT,
    DNS_SERVER,
    ECHO_PORT,
    RUN,
    TopologyError,
    dnsmasq_args,
    leaks,
    parse_dns_log,
    python_module,
    read_json_line,
    run,
    sweep_stale_namespaces,
)

DIG = ["dig", "+time=1", "+tries=1", "+noall", "+answer"]

# Run by the agent's python: one datagram, print where the answer came from.
UDP_CLIENT = """
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"ping", (host, port))
data, peer = s.recvfrom(100)
print(json.dumps({"data": data.decode(), "peer": list(peer[:2])}))
"""


def _answers(dig_stdout: str) -> set[tuple[str, ...]]:
    return {tuple(line.split()) for line in dig_stdout.splitlines() if line.strip()}


def _probe(topology, mode: str, port: int):
    return topology.start_in_gw(
        python_module("tests.e2e.probes", mode, "--port", str(port)), ready="ready"
    )


# --- pure helpers ---------------------------------------------------------------------------


def test_dnsmasq_args_for_a_zone():
    zone = {
        "a.test": {"A": ["192.0.2.1", "192.0.2.2"], "AAAA": ["2001:db8::1"], "ttl": 5},
        "b.test": {"CNAME": "a.test"},
        "*.w.test": {"A": ["192.0.2.9"]},
    }
    args = dnsmasq_args(zone, "198.51.100.53", "/tmp/x.log")
    assert args[-4:] == [
        "--host-record=a.test,192.0.2.1,2001:db8::1,5",
        "--host-record=a.test,192.0.2.2,5",
        "--cname=b.test,a.test",
        "--address=/w.test/192.0.2.9",
    ]
    assert {"--no-resolv", "--no-hosts", "--log-queries"} <= set(args)


def test_parse_dns_log_and_leaks():
    log = "Nov 24 dnsmasq[9]: query[AAAA] x.test from 198.19.0.1\nNov 24 dnsmasq[9]: cached\n"
    assert parse_dns_log(log) == [("AAAA", "x.test", "198.19.0.1")]
    assert leaks({"a": {"1"}, "b": set()}, {"a": {"1"}, "b": {"2"}}) == {"b": ["2"]}


def test_stale_namespaces_of_dead_runs_are_swept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"clrk-e2e-p{dead.pid}-gw"
    run(["ip", "netns", "add", name])
    try:
        assert name in sweep_stale_namespaces()
        assert name not in run(["ip", "netns", "list"])
        assert all(f"-{RUN}-" not in n for n in sweep_stale_namespaces())
    finally:
        run(["ip", "netns", "del", name], check=False)


# --- the upstream side from gw ----------------------------------------------------------------


def test_gw_resolves_the_zone_through_dnsmasq(topology):
    mark = topology.dns_log.mark()
    out = topology.run_in_gw([*DIG, f"@{DNS_SERVER}", "www.example.test"]).stdout
    assert _answers(out) == {
        ("www.example.test.", "120", "IN", "CNAME", "example.test."),
        ("example.test.", "300", "IN", "A", "192.0.2.10"),
    }
    out = topology.run_in_gw([*DIG, f"@{DNS_SERVER}", "AAAA", "api.example.test"]).stdout
    assert _answers(out) == {("api.example.test.", "30", "IN", "AAAA", "2001:db8:1::11")}
    out = topology.run_in_gw([*DIG, "+tcp", f"@{DNS_SERVER}", "x.y.wild.test"]).stdout
    assert _answers(out) == {("x.y.wild.test.", "60", "IN", "A", "203.0.113.6")}
    queried = [(qtype, name) for qtype, name, _ in topology.dns_log.queries(mark)]
    assert queried == [("A", "www.example.test"), ("AAAA", "api.example.test"),
                       ("A", "x.y.wild.test")]  # fmt: skip


def test_gw_reaches_echo_http_and_tls(topology):
    mark = topology.server_log.mark()
    echo = topology.run_in_gw(["nc", "-q", "1", "192.0.2.11", str(ECHO_PORT)], input="hi\n")
    assert echo.stdout == "hi\n"
    assert topology.run_in_gw(["curl", "-sS", "http://[2001:db8:1::10]/"]).stdout.startswith(
        "hello"
    )
    tls = topology.run_in_gw(
        ["curl", "-sS", "--cacert", str(topology.certs["ca"]), "--resolve",
         "api.example.test:443:203.0.113.5", "https://api.example.test/"]
    )  # fmt: skip
    assert tls.returncode == 0, tls.stderr
    kinds = [(e["kind"], e["local"][0]) for e in topology.server_log.entries(mark)]
    assert kinds == [("echo", "192.0.2.11"), ("http", "2001:db8:1::10"), ("tls", "203.0.113.5")]


def test_proxy_next_hop_relays_and_logs_the_header(topology):
    proc, log = topology.start_next_hop(["127.0.0.1:15100", "127.0.0.1:15101"])
    header = proxy_v2.encode(
        proxy_v2.ProxyHeader(
            "198.18.0.6", 40000, "192.0.2.12", ECHO_PORT,
            proxy_v2.clrk_tlvs(authority="third.test", agent_namespace="team",
                               agent_name="bot", route="team/r1", connection_id="c-1"),
        )
    )  # fmt: skip
    client = f"""
import socket, sys
s = socket.create_connection(("127.0.0.1", 15101), timeout=5)
s.sendall({header!r} + b"through the hop")
s.shutdown(socket.SHUT_WR)
print(s.recv(100).decode())
"""
    mark = topology.server_log.mark()
    out = topology.run_in_gw([sys.executable, "-c", client])
    assert out.stdout.strip() == "through the hop", out.stderr
    assert log.entries() == [{
        "listen": "127.0.0.1:15101", "src": ["198.18.0.6", 40000], "dst": ["192.0.2.12", 7],
        "command": "PROXY",
        "tlvs": {"0x02": "third.test", "0xe1": "team", "0xe2": "bot", "0xe3": "team/r1",
                 "0xe5": "c-1"},
    }]  # fmt: skip
    assert [e["local"] for e in topology.server_log.entries(mark)] == [["192.0.2.12", 7]]
    topology.processes.stop(proc)


# --- the agent side: nothing gets through without a dialer ------------------------------------


def test_agent_without_dialer_reaches_nothing(topology, agent):
    dns_mark, server_mark = topology.dns_log.mark(), topology.server_log.mark()
    dig = agent.run([*DIG, f"@{DNS_SERVER}", "example.test"])
    assert dig.returncode != 0 and "example.test" not in dig.stdout
    dig_tcp = agent.run([*DIG, "+tcp", f"@{DNS_SERVER}", "example.test"])
    assert dig_tcp.returncode != 0
    curl = agent.run(["curl", "-sS", "--max-time", "2", "http://192.0.2.10/"])
    assert curl.returncode == 7, curl.stderr  # refused: REDIRECT to a closed port
    curl6 = agent.run(["curl", "-sS", "--max-time", "2", "http://[2001:db8:1::10]/"])
    assert curl6.returncode == 7, curl6.stderr
    assert topology.dns_log.queries(dns_mark) == []
    assert topology.server_log.entries(server_mark) == []


# --- the agent side: the rules hand traffic to the dialer's ports -------------------------------


@pytest.mark.parametrize("target", ["192.0.2.10", "2001:db8:1::10"])
def test_tcp_is_redirected_with_the_original_destination(topology, agent, target):
    probe = _probe(topology, "tcp", DIALER_TCP_PORT)
    host = f"[{target}]" if ":" in target else target
    curl = agent.run(["curl", "-sS", "--max-time", "3", "--http0.9", f"http://{host}/"])
    assert curl.stdout == "redirected\n", curl.stderr
    seen = read_json_line(probe)
    source = agent.address_v6 if ":" in target else agent.address_v4
    assert seen["original_dst"] == [target, 80]
    assert seen["peer"][0] == source
    topology.processes.stop(probe)


def test_tcp_dns_goes_to_the_dns_port(topology, agent):
    probe = _probe(topology, "tcp", DIALER_DNS_PORT)
    agent.run([*DIG, "+tcp", "@203.0.113.5", "example.test"])
    assert read_json_line(probe)["original_dst"] == ["203.0.113.5", 53]
    topology.processes.stop(probe)


@pytest.mark.parametrize("target", ["192.0.2.10", "2001:db8:1::10"])
def test_udp_is_tproxied_and_answered_from_the_original_destination(topology, agent, target):
    probe = _probe(topology, "udp", DIALER_UDP_PORT)
    server_mark = topology.server_log.mark()
    out = agent.run([sys.executable, "-c", UDP_CLIENT, target, str(ECHO_PORT)])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"data": "tproxied:ping", "peer": [target, ECHO_PORT]}
    seen = read_json_line(probe)
    source = agent.address_v6 if ":" in target else agent.address_v4
    assert seen["original_dst"] == [target, ECHO_PORT]
    assert seen["peer"][0] == source
    assert topology.server_log.entries(server_mark) == []  # the probe answered, not upstream
    topology.processes.stop(probe)


def test_udp_dns_to_any_address_goes_to_the_dns_port(topology, agent):
    probe = _probe(topology, "udp", DIALER_DNS_PORT)
    agent.run([*DIG, "@192.0.2.12", "example.test"])  # the probe's answer is not DNS
    assert read_json_line(probe)["original_dst"] == ["192.0.2.12", 53]
    topology.processes.stop(probe)


def test_agents_have_their_own_links(topology):
    first, second = topology.add_agent(), topology.add_agent()
    try:
        assert first.address_v4 != second.address_v4
        ping = first.run([sys.executable, "-c", "import socket; socket.create_connection("
                          f"('{second.address_v4}', 9), timeout=1)"])  # fmt: skip
        assert ping.returncode != 0  # no forwarding between sandboxes
    finally:
        topology.remove_agent(second)
        topology.remove_agent(first)


def test_forwarding_stays_off(topology, agent):
    for netns in (topology.gw, topology.inet, agent.name):
        topology.assert_no_forwarding(netns)


def test_a_process_that_never_gets_ready_is_reported_and_ended(topology):
    with pytest.raises(TopologyError, match=r"did not become ready.*oops"):
        topology.start_in_gw(["sh", "-c", "echo oops >&2; exit 3"], ready="ready")
