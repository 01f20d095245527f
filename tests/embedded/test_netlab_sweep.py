"""A killed run's namespaces, and the processes still running inside them, are swept."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from clrk_cli.demo.netlab import sweep_stale

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces"),
]


def test_a_dead_runs_namespace_and_its_orphans_go_a_live_runs_stays():
    dead = "clrk-sweeptest-p999999999-host"  # no such PID
    live = f"clrk-sweeptest-p{os.getpid()}-host"
    pattern = re.compile(r"^clrk-sweeptest-p(\d+)-")
    for name in (dead, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", dead, "sleep", "300"])
    try:
        time.sleep(0.2)
        assert sweep_stale(pattern, grace=2.0) == [dead]
        assert orphan.wait(5) is not None  # ended, not left running in a hidden namespace
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert dead not in names and live in names
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        for name in (dead, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
