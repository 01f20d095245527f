"""The worker dialer benchmark runs end to end in a throw-away topology (a smoke run: no
timing is asserted) and leaves no namespace behind."""

from __future__ import annotations

import os
import subprocess

import pytest

from bench import dialer_bench

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line}


def test_the_dialer_benchmark_reports_every_row_and_cleans_up(capsys):
    before = _namespaces()
    rows = dialer_bench.main(quick=True)
    assert {(r["measure"], r["path"]) for r in rows} == set(dialer_bench.LABELS)
    assert all(r["value"] > 0 and r["samples"] > 0 for r in rows)
    assert next(r for r in rows if r["measure"] == "deny")["samples"] == 100
    assert "denial latency" in capsys.readouterr().out
    assert _namespaces() == before
