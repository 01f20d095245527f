"""The worker dialer in transparent mode against the same paths without it, same run.

Topology (removed at the end, also on failure or Ctrl-C):

    sandbox a1 (agent) --veth--+                         +-- sink WORK/sockets/tcp-out.sock
      TCP REDIRECT -> :15001   |  host namespace gw:     |   (the Envoy listener, as
      UDP TPROXY   -> :15002   +-- dialer :15001/2/53 ---+   `clrk up` lays it out; PROXY v2)
                               |                         +-- dnsmasq 127.0.0.53:53
    sandbox a3 (agent) --veth--+-- dialer2 :15011 -------+-- sink 127.0.0.1:15100 (a
      TCP REDIRECT -> :15011   |                             loopback-port Envoy listener)
    sandbox a2 (direct) -veth--+-- TCP REDIRECT -> sink :15201 (no dialer)
    sandbox a4 (naive) --veth--+-- DNS TPROXY -> naive relay :15054 -> dnsmasq

Measured with one client program (`_client.py`) run inside the namespaces:
1. denial latency: connect() to a denied destination until the reset, p50/p99;
2. connections/s (connect, 1-byte echo, close; a few at once): agent -> dialer -> sink
   (next hop a Unix socket; and a loopback port) vs agent -> sink (same veth + REDIRECT,
   no dialer) vs loopback inside gw;
3. bulk MB/s on one connection, same four paths;
4. DNS queries/s: agent -> TPROXY -> dialer -> dnsmasq vs gw -> dnsmasq, and the
   naive baseline: the same TPROXY path through a Python relay that does nothing but
   relay (`_naive_dns.py`), each datagram sent as it comes;
5. DNS latency, one query at a time, same two paths: what the dialer adds (p50).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench import _targets as targets
from bench._netns import Topology, needs_root
from bench._rig import BenchError, in_topology, line_ready, run_json, tail, wait_ready
from clrk.nexthops import describe, envoy_listener_addresses
from clrk_worker_dialer.redirect_rules import spec_for_index

HERE = Path(__file__).resolve().parent
NAIVE_DNS_PORT = 15054
CLIENT = str(HERE / "_client.py")
SINK = str(HERE / "_sink.py")

TCP_PORT, UDP_PORT, DNS_PORT = 15001, 15002, 15053
TCP_PORT_2 = 15011  # the second dialer's, whose next hop is a loopback port
NEXT_HOP_BASE_PORT = 15100
DIRECT_PORT = 15201  # the sink without the dialer in front
RESOLVER = ("127.0.0.53", 53)  # dnsmasq on gw's loopback
ALLOWED = ("203.0.113.10", 8080)
DENIED = ("203.0.113.20", 8080)
ANY_DNS_SERVER = ("192.0.2.53", 53)  # the agent may ask anyone: TPROXY takes it

MANIFEST = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: bench}
spec:
  listeners:
  - {name: tcp-out, protocol: TCP}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: bench}
spec:
  parentRefs: [{name: bench}]
  rules:
  - matches:
    - destinationCIDRs: ["ALLOWED_IP/32"]
      ports: [{port: ALLOWED_PORT}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: bot, labels: {team: bench}}
spec:
  egressRefs: [{gatewayRef: bench}]
"""

FULL = {
    "deny": 400,
    "cps_s": 3.0,
    "threads": 4,
    "bulk_mib": 1024,
    "bulk_runs": 5,
    "dns": 6000,
    "window": 32,
    "dns_runs": 3,
    "dns_latency": 2000,
}
QUICK = {
    "deny": 100,
    "cps_s": 0.5,
    "threads": 4,
    "bulk_mib": 32,
    "bulk_runs": 1,
    "dns": 600,
    "window": 32,
    "dns_runs": 1,
    "dns_latency": 200,
}


def _client(netns: str, *args: object, timeout: float = 120.0) -> dict:
    argv = ["ip", "netns", "exec", netns, sys.executable, CLIENT, *map(str, args)]
    return run_json(argv, f"client {args[0]} in {netns}", timeout)


def _sandbox(top: Topology, gw: str, index: int, tcp_port: int):
    spec = spec_for_index(
        index,
        f"{top.prefix}-a{index}",
        tcp_port=tcp_port,
        udp_port=UDP_PORT,
        dns_port=DNS_PORT,
        host_netns=gw,
    )
    return top.add_sandbox(spec)


def _start_dialer(top: Topology, gw: str, work: Path, name: str, argv: list[str]):
    ready_file = work / f"{name}.ready"
    log = work / f"{name}.log"
    proc = top.start(
        gw,
        [
            *(sys.executable, "-m", "clrk_worker_dialer", "--no-watch"),
            *("-f", str(work / "bench.yaml"), "--gateway", "default/bench"),
            *argv,
            *("--records", str(work / f"{name}-records.jsonl"), "--ready-file", str(ready_file)),
        ],
        log=log,
    )
    return proc, ready_file, log


def build(top: Topology, work: Path) -> dict:
    """Namespaces, sandboxes and processes; returns the names the clients need."""
    gw = top.create_host()
    agent = _sandbox(top, gw, 1, TCP_PORT)
    # Same interception, but TCP lands on the sink itself: the path minus the dialer.
    direct = _sandbox(top, gw, 2, DIRECT_PORT)
    agent_tcp_hop = _sandbox(top, gw, 3, TCP_PORT_2)
    naive = top.add_sandbox(
        spec_for_index(
            4,
            f"{top.prefix}-a4",
            tcp_port=DIRECT_PORT,
            udp_port=UDP_PORT,
            dns_port=NAIVE_DNS_PORT,
            host_netns=gw,
        )
    )
    sockets = work / "sockets"
    sockets.mkdir(mode=0o700)
    listeners = [("tcp-out", "TCP")]
    (socket_hop,) = envoy_listener_addresses(listeners, socket_dir=str(sockets)).values()
    (tcp_hop,) = envoy_listener_addresses(listeners, base_port=NEXT_HOP_BASE_PORT).values()
    sink_log = work / "sink.log"
    sink = top.start(
        gw,
        [sys.executable, SINK, socket_hop, describe(tcp_hop), f"0.0.0.0:{DIRECT_PORT}"],
        log=sink_log,
        stdout=subprocess.PIPE,
    )
    dns_log = work / "dnsmasq.log"
    dnsmasq = top.start(
        gw,
        [
            "dnsmasq",
            *("--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"),
            *("--no-poll", "--bind-interfaces", "--pid-file=", "--log-facility=-"),
            f"--listen-address={RESOLVER[0]}",
            f"--port={RESOLVER[1]}",
            f"--address=/bench.example/{ALLOWED[0]}",
        ],
        log=dns_log,
    )
    naive_log = work / "naive-dns.log"
    naive_dns = top.start(
        gw,
        [
            *(sys.executable, str(HERE / "_naive_dns.py")),
            *(f"0.0.0.0:{NAIVE_DNS_PORT}", f"{RESOLVER[0]}:{RESOLVER[1]}"),
        ],
        log=naive_log,
        stdout=subprocess.PIPE,
    )
    (work / "bench.yaml").write_text(
        MANIFEST.replace("ALLOWED_IP", ALLOWED[0]).replace("ALLOWED_PORT", str(ALLOWED[1]))
    )
    dialers = [
        _start_dialer(
            top,
            gw,
            work,
            "dialer",
            [
                *("--agent-source", f"{agent.spec.agent_v4}=default/bot"),
                *("--transparent-tcp", f"0.0.0.0:{TCP_PORT}"),
                *("--transparent-udp", f"0.0.0.0:{UDP_PORT}"),
                *("--dns", f"0.0.0.0:{DNS_PORT}", "--resolver", f"{RESOLVER[0]}:{RESOLVER[1]}"),
                *("--next-hop-socket-dir", str(sockets)),
            ],
        ),
        _start_dialer(
            top,
            gw,
            work,
            "dialer-tcp-hop",
            [
                *("--agent-source", f"{agent_tcp_hop.spec.agent_v4}=default/bot"),
                *("--transparent-tcp", f"0.0.0.0:{TCP_PORT_2}"),
                *("--next-hop-base-port", str(NEXT_HOP_BASE_PORT)),
            ],
        ),
    ]
    wait_ready(sink, line_ready(sink), "sink", sink_log)
    wait_ready(naive_dns, line_ready(naive_dns), "naive DNS relay", naive_log)
    for proc, ready_file, log in dialers:
        wait_ready(proc, ready_file.exists, log.stem, log)
    if dnsmasq.poll() is not None:
        raise BenchError(f"dnsmasq exited {dnsmasq.returncode}:\n{tail(dns_log)}")
    return {
        "gw": gw,
        "agent": agent.name,
        "agent_tcp_hop": agent_tcp_hop.name,
        "direct": direct.name,
        "naive": naive.name,
    }


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(names: dict, p: dict) -> list[dict]:
    gw, agent, direct = names["gw"], names["agent"], names["direct"]
    rows: list[dict] = []

    deny = _client(agent, "deny", *DENIED, p["deny"])
    if deny["not_refused"]:
        raise BenchError(f"{deny['not_refused']} denied connections were not refused")
    us = deny["samples_us"]
    rows.append(
        {
            "measure": "deny",
            "path": "dialer",
            "unit": "ms",
            "samples": len(us),
            "value": _percentile(us, 0.5) / 1000,
            "p99": _percentile(us, 0.99) / 1000,
        }
    )

    tcp_paths = (
        ("dialer", agent, ALLOWED),
        ("dialer-tcp-hop", names["agent_tcp_hop"], ALLOWED),
        ("direct-veth", direct, ALLOWED),
        ("direct-loopback", gw, ("127.0.0.1", DIRECT_PORT)),
    )
    for path, netns, (host, port) in tcp_paths:
        got = _client(netns, "cps", host, port, p["cps_s"], p["threads"])
        if got["errors"] or not got["connections"]:
            raise BenchError(f"cps {path}: {got}")
        rows.append(
            {
                "measure": "cps",
                "path": path,
                "unit": "conn/s",
                "samples": got["connections"],
                "value": got["connections"] / got["seconds"],
            }
        )
    rates: dict[str, list[float]] = {path: [] for path, _, _ in tcp_paths}
    for _ in range(p["bulk_runs"]):  # interleaved, so a noisy moment hits every path alike
        for path, netns, (host, port) in tcp_paths:
            got = _client(netns, "bulk", host, port, p["bulk_mib"])
            if got["counted"] != got["bytes"]:
                raise BenchError(f"bulk {path}: sent {got['bytes']} bytes, sink counted {got}")
            rates[path].append(got["bytes"] / got["seconds"] / 1e6)
    for path, values in rates.items():
        rows.append(
            {
                "measure": "bulk",
                "path": path,
                "unit": "MB/s",
                "samples": len(values),
                "value": statistics.median(values),
            }
        )
    rows += _dns_rows(
        (
            ("dialer", agent, ANY_DNS_SERVER),
            ("direct", gw, RESOLVER),
            ("naive", names["naive"], ANY_DNS_SERVER),
        ),
        p,
    )
    base = {r["measure"]: r["value"] for r in rows if r["path"] in ("direct-veth", "direct")}
    for r in rows:
        r["ratio"] = r["value"] / base[r["measure"]] if r["measure"] in base else None
    return rows


def _dns_rows(paths, p: dict) -> list[dict]:
    """Queries/s (WINDOW in flight) and one at a time, each path in turn for several runs,
    so a noisy moment of a shared machine hits both paths alike: median rate, and the
    latency percentiles of every run's queries together."""
    rates: dict[str, list[float]] = {path: [] for path, _, _ in paths}
    answered = dict.fromkeys(rates, 0)
    lost = dict.fromkeys(rates, 0)
    latency: dict[str, list[float]] = {path: [] for path in rates}
    lat_lost = dict.fromkeys(rates, 0)
    for _ in range(p["dns_runs"]):
        for path, netns, (host, port) in paths:
            got = _client(netns, "dns", host, port, p["dns"], p["window"])
            if not got["answered"]:
                raise BenchError(f"dns {path}: no answers: {got}")
            rates[path].append(got["answered"] / got["seconds"])
            answered[path] += got["answered"]
            lost[path] += got["lost"]
            got = _client(netns, "dnslat", host, port, p["dns_latency"])
            if not got["samples_us"]:
                raise BenchError(f"dns latency {path}: no answers: {got}")
            latency[path] += got["samples_us"]
            lat_lost[path] += got["lost"]
    rows = [
        {"measure": "dns", "path": path, "unit": "queries/s", "samples": answered[path],
         "lost": lost[path], "value": statistics.median(rates[path])}
        for path in rates
    ]  # fmt: skip
    rows += [
        {"measure": "dnslat", "path": path, "unit": "ms", "samples": len(us),
         "lost": lat_lost[path], "value": _percentile(us, 0.5) / 1000,
         "p99": _percentile(us, 0.99) / 1000}
        for path, us in latency.items()
    ]  # fmt: skip
    return rows


def main(quick: bool = False) -> list[dict]:
    reason = needs_root()
    if reason is not None:
        print(f"worker dialer benchmark skipped: {reason}")
        return []
    params = QUICK if quick else FULL
    rows = in_topology(
        f"clrkb{os.getpid()}", "clrk-bench-", lambda top, work: measure(build(top, work), params)
    )
    print_table(rows, params)
    return rows


LABELS = {
    ("deny", "dialer"): ("denial latency", "agent -> dialer, reset"),
    ("cps", "dialer"): ("connections/s", "agent -> dialer -> sink (Unix socket)"),
    ("cps", "dialer-tcp-hop"): ("", "agent -> dialer -> sink (loopback port)"),
    ("cps", "direct-veth"): ("", "agent -> sink (veth+REDIRECT)"),
    ("cps", "direct-loopback"): ("", "gw loopback -> sink"),
    ("bulk", "dialer"): ("bulk, 1 connection", "agent -> dialer -> sink (Unix socket)"),
    ("bulk", "dialer-tcp-hop"): ("", "agent -> dialer -> sink (loopback port)"),
    ("bulk", "direct-veth"): ("", "agent -> sink (veth+REDIRECT)"),
    ("bulk", "direct-loopback"): ("", "gw loopback -> sink"),
    ("dns", "dialer"): ("DNS queries/s", "agent -> TPROXY -> dialer -> dnsmasq"),
    ("dns", "direct"): ("", "gw -> dnsmasq"),
    ("dns", "naive"): ("", "agent -> TPROXY -> naive relay -> dnsmasq"),
    ("dnslat", "dialer"): ("DNS, 1 at a time", "agent -> TPROXY -> dialer -> dnsmasq"),
    ("dnslat", "direct"): ("", "gw -> dnsmasq"),
    ("dnslat", "naive"): ("", "agent -> TPROXY -> naive relay -> dnsmasq"),
}


def _verdict(r: dict, rows: list[dict]) -> str:
    if r["measure"] == "dnslat" and r["path"] == "dialer":
        added = _added_dns_latency(rows)
        return f"added p50 {added:.3f} ms" if added is not None else ""
    if r["measure"] == "deny":
        return f"p50 < 1 ms: {'met' if r['value'] < 1.0 else 'MISSED'}"
    if r["measure"] == "bulk" and r["path"] == "dialer":
        return f">= 0.5x direct: {'met' if r['ratio'] >= 0.5 else 'MISSED'}"
    return ""


def print_table(rows: list[dict], params: dict) -> None:
    print(
        f"worker dialer (transparent) vs the same path without it; {os.cpu_count()} CPUs; "
        f"{params['threads']} cps threads, bulk: median of {params['bulk_runs']} x "
        f"{params['bulk_mib']} MiB, "
        f"{params['window']} DNS queries in flight, median of {params['dns_runs']} x "
        f"{params['dns']:,} queries"
    )
    header = (
        f"{'measure':<19} {'path':<37} {'value':>15} {'unit':<10} {'n':>6} {'vs direct':>9}  target"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        measure, path = LABELS[(r["measure"], r["path"])]
        if r["measure"] in ("deny", "dnslat"):
            value, unit = f"{r['value']:.3f} / {r['p99']:.3f}", "ms p50/p99"
        else:
            value, unit = f"{r['value']:,.0f}", r["unit"]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        print(
            f"{measure:<19} {path:<37} {value:>15} {unit:<10} {r['samples']:>6,} "
            f"{ratio:>9}  {_verdict(r, rows)}"
        )
    lost = sum(r.get("lost", 0) for r in rows if r["path"] != "naive")
    print(
        "vs direct: value / the same measure without the dialer (veth+REDIRECT for TCP, "
        f"gw -> dnsmasq for DNS); DNS queries lost: {lost}; DNS 1 at a time: "
        f"{params['dns_latency']} queries per path, each a new name"
    )
    print(
        "naive relay: the dialer's TPROXY path for DNS with none of its work (no parsing, "
        "policy, snooping, shares or timeouts), each datagram sent as it comes"
    )
    print(
        "the dialer's next hop (the sink stands in for Envoy) is a Unix socket as `clrk up` "
        "lays it out (--next-hop-socket-dir); a loopback port for comparison"
    )
    for line in target_lines(rows):
        print(line)


DENIAL_GOAL_MS = 0.3
DNS_GOAL_RATIO = 0.25
DNS_GOAL_ADDED_MS = 0.2


def _added_dns_latency(rows: list[dict]) -> float | None:
    """p50 of one query at a time through the dialer minus the same straight to dnsmasq."""
    by = {(r["measure"], r["path"]): r for r in rows}
    dialer, direct = by.get(("dnslat", "dialer")), by.get(("dnslat", "direct"))
    return None if dialer is None or direct is None else dialer["value"] - direct["value"]


def target_lines(rows: list[dict]) -> list[str]:
    """Issue 15's denial-latency and dns-qps lines (no query may be lost; the added p50
    counts when the one-at-a-time rows were measured)."""
    by = {(r["measure"], r["path"]): r for r in rows}
    out = []
    if deny := by.get(("deny", "dialer")):
        out.append(targets.target_line(
            "denial-latency", deny["value"] <= DENIAL_GOAL_MS,
            f"p50 {deny['value']:.3f} ms", f"goal <= {DENIAL_GOAL_MS} ms",
        ))  # fmt: skip
    if dns := by.get(("dns", "dialer")):
        ratio = dns["ratio"]
        lost = dns.get("lost", 0) + by.get(("dnslat", "dialer"), {}).get("lost", 0)
        added = _added_dns_latency(rows)
        met = ratio >= DNS_GOAL_RATIO and not lost
        measured = f"{ratio:.2f}x direct, {lost} lost"
        if added is not None:
            met = met and added <= DNS_GOAL_ADDED_MS
            measured = f"{ratio:.2f}x direct, added p50 {added:.3f} ms, {lost} lost"
        out.append(targets.target_line(
            "dns-qps", met, measured,
            f"goal >= {DNS_GOAL_RATIO}x, added p50 <= {DNS_GOAL_ADDED_MS} ms, none lost",
        ))  # fmt: skip
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
