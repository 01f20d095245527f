"""Issue 15's closing lines: one per target, `target NAME: met|MISSED (measured vs goal)`."""

from __future__ import annotations

# Squid as a CONNECT allowlist on this machine, as issue 15 measured it: what clrk's L4
# ratios are held to only when the bench cannot run Squid itself (the line says so).
SQUID_CONNS_RATIO = 0.60
SQUID_BULK_RATIO = 0.50


def target_line(name: str, met: bool, measured: str, goal: str) -> str:
    return f"target {name}: {'met' if met else 'MISSED'} ({measured} vs {goal})"
