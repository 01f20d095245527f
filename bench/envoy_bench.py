"""End to end through the gateway: agent -> dialer -> Envoy -> upstream, versus Envoy
alone, versus direct, in the same run (issue 4).

Topology (removed at the end, also on failure or Ctrl-C):

    sandbox a1 (agent) --veth--+  host namespace gw:
      TCP REDIRECT -> :15001   +-- dialer :15001 (real, -f manifest)
                                    |  PROXY v2
                                   Envoy WORK/sockets/tcp-out.sock (real; static bootstrap from
                                    |  the translator)   --gRPC access log--> clrk_extproc
                                   upstream echo/sink 192.0.2.10:8080 (on gw's lo)

The upstream sits on a documentation address: Envoy blocks loopback destinations
(SPEC 4).  Three paths, one client program, one upstream:
1. dialer+envoy: the agent connects to the upstream; REDIRECT hands it to the dialer,
   which decides and dials Envoy, which proxies to the original destination;
2. envoy: a client in gw writes the dialer's PROXY v2 header itself, straight to Envoy;
3. direct: a client in gw connects to the upstream, no dialer, no Envoy.

Measured per path: connections/s (connect, 1-byte echo, close; a few at once) and bulk
MB/s (one connection), each the median of runs interleaved across the paths, so a
noisy moment hits every path alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import _targets as targets
from bench._netns import needs_root
from bench._rig import (
    BenchError,
    GatewayRig,
    child_env,
    line_ready,
    rotated,
    run_json,
    run_rig,
    wait_ready,
)
from bench.dialer_bench import MANIFEST
from clrk.nexthops import listener_socket_path

HERE = Path(__file__).resolve().parent
SINK = str(HERE / "_sink.py")

UPSTREAM = ("192.0.2.10", 8080)
LISTENER = "tcp-out"  # the gateway's one listener
EXTPROC = ("127.0.0.1", 18002)
GATEWAY = "default/bench"
AGENT = "default/bot"
ROUTE = "default/bench"

FULL = {"cps_s": 1.5, "cps_runs": 5, "threads": 4, "bulk_mib": 512, "bulk_runs": 5}
QUICK = {"cps_s": 0.5, "cps_runs": 1, "threads": 4, "bulk_mib": 64, "bulk_runs": 1}

PATHS = ("dialer+envoy", "envoy", "direct")


def manifest_text() -> str:
    return MANIFEST.replace("ALLOWED_IP", UPSTREAM[0]).replace("ALLOWED_PORT", str(UPSTREAM[1]))


def envoy_config(text: str, sockets: Path) -> dict:
    """The static bootstrap of what the control plane would serve for this manifest."""
    from clrk.api import load_text
    from clrk.policy.loaded import compile_loaded
    from clrk_xds.envoy_process import static_bootstrap
    from clrk_xds.translate import to_plain, translate

    load = load_text(text)
    if load.errors:
        raise BenchError(f"bench manifest invalid: {load.errors}")
    gateways = translate(
        compile_loaded(load).compiled,
        socket_dir=str(sockets),
        extproc_address=EXTPROC,
    )
    return static_bootstrap(to_plain(gateways[GATEWAY]))


def _tune_for_many_connections(netns: str) -> None:
    """Thousands of short connections a second from one address to one upstream leave
    as many TIME_WAIT sockets; connect() slows down as they fill the ephemeral ports,
    and would penalise whichever path runs later.  Both sysctls are per namespace."""
    subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-q", "-w",
         "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1"],
        check=True, capture_output=True,
    )  # fmt: skip


class Rig(GatewayRig):
    """The namespaces and processes; `close()` removes all of it (idempotent)."""

    def build(self) -> None:
        top, work = self.top, self.work
        self.add_namespaces(UPSTREAM[0])
        gw = self.gw
        for netns in (gw, self.agent):
            _tune_for_many_connections(netns)
        manifest = work / "bench.yaml"
        manifest.write_text(manifest_text())
        env = child_env()
        sink_log = work / "sink.log"
        sink = top.start(gw, [sys.executable, SINK, f"{UPSTREAM[0]}:{UPSTREAM[1]}"], log=sink_log,
                         stdout=subprocess.PIPE)  # fmt: skip
        gateway = self.start_gateway(manifest, gateway=GATEWAY, agent=AGENT, extproc=EXTPROC,
                                     sockets=self.sockets, env=env)  # fmt: skip
        # Translating in this process overlaps with the children starting up.
        self.start_envoy(envoy_config(manifest.read_text(), self.sockets))
        wait_ready(sink, line_ready(sink), "sink", sink_log)
        gateway.wait_ready()

    def client(self, path: str, *args: object, timeout: float = 120.0) -> dict:
        """Run the one client program for this path, inside its namespace."""
        listener = (listener_socket_path(str(self.sockets), LISTENER), 0)
        netns, header, (host, port) = {
            "dialer+envoy": (self.agent, [], UPSTREAM),
            "envoy": (self.gw, ["--proxy", AGENT, ROUTE, f"{UPSTREAM[0]}:{UPSTREAM[1]}"], listener),
            "direct": (self.gw, [], UPSTREAM),
        }[path]
        mode, *rest = args
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "bench._envoy_client",
                *header, mode, host, str(port), *map(str, rest)]  # fmt: skip
        return run_json(argv, f"client {mode} on {path}", timeout, child_env())

    def envoy_proxied(self) -> int:
        """Connections Envoy's tcp_proxy chains took (proves paths 1 and 2 went through a
        route's chain of Envoy, not around it or into a closing chain)."""
        status, body = self.envoy.admin_get("/stats?filter=^tcp\\..*downstream_cx_total$")
        if status != 200:
            raise BenchError(f"Envoy admin /stats answered {status}")
        return sum(int(line.rpartition(": ")[2]) for line in body.splitlines() if ": " in line)


def measure(rig: Rig, p: dict) -> list[dict]:
    rows: list[dict] = []
    through_envoy = 0
    per_s: dict[str, list[float]] = {path: [] for path in PATHS}
    made: dict[str, int] = dict.fromkeys(PATHS, 0)
    for run in range(p["cps_runs"]):  # interleaved: a noisy moment hits every path alike
        for path in rotated(PATHS, run):
            got = rig.client(path, "cps", p["cps_s"], p["threads"])
            if got["errors"] or not got["connections"]:
                raise BenchError(f"cps {path}: {got}")
            per_s[path].append(got["connections"] / got["seconds"])
            made[path] += got["connections"]
            through_envoy += got["connections"] if path != "direct" else 0
    for path, values in per_s.items():
        rows.append(
            {
                "measure": "cps",
                "path": path,
                "unit": "conn/s",
                "samples": made[path],
                "value": statistics.median(values),
            }
        )
    rates: dict[str, list[float]] = {path: [] for path in PATHS}
    for run in range(p["bulk_runs"]):
        for path in rotated(PATHS, run):
            got = rig.client(path, "bulk", p["bulk_mib"])
            if got["counted"] != got["bytes"]:
                raise BenchError(f"bulk {path}: sent {got['bytes']} bytes, upstream counted {got}")
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
    seen = rig.envoy_proxied()
    if seen < through_envoy:
        raise BenchError(f"Envoy proxied {seen} connections, expected >= {through_envoy}")
    base = {r["measure"]: r["value"] for r in rows if r["path"] == "direct"}
    for r in rows:
        r["ratio"] = r["value"] / base[r["measure"]]
    return rows


def main(quick: bool = False) -> list[dict]:
    reason = needs_root()
    if reason is not None:
        print(f"Envoy end-to-end benchmark skipped: {reason}")
        return []
    params = QUICK if quick else FULL
    started = time.monotonic()
    rows = run_rig(
        Rig, measure, params, prefix=f"clrke{os.getpid()}", tmp_prefix="clrk-bench-envoy-"
    )
    print_table(rows, params, time.monotonic() - started)
    return rows


LABELS = {
    ("cps", "dialer+envoy"): ("connections/s", "agent -> dialer -> Envoy -> upstream"),
    ("cps", "envoy"): ("", "PROXY v2 client -> Envoy -> upstream"),
    ("cps", "direct"): ("", "client -> upstream"),
    ("bulk", "dialer+envoy"): ("bulk, 1 connection", "agent -> dialer -> Envoy -> upstream"),
    ("bulk", "envoy"): ("", "PROXY v2 client -> Envoy -> upstream"),
    ("bulk", "direct"): ("", "client -> upstream"),
}


def print_table(rows: list[dict], params: dict, seconds: float) -> None:
    print(
        f"end to end through the gateway (real dialer, Envoy --concurrency 1, clrk_extproc "
        f"access logs); {os.cpu_count()} CPUs; cps: median of {params['cps_runs']} x "
        f"{params['cps_s']:g} s, {params['threads']} threads; bulk: median of "
        f"{params['bulk_runs']} x {params['bulk_mib']} MiB; {seconds:.0f} s in all"
    )
    header = f"{'measure':<19} {'path':<37} {'value':>10} {'unit':<7} {'n':>7} {'vs direct':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        measure, path = LABELS[(r["measure"], r["path"])]
        print(
            f"{measure:<19} {path:<37} {r['value']:>10,.0f} {r['unit']:<7} {r['samples']:>7,} "
            f"{r['ratio']:>8.2f}x"
        )
    print(
        "vs direct: value / the same measure on client -> upstream (gw loopback, no dialer, "
        "no Envoy); the agent path also crosses the sandbox veth and its REDIRECT; Envoy "
        "listens on a Unix socket, as `clrk up` lays it out"
    )
    for line in target_lines(rows):
        print(line)


def target_lines(rows: list[dict]) -> list[str]:
    """Issue 15's L4 lines: the gateway's ratio to direct against Squid's."""
    out = []
    for measure, name, squid in (
        ("cps", "l4-vs-squid-conns", targets.SQUID_CONNS_RATIO),
        ("bulk", "l4-vs-squid-bulk", targets.SQUID_BULK_RATIO),
    ):
        by = {(r["measure"], r["path"]): r for r in rows}
        row = by.get((measure, "dialer+envoy"))
        if row is not None:
            out.append(targets.target_line(
                name, row["ratio"] >= squid, f"{row['ratio']:.2f}x direct",
                f"Squid {squid:.2f}x as issue 15 measured it; not run here",
            ))  # fmt: skip
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
