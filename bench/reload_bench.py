"""Hot reload latency: manifest file written -> the new route enforced by the dialer and
by Envoy, with 1,000 routes in the manifests (issue 4 target: p50 <= 200 ms).

One throw-away network namespace holds the real control plane (`python -m clrk_xds`),
the real Envoy (ADS) and the real dialer (following the control plane's policy stream,
SOCKS5 on loopback), and a prober that also serves the TCP echo every probed address
answers on (192.0.2.0/24 is routed to the namespace's loopback).  Each run writes the
manifests (atomically: write elsewhere, rename in) with one new route, a /32 CIDR on
port 7, and the prober polls every ~5 ms until (a) the dialer allows a SOCKS5 CONNECT
there and (b) Envoy proxies a PROXY-headed connection there.

Where the time goes comes from the processes' JSON logs (control plane: provider.applied,
ads.send, ads.ack of the Listener type; dialer: "policy applied") and from timing the
control plane's reload steps in this process on the same manifests: cold (no cache), and
as a running control plane reloads (its caches warm).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import _targets as targets
from bench import xds_bench
from bench._netns import Topology, needs_root
from bench._rig import child_env

GATEWAY = "default/bench"
AGENT = "bot"
CONTROL_SOCKET = "control-plane.socket"  # in the work directory (private, short enough)
SOCKS = "127.0.0.1:1080"
ENVOY_TCP = "127.0.0.1:15100"  # the gateway's first listener (tcp-out)
FULL = {"routes": 1_000, "runs": 15}
QUICK = {"routes": 100, "runs": 3}
RUN_TIMEOUT = 15.0
START_TIMEOUT = 30.0
TARGET_MS = 200.0
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def bench_documents(routes: int) -> list[dict]:
    """The xds benchmark's manifests, with the TLS listener on port 443 only: a port-7
    probe can then never be TLS, so the dialer decides at once instead of waiting for a
    ClientHello (and answering SOCKS5 "succeeded" before it has decided)."""
    docs = xds_bench.policy_documents(routes)
    docs[0]["spec"]["listeners"][1]["port"] = 443
    return docs


def probe_route(run: int) -> dict:
    return {
        "apiVersion": xds_bench.decide_bench.API,
        "kind": "EgressL4Route",
        "metadata": {"name": f"reload-probe-{run}"},
        "spec": {
            "parentRefs": [{"name": "bench", "sectionName": "tcp-out"}],
            "rules": [
                {"matches": [{"destinationCIDRs": [probe_ip(run) + "/32"], "ports": [{"port": 7}]}]}
            ],
        },
    }


def probe_ip(run: int) -> str:
    return f"192.0.2.{run + 1}"


def _parse_ts(text: str) -> float:
    stamp = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=datetime.UTC).timestamp()


def _log_entries(path: Path, since: int) -> list[dict]:
    with path.open() as f:
        f.seek(since)
        out = []
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _first(entries: list[dict], msg: str, **where: object) -> float | None:
    for e in entries:
        if e.get("msg") == msg and all(e.get(k) == v for k, v in where.items()):
            return _parse_ts(e["ts"])
    return None


def _wait_for(predicate, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout:g}s")


class Rig:
    """The namespace, the processes and the manifest file of one benchmark."""

    def __init__(
        self, top: Topology, work: Path, routes: int, start_timeout: float = START_TIMEOUT
    ) -> None:
        from clrk_xds.envoy_process import EnvoyProcess, render_bootstrap

        self.top, self.work = top, work
        self.base_docs = bench_documents(routes)
        self.base_text = yaml.safe_dump_all(self.base_docs, sort_keys=False)
        self.dir = work / "manifests"
        self.dir.mkdir()
        self.path = self.dir / "policy.yaml"
        self.path.write_text(self.base_text)
        ns = top.create_host()
        subprocess.run(["ip", "-n", ns, "route", "add", "local", "192.0.2.0/24", "dev", "lo"],
                       check=True, capture_output=True)  # fmt: skip
        self.cp_log, self.dialer_log = work / "control-plane.log", work / "dialer.log"
        ads = f"unix:{work / 'run' / CONTROL_SOCKET}"
        self.cp = top.start(ns, [sys.executable, "-m", "clrk_xds", "--manifests", str(self.dir),
                                 "--listen", ads], log=self.cp_log, env=child_env())  # fmt: skip
        _wait_for(
            lambda: "server.listening" in self.cp_log.read_text(), "control plane", start_timeout
        )
        self.envoy = EnvoyProcess(
            render_bootstrap(GATEWAY, ads, admin_port=0),
            netns=ns,
            log_level="warning",
            ready_timeout=start_timeout,
        ).start()
        ready = work / "dialer.ready"
        self.dialer = top.start(ns, [
            sys.executable, "-m", "clrk_worker_dialer", "--control-plane", ads,
            "--gateway", GATEWAY, "--socks5", SOCKS, "--records", str(work / "records.jsonl"),
            "--default-agent", f"default/{AGENT}",  # the prober names it: no credential
            "--ready-file", str(ready),
        ], log=self.dialer_log, env=child_env())  # fmt: skip
        _wait_for(ready.exists, "dialer", start_timeout)
        self.prober = top.start(
            ns,
            [sys.executable, "-m", "bench._reload_probe", "--socks", SOCKS, "--user", AGENT,
             "--agent", f"default/{AGENT}", "--envoy", ENVOY_TCP],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
        )  # fmt: skip
        if self.prober.stdout.readline().strip() != "ready":
            raise RuntimeError("the prober did not start")

    def probe(self, run: int, once: bool = False) -> dict:
        job = {"ip": probe_ip(run), "port": 7, "timeout": RUN_TIMEOUT, "once": once}
        self.prober.stdin.write(json.dumps(job) + "\n")
        self.prober.stdin.flush()
        return json.loads(self.prober.stdout.readline())

    def write(self, run: int) -> float:
        """Install base + one probe route atomically; the wall-clock time of the rename."""
        text = self.base_text + "---\n" + yaml.safe_dump(probe_route(run), sort_keys=False)
        staged = self.work / "policy.staged"  # outside the watched directory
        staged.write_text(text)
        started = time.time()
        os.replace(staged, self.path)
        return started

    def stop(self) -> None:
        self.envoy.stop()
        if self.prober.stdin:
            self.prober.stdin.close()


def one_run(rig: Rig, run: int) -> dict:
    before = rig.probe(run, once=True)
    if any(t is not None for t in before.values()):
        raise RuntimeError(f"run {run}: the probe route is open before the write: {before}")
    cp_mark, dialer_mark = rig.cp_log.stat().st_size, rig.dialer_log.stat().st_size
    t0 = rig.write(run)
    found = rig.probe(run)
    if None in found.values():
        raise RuntimeError(f"run {run}: not enforced within {RUN_TIMEOUT:g}s: {found}")
    time.sleep(0.05)  # let the last log lines land
    cp = _log_entries(rig.cp_log, cp_mark)
    dialer = _log_entries(rig.dialer_log, dialer_mark)

    def ms(t: float | None) -> float | None:
        return None if t is None else (t - t0) * 1000

    return {
        "dialer": ms(found["dialer"]),
        "envoy": ms(found["envoy"]),
        "both": ms(max(found["dialer"], found["envoy"])),
        "path": ms(found["path"]),
        "cp_applied": ms(_first(cp, "provider.applied")),
        "ads_send": ms(_first(cp, "ads.send", type_url=LISTENER_TYPE)),
        "envoy_ack": ms(_first(cp, "ads.ack", type_url=LISTENER_TYPE)),
        "dialer_applied": ms(_first(dialer, "policy applied")),
    }


def reload_steps(path: Path, repeat: int = 3) -> dict[str, float]:
    """The control plane's reload steps (what provider.prepare does, split up), timed
    here on the same manifests: median ms of each.  The load is cold (no file cache)."""
    from clrk.policy.loaded import compile_loaded
    from clrk_xds.consistency import check
    from clrk_xds.provider import default_translator, read_manifests
    from clrk_xds.snapshot import Snapshot

    steps: dict[str, list[float]] = {}

    def timed(name: str, fn, *args, **kw):
        started = time.perf_counter()
        result = fn(*args, **kw)
        steps.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        return result

    for _ in range(repeat):
        m = timed("load+validate", read_manifests, [path])
        compiled = timed("compile", compile_loaded, m).compiled
        # The provider's translator, with a chain cache of its own: a cold translation.
        res = timed("translate", default_translator(), compiled)[GATEWAY]
        snap = timed("serialize", Snapshot.from_messages, res.listeners, res.clusters)
        timed("consistency", check, snap.resources)
    return {name: statistics.median(values) for name, values in steps.items()}


def hot_reload_steps(rig: Rig, repeat: int = 5) -> dict[str, float]:
    """A reload as the control plane runs it, split up and timed here: the manifest,
    compile and chain caches warm, one route more than the last reload each time
    (what the runs do): median ms of each step, and the CPU time of the whole."""
    from clrk.api.loader import ManifestCache
    from clrk.policy.compile import CompileCache
    from clrk.policy.loaded import compile_loaded
    from clrk_xds.provider import _snapshot, default_translator, read_manifests

    directory = rig.work / "hot-steps"
    directory.mkdir()
    path = directory / "policy.yaml"
    cache, compiled, translator = ManifestCache(), CompileCache(), default_translator()
    steps: dict[str, list[float]] = {}

    def timed(name: str, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        steps.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        return result

    for run in range(repeat + 1):
        probe = yaml.safe_dump(probe_route(100 + run), sort_keys=False)
        path.write_text(rig.base_text + "---\n" + probe)
        cpu = time.process_time()
        m = timed("read", read_manifests, [path], cache)
        policies = timed("compile", compile_loaded, m, compiled).compiled
        res = timed("translate", translator, policies)[GATEWAY]
        timed("snapshot+check", _snapshot, GATEWAY, res)
        steps.setdefault("cpu", []).append((time.process_time() - cpu) * 1000)
        if run == 0:  # the first fills the caches, as the control plane's start does
            steps.clear()
    return {name: statistics.median(values) for name, values in steps.items()}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(quick: bool = False) -> dict:
    reason = needs_root()
    if reason is not None:
        print(f"reload benchmark skipped: {reason}")
        return {}
    params = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="clrk-bench-reload-") as tmp:
        top = Topology(f"clrkr{os.getpid()}")
        rig = None
        try:
            rig = Rig(top, Path(tmp), params["routes"])
            runs = [one_run(rig, run) for run in range(params["runs"])]
            steps = reload_steps(rig.path)
            hot = hot_reload_steps(rig)
        finally:
            if rig is not None:
                rig.stop()
            top.close()
            if top.failures:
                print("cleanup problems: " + "; ".join(top.failures), file=sys.stderr)
    result = {"params": params, "runs": runs, "steps": steps, "hot_steps": hot}
    print_table(result)
    return result


COLUMNS = [
    ("both", "enforced by both (max of the two)"),
    ("dialer", "dialer allows (SOCKS5 probe)"),
    ("envoy", "Envoy proxies (PROXY probe)"),
    ("path", "agent -> dialer -> Envoy -> echo"),
    ("cp_applied", "  control plane: provider.applied"),
    ("ads_send", "  control plane: ads.send Listener"),
    ("envoy_ack", "  Envoy ACKs the Listener update"),
    ("dialer_applied", "  dialer: policy applied"),
]


def print_table(result: dict) -> None:
    params, runs = result["params"], result["runs"]
    print(
        f"hot reload, file rename -> enforced; {params['routes']:,} routes + 1 new, "
        f"{params['runs']} runs, probes every ~5 ms; {os.cpu_count()} CPUs"
    )
    header = f"{'ms after the write':<38} {'p50':>8} {'p95':>8} {'min':>8} {'max':>8}"
    print(header)
    print("-" * len(header))
    for key, label in COLUMNS:
        values = [r[key] for r in runs if r[key] is not None]
        if not values:
            print(f"{label:<38} {'-':>8}")
            continue
        print(
            f"{label:<38} {statistics.median(values):>8.0f} {_pct(values, 0.95):>8.0f} "
            f"{min(values):>8.0f} {max(values):>8.0f}"
        )
    p50 = statistics.median(r["both"] for r in runs)
    print(
        targets.target_line(
            "reload", p50 <= TARGET_MS, f"p50 {p50:.0f} ms, {len(runs)} runs",
            f"goal <= {TARGET_MS:.0f} ms",
        )
    )  # fmt: skip
    steps = result["steps"]
    print(
        "control plane reload steps, timed in-process on the same manifests (median ms): "
        + ", ".join(f"{k} {v:.0f}" for k, v in steps.items())
        + f"; sum {sum(steps.values()):.0f}"
    )
    hot = dict(result["hot_steps"])
    cpu = hot.pop("cpu")
    print(
        "a reload as the control plane runs it (caches warm, one route more), in-process "
        "(median ms): " + ", ".join(f"{k} {v:.0f}" for k, v in hot.items())
        + f"; sum {sum(hot.values()):.0f}, CPU {cpu:.0f}"
    )  # fmt: skip


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
