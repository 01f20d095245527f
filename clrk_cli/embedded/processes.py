"""Child-process chores: whether a PID still names a process (slot locks, registrations
and test runs name their owner by PID), and stopping a child politely, then firmly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


def pid_alive(pid: int) -> bool:
    """True while `pid` names a process, also one this user may not signal (EPERM)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def end_pids(pids: list[int], grace: float) -> None:
    """SIGTERM, then SIGKILL what is left after `grace` seconds (processes that are not
    our children, so there is nothing to reap)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)


def end_processes_in_netns(netns: str, grace: float) -> None:
    """End whatever still runs in a network namespace that is about to be deleted: the
    deletion would only hide those processes, still running."""
    listed = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    end_pids([int(p) for p in listed.stdout.split() if p.isdigit()], grace)
