"""`clrk up` and `clrk run` end to end (issue 6): the real stack (control plane, Envoy,
dialer; ext_proc when it exists) under the supervisor in a test namespace (never the
root namespace), real agents via `clrk run`, real servers on documentation addresses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import pytest

from clrk.records.query import iter_records, select
from tests.e2e.topology import wait_until
from tests.embedded.up_harness import CURL, clrk, pid_gone
from tests.netns_helpers import agent_script

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]

HERE = Path(__file__).resolve().parent


def test_run_allows_denies_and_records(stack):
    ok = stack.run(*CURL, "http://example.test/")
    assert ok.returncode == 0, ok.stderr
    assert "hello" in ok.stdout
    denied = stack.run(*CURL, "http://other.test/")
    assert denied.returncode in (7, 56), denied.stderr  # reset: connect or first recv
    records = select(
        iter_records(str(stack.state / "records.jsonl")),
        {"agent.name": "bot", "clrk.dst.name": "other.test"},
        name="egress.dial.denied",
    )
    spans = [r for r in records if r["signal"] == "span"]
    assert len(spans) == 1, records
    reason = spans[0]["attributes"]["clrk.egress.deny_reason"]
    assert f'clrk_decisions_total{{decision="deny",reason="{reason}"}}' in stack.metrics()


def test_run_passes_exit_codes_and_removes_its_sandbox(stack):
    assert stack.run("sh", "-c", "exit 7").returncode == 7
    assert stack.run("sh", "-c", "kill -TERM $$").returncode == 143
    assert stack.run("no-such-program-xyz").returncode != 0
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "clrk-r-" not in netns
    left = [p.name for p in (stack.state / "sandboxes").iterdir()]
    assert left in ([], ["slots.lock"])  # the lock that slots are taken under stays


def test_run_injects_the_gateway_ca(stack):
    out = stack.run(
        "sh",
        "-c",
        "for v in SSL_CERT_FILE REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS "
        'CURL_CA_BUNDLE; do eval echo \\$$v; done; cat "$SSL_CERT_FILE"',
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(set(lines[:4])) == 1 and lines[0].endswith("ca-bundle.pem")
    ca = (stack.state / "ca" / "ca.crt").read_text().strip()
    assert ca in out.stdout


def test_run_explicit_proxy_names_the_agent(stack):
    # Inside gw the proxies are on loopback; run as a non-sandboxed agent would.
    def curl(url: str) -> subprocess.CompletedProcess[str]:
        argv = clrk("run", "--explicit", "--agent", "bot", "--state-dir", str(stack.state),
                    "--", *CURL, url)  # fmt: skip
        return stack.topology.run_in_gw(argv, timeout=30)

    out = curl("http://example.test/")
    assert out.returncode == 0 and "hello" in out.stdout, out.stderr
    assert curl("http://other.test/").returncode != 0


def test_run_without_a_stack_fails(tmp_path):
    out = subprocess.run(
        clrk("run", "--agent", "bot", "--state-dir", str(tmp_path), "--", "true"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and "no running `clrk up`" in out.stderr


@pytest.mark.parametrize("child", ["envoy", "dialer", "extproc"])
def test_a_killed_child_is_restarted_and_nothing_denied_gets_through(stack, child):
    health = stack.health()
    if child not in health["children"]:
        pytest.skip(f"{child} is not part of the stack yet")
    agent = subprocess.Popen(
        clrk(
            "run",
            "--agent",
            "bot",
            "--state-dir",
            str(stack.state),
            "--",
            *agent_script(HERE / "agent_loop.py", "example.test", "other.test"),
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parents[1])},
    )
    # A thread reads the lines: select() on a buffered pipe misses lines already buffered.
    queue: Queue[str] = Queue()
    reader = threading.Thread(target=lambda: [queue.put(x) for x in agent.stdout], daemon=True)
    reader.start()
    try:
        lines = []

        def until(predicate, timeout: float):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    line = queue.get(timeout=max(deadline - time.monotonic(), 0.01))
                except Empty:
                    break
                lines.append(json.loads(line))
                if predicate(lines[-1]):
                    return lines[-1]
            raise AssertionError(f"not within {timeout}s: {lines[-5:]} {stack.log()[-2000:]}")

        until(lambda e: e["kind"] == "allowed" and e["result"] == "ok", 20)
        pid = health["children"][child]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        # The agent's clock and ours are both CLOCK_MONOTONIC.
        back = until(
            lambda e: e["kind"] == "allowed" and e["result"] == "ok" and e["t"] > killed, 10
        )
        assert back["t"] - killed < 5.0
        assert all(e["result"] == "refused" for e in lines if e["kind"] == "denied")
        new = stack.health()["children"][child]
        assert new["pid"] != pid and new["restarts"] >= 1
        assert pid_gone(pid)
    finally:
        agent.stdin.close()
        agent.wait(30)
        reader.join(5)


def _pids_in(netns: str) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in listed.stdout.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _netns_names() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def test_the_next_run_in_a_killed_runs_slot_removes_what_it_left(stack):
    """A SIGKILLed `clrk run` leaves its sandbox, the agent still running in it and its
    registration (whose addresses the next sandbox in that slot gets).  The next run
    taking the slot ends that agent and removes all of it, then works as usual; the
    module's leak check covers links and rules."""
    sandboxes = stack.state / "sandboxes"
    killed = subprocess.Popen(
        clrk("run", "--agent", "bot", "--state-dir", str(stack.state), "--", "sleep", "300"),
        env={**os.environ, "PYTHONPATH": str(HERE.parents[1])},
    )
    try:
        deadline = time.monotonic() + 20
        while not list(sandboxes.glob("*.ack")) and time.monotonic() < deadline:
            time.sleep(0.05)
        (ack,) = sandboxes.glob("*.ack")
        name = ack.name.removesuffix(".ack")
        sleepers: list[int] = []
        while not sleepers and time.monotonic() < deadline:  # it starts after the ack
            sleepers = [p for p in _pids_in(name) if _comm(p) == "sleep"]
            time.sleep(0.02)
        (sleeper,) = sleepers
    finally:
        killed.kill()
        killed.wait(10)
    # The agent's processes end with their `clrk run`; its sandbox and registration stay.
    wait_until(lambda: pid_gone(sleeper), 5, "the agent ends with its clrk run")
    assert name in _netns_names() and (sandboxes / f"{name}.json").exists()

    out = stack.run(*CURL, "http://example.test/")
    assert out.returncode == 0 and "hello" in out.stdout, out.stderr
    assert name not in _netns_names()
    assert pid_gone(sleeper)
    assert not (sandboxes / f"{name}.json").exists()
    assert not Path(f"/etc/netns/{name}").exists()


def test_up_stops_cleanly(stack):
    """Last in this module: SIGINT ends every child and removes up.json (the module's
    leak check then covers namespaces, links and rules)."""
    pids = [c["pid"] for c in stack.health()["children"].values()]
    assert all(pids)
    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(30) == 0
    assert all(pid_gone(pid) for pid in pids)
    assert not (stack.state / "up.json").exists()
