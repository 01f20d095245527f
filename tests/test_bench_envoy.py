"""Smoke run of the end-to-end benchmark (`python -m bench.envoy_bench --quick`): the real
dialer, Envoy and clrk_extproc in a throw-away topology.  Checks that every path and
measure is reported and that nothing is left behind; never the timings."""

from __future__ import annotations

import os

import pytest

from bench import envoy_bench
from tests.netns_helpers import child_pids, namespaces_with_prefix

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]


def _our_namespaces() -> set[str]:
    return namespaces_with_prefix(f"clrke{os.getpid()}-")


@pytest.mark.timeout(120)
def test_quick_envoy_bench_reports_every_path_and_cleans_up(capsys):
    before = child_pids()
    rows = envoy_bench.main(quick=True)
    assert {(r["measure"], r["path"]) for r in rows} == set(envoy_bench.LABELS)
    assert all(r["value"] > 0 and r["samples"] > 0 for r in rows)
    assert all(r["ratio"] == 1.0 for r in rows if r["path"] == "direct")
    out = capsys.readouterr().out
    assert "PROXY v2 client -> Envoy -> upstream" in out
    assert "agent -> dialer -> Envoy -> upstream" in out
    assert _our_namespaces() == set()
    assert child_pids() <= before  # the dialer, Envoy, extproc and sink are gone


def test_target_lines_compare_the_gateway_with_squid():
    from bench.envoy_bench import target_lines

    rows = [
        {"measure": "cps", "path": "dialer+envoy", "ratio": 0.39},
        {"measure": "bulk", "path": "dialer+envoy", "ratio": 0.7},
        {"measure": "bulk", "path": "direct", "ratio": 1.0},
    ]
    cps, bulk = target_lines(rows)
    assert cps.startswith("target l4-vs-squid-conns: MISSED (0.39x direct vs Squid 0.60x")
    assert bulk.startswith("target l4-vs-squid-bulk: met (0.70x direct vs Squid 0.50x")
