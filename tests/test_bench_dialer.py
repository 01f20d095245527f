"""The worker dialer benchmark runs end to end in a throw-away topology (a smoke run: no
timing is asserted) and leaves no namespace behind."""

from __future__ import annotations

import os

import pytest

from bench import dialer_bench
from tests.netns_helpers import namespaces_with_prefix

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]


def _our_namespaces() -> set[str]:
    return namespaces_with_prefix(f"clrkb{os.getpid()}-")


def test_the_dialer_benchmark_reports_every_row_and_cleans_up(capsys):
    rows = dialer_bench.main(quick=True)
    assert {(r["measure"], r["path"]) for r in rows} == set(dialer_bench.LABELS)
    assert all(r["value"] > 0 and r["samples"] > 0 for r in rows)
    assert next(r for r in rows if r["measure"] == "deny")["samples"] == 100
    assert "denial latency" in capsys.readouterr().out
    assert _our_namespaces() == set()


def test_target_lines_name_the_issue_targets():
    from bench.dialer_bench import target_lines

    rows = [
        {"measure": "deny", "path": "dialer", "value": 0.25, "ratio": None},
        {"measure": "dns", "path": "dialer", "value": 9e3, "ratio": 0.3, "lost": 2},
    ]
    goal = "goal >= 0.25x, added p50 <= 0.2 ms, none lost"
    assert target_lines(rows) == [
        "target denial-latency: met (p50 0.250 ms vs goal <= 0.3 ms)",
        f"target dns-qps: MISSED (0.30x direct, 2 lost vs {goal})",
    ]


def test_the_dns_target_counts_the_latency_the_dialer_adds_one_query_at_a_time():
    from bench.dialer_bench import target_lines

    rows = [
        {"measure": "dns", "path": "dialer", "value": 9e3, "ratio": 0.3, "lost": 0},
        {"measure": "dnslat", "path": "dialer", "value": 0.35, "lost": 0},
        {"measure": "dnslat", "path": "direct", "value": 0.05, "lost": 0},
    ]
    goal = "goal >= 0.25x, added p50 <= 0.2 ms, none lost"
    assert target_lines(rows) == [
        f"target dns-qps: MISSED (0.30x direct, added p50 0.300 ms, 0 lost vs {goal})"
    ]
    rows[1]["value"] = 0.2
    assert target_lines(rows) == [
        f"target dns-qps: met (0.30x direct, added p50 0.150 ms, 0 lost vs {goal})"
    ]
