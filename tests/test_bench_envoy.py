"""Smoke run of the end-to-end benchmark (`python -m bench.envoy_bench --quick`): the real
dialer, Envoy and clrk_extproc in a throw-away topology.  Checks that every path and
measure is reported and that nothing is left behind; never the timings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import envoy_bench

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]


def _our_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    prefix = f"clrke{os.getpid()}-"
    return {line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)}


def _children() -> set[int]:
    """PIDs whose parent is this process (read from /proc: no helper process of its own)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == os.getpid():
            out.add(int(stat.parent.name))
    return out


@pytest.mark.timeout(120)
def test_quick_envoy_bench_reports_every_path_and_cleans_up(capsys):
    children = _children()
    rows = envoy_bench.main(quick=True)
    assert {(r["measure"], r["path"]) for r in rows} == set(envoy_bench.LABELS)
    assert all(r["value"] > 0 and r["samples"] > 0 for r in rows)
    assert all(r["ratio"] == 1.0 for r in rows if r["path"] == "direct")
    out = capsys.readouterr().out
    assert "PROXY v2 client -> Envoy -> upstream" in out
    assert "agent -> dialer -> Envoy -> upstream" in out
    assert _our_namespaces() == set()
    assert _children() <= children  # the dialer, Envoy, extproc and sink are gone
