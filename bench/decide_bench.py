"""decide(): the compiled engine against the naive reference, in the same run.

Policies of N routes mix exact names, `*.` wildcards, CIDRs and port ranges; the
connection mix hits each kind and misses (40% exact, 20% wildcard, 20% CIDR, 20% miss).
Each decision is timed on its own with perf_counter_ns, so p50/p99 are per call.
"""

from __future__ import annotations

import gc
import random
import time
from functools import partial

from bench.naive_decide import NaivePolicy
from clrk.api import load_objects
from clrk.policy import Agent, Connection, compile_policies, decide

API = "clrk.apoxy.dev/v1alpha1"
GATEWAY = ("default", "bench")
AGENT = Agent("default", "bot", {"team": "data"})


def policy_documents(routes: int) -> list[dict]:
    docs: list[dict] = [
        {
            "apiVersion": API,
            "kind": "EgressGateway",
            "metadata": {"name": "bench"},
            "spec": {
                "listeners": [
                    {"name": "tcp-out", "protocol": "TCP"},
                    {"name": "tls-out", "protocol": "TLS", "tls": {"mode": "Terminate"}},
                ]
            },
        }
    ]
    for i in range(routes):
        match: dict = {"ports": [{"port": 443}, {"startPort": 8000 + i % 50, "endPort": 8100}]}
        kind = i % 4
        if kind in (0, 1):
            match["destinationHostnames"] = [f"svc{i}.example{i % 97}.com", f"api{i}.example.org"]
        elif kind == 2:
            match["destinationHostnames"] = [f"*.tenant{i}.example.net"]
        else:
            match["destinationCIDRs"] = [f"10.{i // 256 % 256}.{i % 256}.0/24"]
        if i % 10 == 0:
            match["sourceAgents"] = {"matchLabels": {"team": "data"}}
        docs.append(
            {
                "apiVersion": API,
                "kind": "EgressL4Route",
                "metadata": {"name": f"route-{i}"},
                "spec": {
                    "parentRefs": [{"name": "bench", "sectionName": ("tcp-out", "tls-out")[i % 2]}],
                    "rules": [{"matches": [match]}],
                },
            }
        )
    return docs


def connections(routes: int, count: int, rng: random.Random) -> list[Connection]:
    out = []
    for _ in range(count):
        i = rng.randrange(routes)
        roll = rng.random()
        port = rng.choice((443, 8050, 22))
        ip = f"203.0.113.{rng.randrange(1, 255)}"
        if roll < 0.4:
            i -= i % 4
            names = frozenset({f"svc{i}.example{i % 97}.com"})
        elif roll < 0.6:
            i = i - i % 4 + 2 if i - i % 4 + 2 < routes else 2
            names = frozenset({f"x{i}.tenant{i}.example.net"})
        elif roll < 0.8:
            i = i - i % 4 + 3 if i - i % 4 + 3 < routes else 3
            names, ip = frozenset(), f"10.{i // 256 % 256}.{i % 256}.{rng.randrange(1, 255)}"
        else:
            names = frozenset({f"miss{rng.randrange(10**6)}.example.com"})
        out.append(Connection("TCP", ip, port, names))
    return out


def timed(fn, conns: list[Connection], budget_s: float, max_calls: int) -> list[int]:
    samples: list[int] = []
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + budget_s
    gc.disable()
    try:
        while len(samples) < max_calls and time.perf_counter() < deadline:
            for conn in conns:
                start = clock()
                fn(conn)
                end = clock()
                samples.append(end - start)
                if len(samples) >= max_calls or (
                    len(samples) % 64 == 0 and time.perf_counter() > deadline
                ):
                    break
    finally:
        gc.enable()
    return samples


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def main(quick: bool = False) -> list[dict]:
    sizes = (10, 1_000, 10_000)
    rng = random.Random(42)
    rows: list[dict] = []
    for n in sizes:
        docs = policy_documents(n)
        loaded = load_objects(docs)
        assert not loaded.errors, loaded.errors[:3]
        started = time.perf_counter()
        gw = compile_policies(loaded.resources).gateways[GATEWAY]
        compile_ms = (time.perf_counter() - started) * 1000
        conns = connections(n, 2_000, rng)
        naive_policy = NaivePolicy(loaded.resources, GATEWAY)
        labels = ("default", "bot", AGENT.labels)
        # Same answers before timing anything: a fast wrong engine is no result.
        for conn in conns[:: (200 if quick else 20) if n >= 10_000 else 4]:
            got, want = decide(gw, AGENT, conn), naive_policy.decide(labels, conn)
            assert (got.reason, got.route, got.listener) == (
                want.reason,
                want.route,
                want.listener,
            ), conn
        budget = 0.3 if quick else 3.0
        compiled = timed(partial(decide, gw, AGENT), conns, budget, 200_000)
        naive = timed(partial(naive_policy.decide, labels), conns, budget, 20_000)
        for engine, samples in (("compiled", compiled), ("naive", naive)):
            rows.append(
                {
                    "engine": engine,
                    "routes": n,
                    "calls": len(samples),
                    "per_s": len(samples) / (sum(samples) / 1e9),
                    "p50_us": percentile(samples, 0.50),
                    "p99_us": percentile(samples, 0.99),
                    "compile_ms": compile_ms if engine == "compiled" else None,
                }
            )
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    print("decide(): compiled engine vs naive reference (same run, same connections)")
    header = f"{'engine':<9} {'routes':>7} {'calls':>8} {'decisions/s':>12} {'p50 µs':>9} {'p99 µs':>9} {'p50 speedup':>12} {'compile ms':>11}"  # noqa: E501
    print(header)
    print("-" * len(header))
    naive_p50 = {r["routes"]: r["p50_us"] for r in rows if r["engine"] == "naive"}
    for r in rows:
        speedup = naive_p50[r["routes"]] / r["p50_us"] if r["engine"] == "compiled" else 1.0
        compile_ms = f"{r['compile_ms']:.0f}" if r["compile_ms"] is not None else "-"
        print(
            f"{r['engine']:<9} {r['routes']:>7,} {r['calls']:>8,} {r['per_s']:>12,.0f} "
            f"{r['p50_us']:>9.2f} {r['p99_us']:>9.2f} {speedup:>11.0f}x {compile_ms:>11}"
        )
    print("p50/p99: per-call percentiles; speedup: naive p50 / compiled p50 at the same size")
