"""Smoke run of the end-to-end benchmark (`python -m bench.envoy_bench --quick`): the real
dialer, Envoy and clrk_extproc in a throw-away topology, and a real Squid beside them
(installed by `make test` as root, else by the bench).  Checks that every path and
measure is reported and that nothing is left behind; never the timings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import _squid, envoy_bench
from tests.netns_helpers import child_pids, namespaces_with_prefix

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]


def _our_namespaces() -> set[str]:
    return namespaces_with_prefix(f"clrke{os.getpid()}-")


def _squid_segments() -> list[Path]:
    return list(_squid.SHM.glob(f"clrkbench{os.getpid()}-*"))


@pytest.mark.timeout(600)  # the bench may first have to install Squid
def test_quick_envoy_bench_reports_every_path_squid_included_and_cleans_up(capsys):
    before = child_pids()
    rows = envoy_bench.main(quick=True)
    assert {(r["measure"], r["path"]) for r in rows} == set(envoy_bench.LABELS)
    assert all(r["value"] > 0 and r["samples"] > 0 for r in rows)
    assert all(r["ratio"] == 1.0 for r in rows if r["path"] == "direct")
    out = capsys.readouterr().out
    assert "PROXY v2 client -> Envoy -> upstream" in out
    assert "agent -> dialer -> Envoy -> upstream" in out
    assert "client -> Squid CONNECT -> upstream" in out
    assert "client -> Squid CONNECT, 403" in out
    assert "Squid not run" not in out
    assert "direct, this run)" in out  # the L4 targets compare with this run's Squid
    assert _our_namespaces() == set()
    assert child_pids() <= before  # the dialer, Envoy, extproc, sink and Squid are gone
    assert _squid_segments() == []


def test_target_lines_compare_the_gateway_with_squid_in_the_same_run():
    from bench.envoy_bench import target_lines

    rows = [
        {"measure": "cps", "path": "dialer+envoy", "ratio": 0.39},
        {"measure": "cps", "path": "squid", "ratio": 0.55},
        {"measure": "bulk", "path": "dialer+envoy", "ratio": 0.7},
        {"measure": "bulk", "path": "squid", "ratio": 0.5},
        {"measure": "bulk", "path": "direct", "ratio": 1.0},
        {"measure": "deny", "path": "dialer", "value": 0.2, "ratio": None},
        {"measure": "deny", "path": "squid", "value": 0.26, "ratio": None},
    ]
    assert target_lines(rows) == [
        "target l4-vs-squid-conns: MISSED (0.39x direct vs Squid 0.55x direct, this run)",
        "target l4-vs-squid-bulk: met (0.70x direct vs Squid 0.50x direct, this run)",
        "target denial-vs-squid: met (p50 0.200 ms vs Squid's 403 p50 0.260 ms, this run)",
    ]


def test_without_squid_the_l4_lines_fall_back_to_issue_15s_ratios_and_say_why():
    from bench.envoy_bench import target_lines

    rows = [
        {"measure": "cps", "path": "dialer+envoy", "ratio": 0.39},
        {"measure": "bulk", "path": "dialer+envoy", "ratio": 0.7},
    ]
    cps, bulk = target_lines(rows, "apt-get exited 100")
    assert cps == (
        "target l4-vs-squid-conns: MISSED (0.39x direct vs Squid 0.60x as issue 15 measured "
        "it; apt-get exited 100)"
    )
    assert bulk.startswith("target l4-vs-squid-bulk: met (0.70x direct vs Squid 0.50x as issue")
