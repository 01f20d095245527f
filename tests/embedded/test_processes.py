"""pid_alive and stop_process over real child processes."""

from __future__ import annotations

import os
import subprocess
import sys

from clrk_cli.embedded.processes import pid_alive, stop_process


def test_this_process_is_alive():
    assert pid_alive(os.getpid())


def test_a_reaped_child_is_gone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)


def test_stop_process_kills_a_child_that_ignores_sigterm():
    ignore = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    proc = subprocess.Popen(
        [sys.executable, "-c", ignore + "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"  # SIGTERM is ignored from here on
    stop_process(proc, grace=0.2)
    assert proc.returncode == -9
    proc.stdout.close()


def test_stop_process_leaves_an_exited_child_alone():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    stop_process(proc, grace=0.2)
    assert proc.returncode == 3
