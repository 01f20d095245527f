"""End to end through the gateway: agent -> dialer -> Envoy -> upstream, versus Envoy
alone, versus Squid, versus direct, in the same run (issues 4 and 15).

Topology (removed at the end, also on failure or Ctrl-C):

    sandbox a1 (agent) --veth--+  host namespace gw:
      TCP REDIRECT -> :15001   +-- dialer :15001 (real, -f manifest)
                                    |  PROXY v2
                                   Envoy WORK/sockets/tcp-out.sock (real; static bootstrap from
                                    |  the translator)   --gRPC access log--> clrk_extproc
                                   upstream echo/sink 192.0.2.10:8080 (on gw's lo)
    sandbox a2 (client) --veth--+-- Squid :3128 (CONNECT allowlist: the upstream only)
      TCP REDIRECT -> :3128            -> upstream

The upstream sits on a documentation address: Envoy blocks loopback destinations
(SPEC 4).  Four paths, one client program, one upstream:
1. dialer+envoy: the agent connects to the upstream; REDIRECT hands it to the dialer,
   which decides and dials Envoy, which proxies to the original destination;
2. envoy: a client in gw writes the dialer's PROXY v2 header itself, straight to Envoy;
3. squid: a client in sandbox a2, whose TCP the same kind of REDIRECT hands to Squid,
   asks it to CONNECT to the upstream: the agent's path with Squid for dialer and Envoy
   (installed by the bench when missing; without it this path is left out and the L4
   targets fall back to the ratios issue 15 measured, saying so);
4. direct: a client in gw connects to the upstream, no dialer, no Envoy.

Measured per path: connections/s (connect, 1-byte echo, close; a few at once) and bulk
MB/s (one connection), each the median of runs interleaved across the paths, so a
noisy moment hits every path alike; and the denial latency of the gateway (agent
connect() to the dialer's reset) beside Squid's (connect() to its 403 for a CONNECT to
an address it does not allow), p50 of all samples.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import _squid
from bench import _targets as targets
from bench._netns import needs_root
from bench._rig import (
    DNS_PORT,
    UDP_PORT,
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
from clrk_worker_dialer.redirect_rules import spec_for_index

HERE = Path(__file__).resolve().parent
SINK = str(HERE / "_sink.py")

UPSTREAM = ("192.0.2.10", 8080)
DENIED = ("192.0.2.20", 8080)  # no route allows it, nor Squid's allowlist
SQUID_PORT = 3128  # on every address of gw; sandbox a2's REDIRECT goes there
LISTENER = "tcp-out"  # the gateway's one listener
EXTPROC = ("127.0.0.1", 18002)
GATEWAY = "default/bench"
AGENT = "default/bot"
ROUTE = "default/bench"

FULL = {"cps_s": 1.5, "cps_runs": 5, "threads": 4, "bulk_mib": 512, "bulk_runs": 5,
        "deny": 200, "deny_runs": 3}  # fmt: skip
QUICK = {"cps_s": 0.5, "cps_runs": 1, "threads": 4, "bulk_mib": 64, "bulk_runs": 1,
         "deny": 50, "deny_runs": 1}  # fmt: skip

PATHS = ("dialer+envoy", "envoy", "squid", "direct")
DENY_PATHS = ("dialer", "squid")  # who refuses: the gateway's dialer, or Squid


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
    """The namespaces and processes; `close()` removes all of it (idempotent).
    `squid_missing`: why Squid is not in this run, or None."""

    squid_missing: str | None = None
    squid: _squid.Squid | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in PATHS if p != "squid" or self.squid is not None)

    @property
    def deny_paths(self) -> tuple[str, ...]:
        return tuple(p for p in DENY_PATHS if p != "squid" or self.squid is not None)

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
        if self.squid_missing is None:
            self.squid_sandbox = top.add_sandbox(
                spec_for_index(2, f"{top.prefix}-a2", tcp_port=SQUID_PORT, udp_port=UDP_PORT,
                               dns_port=DNS_PORT, host_netns=gw)
            )  # fmt: skip
            _tune_for_many_connections(self.squid_sandbox.name)
            self.squid = _squid.Squid(top, gw, work, ("0.0.0.0", SQUID_PORT), UPSTREAM)
            self.squid.start()
        gateway = self.start_gateway(manifest, gateway=GATEWAY, agent=AGENT, extproc=EXTPROC,
                                     sockets=self.sockets, env=env)  # fmt: skip
        # Translating in this process overlaps with the children starting up.
        self.start_envoy(envoy_config(manifest.read_text(), self.sockets))
        wait_ready(sink, line_ready(sink), "sink", sink_log)
        gateway.wait_ready()
        if self.squid is not None:
            self.squid.wait_ready()

    def client(
        self, path: str, *args: object, to: tuple[str, int] = UPSTREAM, timeout: float = 120.0
    ) -> dict:
        """Run the one client program for this path, inside its namespace; `to`: the
        destination it asks for."""
        listener = (listener_socket_path(str(self.sockets), LISTENER), 0)
        netns, header, (host, port) = {
            "dialer+envoy": (self.agent, [], to),
            "envoy": (self.gw, ["--proxy", AGENT, ROUTE, f"{to[0]}:{to[1]}"], listener),
            "squid": (self.squid_sandbox.name, ["--connect", self._squid_address()], to),
            "direct": (self.gw, [], to),
        }[path]
        mode, *rest = args
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "bench._envoy_client",
                *header, mode, host, str(port), *map(str, rest)]  # fmt: skip
        return run_json(argv, f"client {mode} on {path}", timeout, child_env())

    def _squid_address(self) -> str:
        """Squid as its client names it: gw's end of the sandbox link (REDIRECT would take
        any address there anyway)."""
        return f"{self.squid_sandbox.spec.host_v4}:{SQUID_PORT}"

    def envoy_proxied(self) -> int:
        """Connections Envoy's tcp_proxy chains took (proves paths 1 and 2 went through a
        route's chain of Envoy, not around it or into a closing chain)."""
        status, body = self.envoy.admin_get("/stats?filter=^tcp\\..*downstream_cx_total$")
        if status != 200:
            raise BenchError(f"Envoy admin /stats answered {status}")
        return sum(int(line.rpartition(": ")[2]) for line in body.splitlines() if ": " in line)

    def close(self) -> None:
        super().close()
        if self.squid is not None:  # stopped by now
            self.top.failures += self.squid.remove_leftovers()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_denials(rig: Rig, p: dict) -> list[dict]:
    """connect() to the refusal: the dialer's reset for the agent, Squid's 403."""
    samples: dict[str, list[float]] = {path: [] for path in rig.deny_paths}
    for run in range(p["deny_runs"]):
        for path in rotated(rig.deny_paths, run):
            client = "dialer+envoy" if path == "dialer" else path
            got = rig.client(client, "deny", p["deny"], to=DENIED)
            if got["not_refused"]:
                raise BenchError(f"deny {path}: {got['not_refused']} connections not refused")
            samples[path] += got["samples_us"]
    return [
        {
            "measure": "deny",
            "path": path,
            "unit": "ms",
            "samples": len(us),
            "value": _percentile(us, 0.5) / 1000,
            "p99": _percentile(us, 0.99) / 1000,
        }
        for path, us in samples.items()
    ]


def measure(rig: Rig, p: dict) -> list[dict]:
    rows: list[dict] = []
    through_envoy = 0
    paths = rig.paths
    per_s: dict[str, list[float]] = {path: [] for path in paths}
    made: dict[str, int] = dict.fromkeys(paths, 0)
    for run in range(p["cps_runs"]):  # interleaved: a noisy moment hits every path alike
        for path in rotated(paths, run):
            got = rig.client(path, "cps", p["cps_s"], p["threads"])
            if got["errors"] or not got["connections"]:
                raise BenchError(f"cps {path}: {got}")
            per_s[path].append(got["connections"] / got["seconds"])
            made[path] += got["connections"]
            through_envoy += got["connections"] if path in ("dialer+envoy", "envoy") else 0
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
    rates: dict[str, list[float]] = {path: [] for path in paths}
    for run in range(p["bulk_runs"]):
        for path in rotated(paths, run):
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
    for r in measure_denials(rig, p):
        rows.append({**r, "ratio": None})
    return rows


def main(quick: bool = False) -> list[dict]:
    reason = needs_root()
    if reason is not None:
        print(f"Envoy end-to-end benchmark skipped: {reason}")
        return []
    params = QUICK if quick else FULL
    started = time.monotonic()
    squid_missing = _squid.ensure_installed()

    def make_rig(top, work) -> Rig:
        rig = Rig(top, work)
        rig.squid_missing = squid_missing
        return rig

    rows = run_rig(
        make_rig, measure, params, prefix=f"clrke{os.getpid()}", tmp_prefix="clrk-bench-envoy-"
    )
    print_table(rows, params, time.monotonic() - started, squid_missing)
    return rows


LABELS = {
    ("cps", "dialer+envoy"): ("connections/s", "agent -> dialer -> Envoy -> upstream"),
    ("cps", "envoy"): ("", "PROXY v2 client -> Envoy -> upstream"),
    ("cps", "squid"): ("", "client -> Squid CONNECT -> upstream"),
    ("cps", "direct"): ("", "client -> upstream"),
    ("bulk", "dialer+envoy"): ("bulk, 1 connection", "agent -> dialer -> Envoy -> upstream"),
    ("bulk", "envoy"): ("", "PROXY v2 client -> Envoy -> upstream"),
    ("bulk", "squid"): ("", "client -> Squid CONNECT -> upstream"),
    ("bulk", "direct"): ("", "client -> upstream"),
    ("deny", "dialer"): ("denial latency", "agent -> dialer, reset"),
    ("deny", "squid"): ("", "client -> Squid CONNECT, 403"),
}


def print_table(
    rows: list[dict], params: dict, seconds: float, squid_missing: str | None = None
) -> None:
    print(
        f"end to end through the gateway (real dialer, Envoy --concurrency 1, clrk_extproc "
        f"access logs) and Squid (one process); {os.cpu_count()} CPUs; cps: median of "
        f"{params['cps_runs']} x {params['cps_s']:g} s, {params['threads']} threads; bulk: "
        f"median of {params['bulk_runs']} x {params['bulk_mib']} MiB; denials: p50/p99 of "
        f"{params['deny_runs']} x {params['deny']}; {seconds:.0f} s in all"
    )
    header = f"{'measure':<19} {'path':<37} {'value':>13} {'unit':<10} {'n':>7} {'vs direct':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        measure, path = LABELS[(r["measure"], r["path"])]
        if r["measure"] == "deny":
            value, unit, ratio = f"{r['value']:.3f} / {r['p99']:.3f}", "ms p50/p99", "-"
        else:
            value, unit, ratio = f"{r['value']:,.0f}", r["unit"], f"{r['ratio']:.2f}x"
        print(f"{measure:<19} {path:<37} {value:>13} {unit:<10} {r['samples']:>7,} {ratio:>9}")
    print(
        "vs direct: value / the same measure on client -> upstream (gw loopback, no dialer, "
        "no Envoy); the agent's and Squid's clients also cross a sandbox veth and its "
        "REDIRECT; Envoy listens on a Unix socket, as `clrk up` lays it out"
    )
    if squid_missing is not None:
        print(f"Squid not run: {squid_missing}")
    for line in target_lines(rows, squid_missing):
        print(line)


def target_lines(rows: list[dict], squid_missing: str | None = None) -> list[str]:
    """Issue 15's L4 lines: the gateway's ratio to direct against Squid's in this run
    (the ratios issue 15 measured only when Squid could not run, and the line says so);
    and its denial latency against Squid's 403."""
    by = {(r["measure"], r["path"]): r for r in rows}
    out = []
    for measure, name, fallback in (
        ("cps", "l4-vs-squid-conns", targets.SQUID_CONNS_RATIO),
        ("bulk", "l4-vs-squid-bulk", targets.SQUID_BULK_RATIO),
    ):
        row = by.get((measure, "dialer+envoy"))
        if row is None:
            continue
        if squid := by.get((measure, "squid")):
            ratio, goal = squid["ratio"], f"Squid {squid['ratio']:.2f}x direct, this run"
        else:
            why = squid_missing or "not run"
            ratio, goal = fallback, f"Squid {fallback:.2f}x as issue 15 measured it; {why}"
        out.append(targets.target_line(
            name, row["ratio"] >= ratio, f"{row['ratio']:.2f}x direct", goal
        ))  # fmt: skip
    deny, squid_deny = by.get(("deny", "dialer")), by.get(("deny", "squid"))
    if deny and squid_deny:
        out.append(targets.target_line(
            "denial-vs-squid", deny["value"] <= squid_deny["value"], f"p50 {deny['value']:.3f} ms",
            f"Squid's 403 p50 {squid_deny['value']:.3f} ms, this run",
        ))  # fmt: skip
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
