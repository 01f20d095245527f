"""`make run` as a person uses it: the demo keeps the gateway running until Ctrl-C, and
Ctrl-C leaves no process, namespace or rule behind (issue 6, acceptance 1)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.topology import leaks, snapshot

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.root
@pytest.mark.timeout(240)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables")
def test_ctrl_c_stops_the_running_demo_and_leaves_nothing():
    before = snapshot()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clrk_cli.demo", "--ready-timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    seen = ""
    try:
        # Raw reads: a buffered readline after select() can sit on lines already read.
        deadline = time.monotonic() + 150
        while "Ctrl-C stops everything" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk.decode(errors="replace")
        assert "Ctrl-C stops everything" in seen, seen
        time.sleep(1.0)  # a person reads the table; the gateway keeps running meanwhile
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:  # failed half-way: still let the demo clean up after itself
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, seen + out
    assert "stopped; nothing left behind" in out
    assert not leaks(before, snapshot())
