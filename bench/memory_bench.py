"""Resident memory of the gateway's parts (issue 15): the control plane, Envoy and the
dialer, as the reload benchmark starts them in a throw-away namespace, idle on a
one-route policy and on 10,000 routes (`--quick`: 1,000).  clrk_extproc's memory does
not grow with routes (it keeps no policy) and is not started here.

Read from /proc/PID/status (VmRSS) once every part is up and the dialer has its policy;
one sample each, after a short settle: memory, unlike time, is not noisy here.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bench import reload_bench
from bench._netns import Topology, needs_root

FULL = {"routes": (1, 10_000)}
QUICK = {"routes": (1, 1_000)}
SETTLE_S = 1.0
START_TIMEOUT = 300.0  # a cold start at 10,000 routes on a busy machine


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of a process in MiB; None when it is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(routes: int) -> dict[str, float | None]:
    with tempfile.TemporaryDirectory(prefix="clrk-bench-memory-") as tmp:
        top = Topology(f"clrkm{os.getpid()}")
        rig = None
        try:
            rig = reload_bench.Rig(top, Path(tmp), routes, start_timeout=START_TIMEOUT)
            time.sleep(SETTLE_S)
            return {
                "control plane": rss_mib(rig.cp.pid),
                "Envoy": rss_mib(rig.envoy.pid),
                "dialer": rss_mib(rig.dialer.pid),
            }
        finally:
            if rig is not None:
                rig.stop()
            top.close()


def main(quick: bool = False) -> list[dict]:
    reason = needs_root()
    if reason is not None:
        print(f"memory benchmark skipped: {reason}")
        return []
    rows = [{"routes": n, **measure(n)} for n in (QUICK if quick else FULL)["routes"]]
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    parts = [k for k in rows[0] if k != "routes"] if rows else []
    print("resident memory (MiB, VmRSS) of each part, idle, by routes in the policy")
    print(f"{'routes':>8} " + " ".join(f"{p:>14}" for p in parts))
    for r in rows:
        cells = [f"{r[p]:>14.1f}" if r[p] is not None else f"{'-':>14}" for p in parts]
        print(f"{r['routes']:>8,} " + " ".join(cells))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
