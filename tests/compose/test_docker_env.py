"""What a killed compose test leaves is swept by the next: its containers' processes
(by our cgroup parent), its daemon (by its namespace), the namespaces and cgroups."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from clrk_cli.embedded.processes import pid_alive
from tests.compose.docker_env import CGROUP_ROOT, PREFIX, sweep_stale

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, cgroups"),
]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _orphan(*argv: str) -> None:
    """Start argv detached, as a killed run leaves its processes: not our children."""
    subprocess.run(["setsid", "-f", *argv], check=True)


def _wait_for(read, what: str) -> int:
    for _ in range(100):
        if text := read().split():
            return int(text[0])
        time.sleep(0.05)
    raise AssertionError(f"{what} did not start")


def _rmdir(path: Path) -> None:
    for _ in range(20):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def test_a_dead_runs_processes_namespaces_and_cgroups_are_swept():
    name = f"{PREFIX}{_dead_pid()}"
    live = f"{PREFIX}{os.getpid()}"  # a live run's namespace is left alone
    cgroup = CGROUP_ROOT / "pids" / name / "container"
    pids: list[int] = []
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "add", live], check=True)
    try:
        cgroup.mkdir(parents=True)
        _orphan("ip", "netns", "exec", name, "sleep", "600")
        pids.append(_wait_for(lambda: subprocess.run(["ip", "netns", "pids", name],
                    capture_output=True, text=True).stdout, "the daemon"))  # fmt: skip
        _orphan("sh", "-c", f"echo $$ > {cgroup / 'cgroup.procs'} && exec sleep 600")
        pids.append(_wait_for((cgroup / "cgroup.procs").read_text, "the container"))
        assert name in sweep_stale()
        assert not [pid for pid in pids if pid_alive(pid)]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert name not in listed and live in listed
        assert not cgroup.parent.exists()
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, 9)
        for ns in (name, live):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        _rmdir(cgroup)
        _rmdir(cgroup.parent)
