"""The agent cannot leave its sandbox (issue 11, items 1 and 5): every attack from the
issue, made from inside a real `clrk run` sandbox of a running `clrk up` with real tools
(nsenter, kill, cat, nc, iptables, ip, ps, curl), fails; the agent's traffic is still
intercepted as before.  And nothing but the gateway's own user reaches its control
plane.  (The process tree itself: test_confine.py; the anti-spoofing rules:
tests/e2e/test_anti_spoofing.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from clrk.records.query import iter_records, select
from clrk_cli.embedded.agent_user import DEDICATED_UID
from tests.embedded.up_harness import CURL, clrk, pid_gone

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]


def dialer_pid(stack) -> int:
    return stack.health()["children"]["dialer"]["pid"]


def control_plane_path(stack) -> str:
    info = json.loads((stack.state / "up.json").read_text())
    return info["control_plane"].removeprefix("unix:")


def failed(out: subprocess.CompletedProcess, *why: str) -> bool:
    return out.returncode != 0 and any(w in out.stderr for w in why)


def test_the_agent_is_an_unprivileged_user_without_any_capability(stack):
    out = stack.run("sh", "-c", "id -u; id -G; grep -E '^(Cap|NoNewPrivs)' /proc/self/status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == [str(DEDICATED_UID), str(DEDICATED_UID)]
    fields = dict(line.split(":\t") for line in lines[2:])
    assert fields.pop("NoNewPrivs") == "1"
    assert set(fields) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert {int(v, 16) for v in fields.values()} == {0}


def test_the_agent_cannot_enter_or_signal_the_gateway(stack):
    pid = dialer_pid(stack)
    via_proc = stack.run("nsenter", f"--net=/proc/{pid}/ns/net", "true")
    assert failed(via_proc, "No such file"), via_proc.stderr  # no gateway process in its /proc
    named = stack.run("nsenter", f"--net=/run/netns/{stack.topology.gw}", "true")
    assert failed(named, "Operation not permitted"), named.stderr
    killed = stack.run("kill", "-9", str(pid))
    assert killed.returncode != 0
    assert not pid_gone(pid) and dialer_pid(stack) == pid


def test_ps_and_proc_show_only_the_agents_own_processes(stack):
    out = stack.run("ps", "-e", "-o", "pid=,uid=,comm=")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert {row[1] for row in rows} == {str(DEDICATED_UID)}, rows
    assert rows[0][0] == "1" and rows[-1][2] == "ps" and len(rows) == 2  # its init, and ps
    owners = stack.run("sh", "-c", "for p in /proc/[0-9]*; do stat -c %u $p; done")
    assert set(owners.stdout.split()) == {str(DEDICATED_UID)}  # no process of the gateway


def test_the_ca_key_and_the_whole_state_directory_are_out_of_reach(stack):
    state = stack.state
    assert (state / "ca" / "ca.key").is_file()
    for argv in (
        ["cat", str(state / "ca" / "ca.key")],
        ["cat", str(state / "up.json")],
        ["ls", str(state)],
        ["sh", "-c", f"echo '{{}}' > {state / 'sandboxes' / 'forged.json'}"],
    ):
        out = stack.run(*argv)
        assert failed(out, "Permission denied"), (argv, out.stdout, out.stderr)
    assert not (state / "sandboxes" / "forged.json").exists()


def test_envoys_listener_sockets_and_the_control_plane_socket_refuse_the_agent(stack):
    # STATE/run/envoy, or a private directory of /tmp when that path is too long.
    control = Path(control_plane_path(stack))
    paths = [*sorted(control.parent.glob("*.sock")), control]
    assert len(paths) == 3 and all(p.is_socket() for p in paths)  # tcp, tls, control plane
    for path in paths:
        out = stack.run("sh", "-c", f"printf 'PROXY' | nc -U -w 1 {path}")
        assert failed(out, "Permission denied"), (path, out.stdout, out.stderr)


def test_the_agent_cannot_change_the_rules_links_or_addresses(stack):
    for argv in (
        ["iptables", "-w", "-F"],
        ["iptables", "-w", "-t", "nat", "-F"],
        ["ip6tables", "-w", "-t", "raw", "-F"],
        ["ip", "addr", "add", "198.18.0.99/32", "dev", "eth0"],
        ["ip", "link", "add", "x0", "type", "dummy"],
        ["ip", "link", "set", "eth0", "down"],
    ):
        out = stack.run(*argv)
        assert out.returncode != 0, (argv, out.stdout)
        assert "not permitted" in out.stderr or "Permission denied" in out.stderr, out.stderr


def test_the_agents_traffic_is_intercepted_as_before(stack):
    t0 = time.time_ns()
    ok = stack.run(*CURL, "http://example.test/")
    assert ok.returncode == 0 and "hello" in ok.stdout, ok.stderr
    denied = stack.run(*CURL, "http://third.test/")
    assert denied.returncode in (7, 56), denied.stderr
    time.sleep(0.6)  # the record writer batches
    records = select(
        iter_records(str(stack.state / "records.jsonl")),
        {"agent.name": "bot", "clrk.dst.name": "third.test"},
        name="egress.dial.denied",
    )
    assert [r["signal"] for r in records if (r["time"] or 0) >= t0].count("span") == 1


def test_the_agent_user_can_be_chosen_but_never_root(stack):
    assert stack.run("id", "-u", extra=["--user", "nobody"]).stdout.strip() == "65534"
    sudo = {**os.environ, "SUDO_UID": "65534", "SUDO_GID": "65534"}
    out = subprocess.run(
        clrk("run", "--agent", "bot", "--state-dir", str(stack.state), "--", "id", "-u"),
        capture_output=True, text=True, timeout=30, env=sudo,
    )  # fmt: skip
    assert out.stdout.strip() == "65534", out.stderr
    for user in ("root", "0"):
        refused = stack.run("id", "-u", extra=["--user", user])
        assert refused.returncode == 1 and "root" in refused.stderr


def test_privileged_says_loudly_what_it_gives_up(stack):
    out = stack.run("sh", "-c", "id -u; grep CapEff /proc/self/status", extra=["--privileged"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "0" and "000001ff" in out.stdout
    assert "can leave the sandbox" in out.stderr and "never for an untrusted agent" in out.stderr


def test_a_state_directory_the_agent_could_replace_is_refused(stack):
    """The dialer trusts the sandbox registrations in STATE: a parent the agent's user may
    write would let it swap the whole directory for one of its own."""
    shared = Path(tempfile.mkdtemp(prefix="clrk-test-shared-"))
    try:
        shared.chmod(0o777)  # writable by everyone, not sticky
        state = shared / "state"
        state.mkdir(mode=0o700)
        (state / "up.json").write_text((stack.state / "up.json").read_text())
        out = stack.run("true", extra=["--state-dir", str(state)])
        assert out.returncode == 1 and "could replace" in out.stderr, out.stderr
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=False)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "clrk-r-" not in listed  # refused before any sandbox was made


NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def test_only_the_gateways_user_reaches_the_admin_api(stack):
    """The issue's attack: uid 65534 applied a route over 127.0.0.1:18000.  Nothing listens
    on TCP now; the control plane's Unix socket lets only root in."""
    topology = stack.topology
    tcp = topology.run_in_gw([*NOBODY, "nc", "-z", "-w", "1", "127.0.0.1", "18000"])
    assert tcp.returncode != 0
    unix = topology.run_in_gw([*NOBODY, "nc", "-U", "-z", control_plane_path(stack)])
    assert unix.returncode != 0
    # The operator (root) finds it through the state directory.
    got = subprocess.run(
        clrk("get", "gateways", "--state-dir", str(stack.state), "-o", "json"),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert [i["name"] for i in json.loads(got.stdout)["items"]] == ["egress"]
