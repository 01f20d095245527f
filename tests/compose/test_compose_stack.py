"""The docker compose stack, for real: Docker Engine and Compose v2 (installed when
missing), dockerd in a network namespace of its own with an "internet" behind it, the
images built without a registry, and `compose.yaml` + `compose.offline.yaml` up with
`--wait`.  The example agent, a curl in the dialer's network namespace, is the
adversary: what the policy allows works, anything else is refused before an upstream
connection and recorded once, editing the mounted policy opens a destination within
seconds, and nothing of the gateway is within its reach.  `compose down` leaves
nothing; the daemon, namespaces and cgroups go after, and the root namespace's
iptables, links and forwarding never change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clrk.records.query import iter_records
from tests.compose.docker_env import (
    BRIDGE,
    DockerLab,
    ensure_docker,
    root_namespace_state,
    with_temp_dir,
)
from tests.compose.images import base_image, clrk_image
from tests.packaging.build_cache import ROOT

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, dockerd"),
    pytest.mark.timeout(900),  # a cold machine installs Docker and builds every image first
]

ALLOWED, LATER = "web.allowed.example", "later.example"
DENIED, EXFIL = "paste.denied.example", "exfil.denied.example"
HARD_CODED, HARD_CODED_TOO = "198.51.100.10", "198.51.100.11"
ZONE = {
    ALLOWED: {"A": ["203.0.113.10"], "ttl": 60},
    DENIED: {"A": ["203.0.113.20"], "ttl": 60},
    EXFIL: {"A": ["203.0.113.21"], "ttl": 60},
    LATER: {"A": ["203.0.113.30"], "ttl": 60},
}
WEB = ("203.0.113.10", "203.0.113.20", "203.0.113.21", "203.0.113.30", HARD_CODED, HARD_CODED_TOO)
RELOAD_WITHIN = 10.0  # seconds
ROUTE = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: agents}}]
  rules:
  - matches:
    - destinationHostnames: ["{host}"]
      ports: [{{port: 80}}]
"""


class Stack:
    """`docker compose` on compose.yaml + compose.offline.yaml, as one project."""

    def __init__(self, lab: DockerLab, env: dict[str, str], policy: Path) -> None:
        self.lab = lab
        self.env = env
        self.policy = policy
        self.project = lab.netns
        files = [a for f in ("compose.yaml", "compose.offline.yaml") for a in ("-f", str(ROOT / f))]
        self.base = ["compose", "-p", self.project, *files]

    def compose(self, *argv: str, check: bool = True, timeout: float = 300):
        return self.lab.docker(*self.base, *argv, env=self.env, check=check, timeout=timeout)

    def agent(self, *argv: str) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", "agent", *argv, check=False)

    def curl(self, url: str) -> subprocess.CompletedProcess:
        return self.agent("curl", "-sS", "--max-time", "5", url)

    def records(self) -> list[dict]:
        """Every record the collector (the sink standing in for it) wrote to its file,
        copied out as the README says (the collector's image has no shell)."""
        copy = self.lab.workdir / "records.jsonl"
        copy.unlink(missing_ok=True)
        self.compose("cp", "otel-collector:/var/lib/otelcol/records.jsonl", str(copy), check=False)
        return list(iter_records(str(copy))) if copy.exists() else []

    def denials(self, peer: str) -> list[dict]:
        return [
            r
            for r in self.records()
            if r["name"] == "egress.dial.denied" and r["attributes"]["network.peer.address"] == peer
        ]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[DockerLab]:
    ensure_docker()
    before = root_namespace_state()
    workdir = tmp_path_factory.mktemp("compose")
    with DockerLab(workdir, ZONE, WEB) as lab:
        # Docker's forwarding and NAT are in its own namespace...
        assert lab.in_docker_netns("cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
        yield lab
    # ...and the root namespace is as it was (ip_forward included).
    assert root_namespace_state() == before
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab.netns not in listed and not lab.exec_root.exists()


@pytest.fixture(scope="module")
def stack(lab: DockerLab) -> Iterator[Stack]:
    base = base_image(lab)
    clrk = clrk_image(lab, base)
    policy = with_temp_dir("clrk-compose-policy-")  # read by the control plane's uid
    try:
        shutil.copyfile(ROOT / "compose" / "policy" / "gateway.yaml", policy / "gateway.yaml")
        (policy / "allowed.yaml").write_text(ROUTE.format(name="allowed", host=ALLOWED))
        for path in policy.iterdir():
            path.chmod(0o644)
        env = {"CLRK_IMAGE": clrk, "AGENT_IMAGE": base, "CLRK_POLICY": str(policy)}
        stack = Stack(lab, env, policy)
        started = time.monotonic()
        up = stack.compose("up", "--detach", "--wait", "--no-build", check=False)
        if up.returncode != 0:
            logs = stack.compose("logs", "--no-color", "--tail", "40", check=False).stdout
            stack.compose("down", "--volumes", check=False)
            pytest.fail(f"compose up failed:\n{up.stderr[-3000:]}\n{logs}", pytrace=False)
        print(f"compose up --wait: {time.monotonic() - started:.1f}s")
        try:
            yield stack
        finally:
            stack.compose("down", "--volumes", check=False)
    finally:
        shutil.rmtree(policy, ignore_errors=True)


def _connections_to(lab: DockerLab, address: str) -> list[dict]:
    return [c for c in lab.server_connections() if c["local"][0] == address]


def _refused(result: subprocess.CompletedProcess) -> bool:
    """Failed at once, with no reply: the dialer accepts, decides and resets, and curl
    names that by where the reset caught it (7, 52, 55, 56).  A timeout (28) would be a
    black hole, not a refusal.  That it was the dialer (one deny record each) is checked
    below."""
    return result.returncode not in (0, 28) and not result.stdout


def test_the_agent_reaches_an_allowed_name_through_the_dialer_and_envoy(stack):
    before = len(_connections_to(stack.lab, "203.0.113.10"))
    result = stack.curl(f"http://{ALLOWED}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the internet\n"
    (connection,) = _connections_to(stack.lab, "203.0.113.10")[before:]
    assert connection["peer"][0] == "192.0.2.1"  # from Docker's NAT: Envoy's network left


def test_a_denied_name_and_a_hard_coded_ip_are_refused_before_any_upstream_connection(stack):
    assert _refused(stack.curl(f"http://{DENIED}/"))
    assert _refused(stack.curl(f"http://{HARD_CODED}/"))
    assert not _connections_to(stack.lab, "203.0.113.20")
    assert not _connections_to(stack.lab, HARD_CODED)


def _settled(read, expected: int, timeout: float = 15.0) -> list:
    """`read()` once it has `expected` items and still has a moment later (batches are
    exported every 150 ms): more would be a duplicate, fewer a loss."""
    deadline = time.monotonic() + timeout
    items = read()
    while len(items) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        items = read()
    time.sleep(1.0)
    return read()


def test_the_collector_receives_exactly_one_deny_record_per_denial(stack):
    assert _refused(stack.curl(f"http://{EXFIL}/"))
    assert _refused(stack.curl(f"http://{HARD_CODED_TOO}/"))
    for peer, name in (("203.0.113.21", EXFIL), (HARD_CODED_TOO, "")):
        records = _settled(lambda peer=peer: stack.denials(peer), 2)
        assert sorted(r["signal"] for r in records) == ["log", "span"], records
        for record in records:
            attributes = record["attributes"]
            assert record["service"] == "clrk-dialer"
            assert attributes["clrk.egress.deny_reason"] == "policy"
            assert attributes["clrk.dst.name"] == name
            assert attributes["agent.name"] == "example-agent"
    logs = stack.compose("logs", "--no-color", "otel-collector").stdout.splitlines()
    for peer in ("203.0.113.21", HARD_CODED_TOO):
        printed = [line for line in logs if "log egress.dial.denied" in line and peer in line]
        assert len(printed) == 1, printed
    # `clrk records` reads the collector's file (README).
    query = subprocess.run(
        [sys.executable, "-m", "clrk_cli", "records", "--file", str(stack.lab.workdir /
         "records.jsonl"), "--name", "egress.dial.denied", "-o", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    peers = [json.loads(line)["attributes"]["network.peer.address"] for line in
             query.stdout.splitlines()]  # fmt: skip
    assert peers.count("203.0.113.21") == peers.count(HARD_CODED_TOO) == 1


def test_ext_proc_records_an_allowed_request_through_the_collector_too(stack):
    assert stack.curl(f"http://{ALLOWED}/extproc").returncode == 0
    records = _settled(
        lambda: [r for r in stack.records() if r["name"] == "egress.http"
                 and r["attributes"]["url.path"] == "/extproc"], 2)  # fmt: skip
    assert sorted(r["signal"] for r in records) == ["log", "span"]
    assert {r["service"] for r in records} == {"clrk-extproc"}
    assert {r["attributes"]["clrk.http.authority"] for r in records} == {ALLOWED}


def test_editing_the_mounted_policy_opens_a_destination_within_seconds(stack):
    assert _refused(stack.curl(f"http://{LATER}/"))
    (stack.policy / "later.yaml").write_text(ROUTE.format(name="later", host=LATER))
    (stack.policy / "later.yaml").chmod(0o644)
    edited = time.monotonic()
    while time.monotonic() - edited < RELOAD_WITHIN:
        result = stack.curl(f"http://{LATER}/")
        if result.returncode == 0:
            break
        time.sleep(0.2)
    opened = time.monotonic() - edited
    assert result.returncode == 0, f"still refused {opened:.1f}s after the edit: {result.stderr}"
    print(f"opened {opened:.1f}s after the edit")
    assert len(_connections_to(stack.lab, "203.0.113.30")) == 1


PING = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
try:
    s.sendto(bytes([8, 0, 247, 255, 0, 0, 0, 0]), ("203.0.113.10", 0))
    s.settimeout(2)
    print("answered" if s.recv(64) else "silent")
except OSError as exc:
    print("refused", exc.errno)
"""


def test_the_agent_reaches_nothing_of_the_gateway(stack):
    """No gateway socket or file in its filesystem, no capability to change the rules,
    and what the dialer cannot carry (ICMP) does not leave at all."""
    assert stack.agent("ls", "/run/clrk").returncode != 0
    assert stack.agent("ls", "/var/lib/clrk").returncode != 0
    rules = stack.agent("iptables", "-w", "-S")
    assert rules.returncode != 0 and "denied" in rules.stderr.lower()
    assert stack.agent("python3", "-c", PING).stdout.startswith("refused")
    # The Docker host (the bridge's gateway) is the gateway's own: refused whatever the
    # policy says, and recorded so.
    host = BRIDGE.split("/")[0]
    assert _refused(stack.curl(f"http://{host}/"))
    (record,) = _settled(
        lambda: [r for r in stack.denials(host) if r["signal"] == "log"], 1)  # fmt: skip
    assert record["attributes"]["clrk.egress.deny_reason"] == "blocked_address"
    inspect = stack.lab.docker("inspect", f"{stack.project}-agent-1")
    (agent,) = json.loads(inspect.stdout)
    assert agent["HostConfig"]["CapDrop"] == ["ALL"] and not agent["HostConfig"]["CapAdd"]
    assert agent["Config"]["User"] == "1000:1000" and not agent["Mounts"]


def test_the_admin_api_answers_inside_the_control_plane_container(stack):
    result = stack.compose("exec", "-T", "control-plane", "clrk", "get", "routes")
    assert "allowed" in result.stdout


def test_compose_down_leaves_nothing_running(stack):
    stack.compose("down", "--volumes")
    assert stack.lab.leftovers() == {"containers": [], "networks": [], "volumes": []}
    assert not stack.lab.docker("ps", "-q").stdout.split()
