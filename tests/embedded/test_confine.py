"""clrk_cli.embedded.confine, the agent's process tree under `clrk run`: run for real as
root in a scratch network namespace, with real tools as the agent.  (Inside a real
sandbox of a running `clrk up`: test_run_confinement.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clrk_cli.embedded import confine
from clrk_cli.embedded.agent_user import DEDICATED_GID, DEDICATED_UID
from tests.e2e.topology import wait_until
from tests.netns_helpers import scratch_netns

UID = DEDICATED_UID
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, setuid")

STATUS = """\
Name:\tsh
Uid:\t65533\t65533\t65533\t65533
Gid:\t65533\t65533\t65533\t65533
NoNewPrivs:\t1
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t0000000000000000
CapAmb:\t0000000000000000
"""


def test_a_status_without_anything_left_is_confined():
    assert confine.unconfined(confine.status_fields(STATUS), UID, DEDICATED_GID) == []


def test_every_capability_set_uid_and_no_new_privs_are_checked():
    for needle, replacement in (
        ("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff"),
        ("CapInh:\t0000000000000000", "CapInh:\t0000000000000400"),
        ("NoNewPrivs:\t1", "NoNewPrivs:\t0"),
        ("Uid:\t65533\t65533\t65533\t65533", "Uid:\t65533\t0\t65533\t65533"),
    ):
        left = confine.unconfined(
            confine.status_fields(STATUS.replace(needle, replacement)), UID, DEDICATED_GID
        )
        assert len(left) == 1, (needle, left)
    assert confine.unconfined({}, UID, DEDICATED_GID)  # nothing known: not confined


def test_the_command_runs_the_script_by_path_as_a_child_of_this_process():
    argv = confine.command("clrk-r-p1-1", 1000, 1000, ["curl", "-sS", "x"])
    assert argv[:4] == ["ip", "netns", "exec", "clrk-r-p1-1"]
    assert argv[5:7] == ["-I", str(Path(confine.__file__).resolve())]
    assert argv[argv.index("--uid") + 1] == argv[argv.index("--gid") + 1] == "1000"
    assert argv[argv.index("--parent") + 1] == str(os.getpid())
    assert argv[-4:] == ["--", "curl", "-sS", "x"]


@pytest.fixture
def netns():
    with scratch_netns(f"clrk-confine-p{os.getpid()}") as name:
        yield name


def run_confined(netns: str, *argv: str, uid: int = UID, timeout: float = 20.0, **kw):
    return subprocess.run(
        confine.command(netns, uid, uid, list(argv)),
        capture_output=True, text=True, timeout=timeout, cwd="/", **kw,
    )  # fmt: skip


@root_only
def test_the_agent_has_no_capability_and_no_way_to_gain_one(netns):
    out = run_confined(netns, "sh", "-c", "id -u; id -G; cat /proc/self/status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == [str(UID), str(UID)]
    assert confine.unconfined(confine.status_fields(out.stdout), UID, UID) == []


@root_only
def test_the_agent_sees_only_its_own_processes_and_no_privileged_one(netns):
    out = run_confined(netns, "ps", "-e", "-o", "pid=,uid=,comm=")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert [row[0] for row in rows] == ["1", "2"]  # confine's PID 1 and ps itself
    assert {row[1] for row in rows} == {str(UID)}
    assert rows[1][2] == "ps"
    # This test's own process is nowhere to be seen.
    probe = run_confined(netns, "ls", f"/proc/{os.getpid()}")
    assert probe.returncode != 0


@root_only
def test_network_and_namespace_changes_are_refused(netns):
    for argv in (
        ["ip", "addr", "add", "192.0.2.99/32", "dev", "lo"],
        ["ip", "link", "add", "x0", "type", "dummy"],
        ["iptables", "-w", "-F"],
        ["nsenter", "--net=/proc/1/ns/net", "true"],
        ["nsenter", f"--net=/run/netns/{netns}", "true"],
        ["unshare", "--net", "true"],
    ):
        out = run_confined(netns, *argv)
        assert out.returncode != 0, (argv, out.stdout)
    links = subprocess.run(["ip", "-n", netns, "-o", "link"], capture_output=True, text=True)
    assert "x0" not in links.stdout


@root_only
def test_exit_codes_and_signals_come_back_as_a_shell_reports_them(netns):
    assert run_confined(netns, "sh", "-c", "exit 7").returncode == 7
    assert run_confined(netns, "sh", "-c", "kill -TERM $$").returncode == 143
    assert run_confined(netns, "no-such-program-xyz").returncode == 127
    assert run_confined(netns, "true", uid=0).returncode == confine.SETUP_FAILED


@root_only
def test_a_signal_to_the_outer_process_reaches_the_agent(netns):
    proc = subprocess.Popen(
        confine.command(netns, UID, UID, ["sh", "-c", "trap 'exit 9' TERM; echo up; "
                                                         "while :; do sleep 0.1; done"]),
        stdout=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "up\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 9
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


KILLED_PARENT = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:-1] + ["--parent", str(os.getpid()), "--", "sleep", "300"])
print(proc.pid, flush=True)
proc.wait()
"""


@root_only
def test_every_process_of_the_sandbox_ends_when_clrk_run_is_killed(netns):
    argv = confine.command(netns, UID, UID, ["x"])
    before_parent = argv[: argv.index("--parent")]
    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT, *before_parent, "x"],
        stdout=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    try:
        int(parent.stdout.readline())

        def pids() -> list[str]:
            out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
            return out.stdout.split()

        wait_until(lambda: len(pids()) == 3, 10, "outer process, PID 1 and the agent")
        parent.kill()
        parent.wait()
        wait_until(lambda: pids() == [], 5, "the sandbox's processes end")
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


@root_only
def test_a_confinement_whose_clrk_run_is_gone_runs_nothing(netns):
    argv = confine.command(netns, UID, UID, ["sleep", "300"])
    argv[argv.index("--parent") + 1] = "1"  # not its parent: as if `clrk run` had died
    assert subprocess.run(argv, cwd="/", timeout=20).returncode == confine.SETUP_FAILED
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    assert out.stdout.split() == []


@root_only
def test_the_per_user_runtime_directories_are_hidden(netns):
    """A session bus or the user's service manager under /run/user would start processes
    outside the sandbox for an agent running as that user."""
    session = Path("/run/user") / str(UID)  # as if the agent's user were logged in
    made = [p for p in (session.parent, session) if not p.exists()]
    session.mkdir(parents=True, exist_ok=True)
    try:
        assert run_confined(netns, "ls", "-A", "/run/user").stdout == ""
    finally:
        for path in reversed(made):
            path.rmdir()
