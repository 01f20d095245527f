"""Smoke run of the reload benchmark (`python -m bench.reload_bench --quick`): the real
control plane, Envoy and dialer in a throw-away namespace; checks the shape of the
result, never the timings."""

from __future__ import annotations

import os
import subprocess

import pytest

from bench import reload_bench

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces"),
]


def _our_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if f"r{os.getpid()}-" in line}


@pytest.mark.timeout(120)
def test_quick_reload_bench_measures_every_stage_and_cleans_up(capsys):
    result = reload_bench.main(quick=True)
    assert len(result["runs"]) == reload_bench.QUICK["runs"]
    for run in result["runs"]:
        assert all(run[key] is not None and run[key] > 0 for key, _ in reload_bench.COLUMNS)
        assert run["both"] == max(run["dialer"], run["envoy"])
    assert set(result["steps"]) >= {"load+validate", "compile", "translate", "serialize"}
    assert set(result["hot_steps"]) == {"read", "compile", "translate", "snapshot+check", "cpu"}
    assert "\ntarget reload: " in capsys.readouterr().out
    assert _our_namespaces() == set()
