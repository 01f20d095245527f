"""Report mode and `clrk suggest`, the round trip (issue 16, parts 2 and 3) against
`clrk up` in the demo's network namespaces, with real curl and nc as the agent:

1. under Report, the agent reaches a name and a bare address no route allows; both go
   through and leave deny records with clrk.egress.enforced=false;
2. `clrk suggest` turns those records into routes;
3. the suggestion goes in with the gateway in Enforce; once the dialer has that
   policy, the same agent again leaves zero denials, and a destination the first run
   never touched is refused (enforced).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clrk_cli.demo.world import POSTGRES, World
from tests.e2e.topology import leaks, snapshot
from tests.netns_helpers import readable_by_agents

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
WAIT = 30.0  # seconds: an upper bound for polls, never a sleep to wait out
GATEWAY = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: trial}
spec:
  mode: %s
  listeners:
  - {name: tcp-out, protocol: TCP}
  - {name: tls-out, protocol: TLS, port: 443}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: bot, labels: {app: bot}}
spec: {egressRefs: [{gatewayRef: trial}]}
"""


def clrk(*args: str) -> list[str]:
    return [sys.executable, "-m", "clrk_cli", *args]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(clrk(*args), capture_output=True, text=True, timeout=60, env=ENV)


def poll(check, what: str):
    deadline = time.monotonic() + WAIT
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            assert got, f"no {what} within {WAIT:g}s"
            return got
        time.sleep(0.2)


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    work = tmp_path_factory.mktemp("report")
    before = snapshot()
    state, manifests = work / "state", work / "manifests"
    manifests.mkdir()
    (manifests / "gateway.yaml").write_text(GATEWAY % "Report")
    with World(work) as world:
        proc = world.start_in_host(
            clrk("up", "-f", str(manifests), "--state-dir", str(state),
                 "--upstream-ca", str(world.certs["ca"])),
            log=work / "up.log",
        )  # fmt: skip
        assert world.wait_line(proc, "clrk ready", 60), (work / "up.log").read_text()[-3000:]
        yield {"world": world, "state": state, "manifests": manifests, "work": work}
    assert not leaks(before, snapshot())


def agent_run(up) -> list[subprocess.CompletedProcess[str]]:
    """The agent's work: an HTTPS API by name, and a database by bare address."""
    host, port = POSTGRES.split(":")
    with readable_by_agents(up["world"].certs["ca"]) as (ca,):
        return [
            subprocess.run(
                clrk("run", "--agent", "default/bot", "--state-dir", str(up["state"]), "--", *argv),
                capture_output=True,
                text=True,
                timeout=60,
                env=ENV,
            )
            for argv in (
                ["curl", "-sS", "--max-time", "10", "--cacert", ca, "https://api.anthropic.com/"],
                ["nc", "-z", "-w", "5", host, port],
            )
        ]


def denials(up, *flags: str) -> list[dict]:
    out = cli("records", "--state-dir", str(up["state"]), "--name", "egress.dial.denied",
              "-o", "json", *flags)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def policies_applied(up) -> int:
    log = up["state"] / "logs" / "dialer.log"
    text = log.read_text() if log.exists() else ""
    return sum(1 for line in text.splitlines() if "policy applied" in line)


def test_report_then_suggest_then_enforce_leaves_zero_denials_and_keeps_the_rest_denied(up):
    for result in agent_run(up):
        assert result.returncode == 0, result.stderr  # Report: through, not refused
    reported = poll(lambda: len(denials(up, "--enforcement", "reported")) >= 2 and
                    denials(up, "--enforcement", "reported"), "reported denials")  # fmt: skip
    assert denials(up, "--enforcement", "enforced") == []
    names = {r["attributes"]["clrk.dst.name"] for r in reported}
    assert names == {"api.anthropic.com", ""}  # nc dials the bare address
    assert {r["attributes"]["clrk.egress.enforced"] for r in reported} == {False}
    assert {r["attributes"]["clrk.egress.deny_reason"] for r in reported} == {"policy"}

    suggested = cli("suggest", "--state-dir", str(up["state"]), "-f", str(up["manifests"]),
                    "--agent", "default/bot", "--since", "1h")  # fmt: skip
    assert suggested.returncode == 0, suggested.stderr
    print("\n$ clrk suggest --state-dir STATE -f MANIFESTS --agent default/bot --since 1h")
    print(suggested.stdout)
    assert "api.anthropic.com" in suggested.stdout and "198.51.100.20/32" in suggested.stdout

    # The file provider reloads on change: the Enforce policy and the suggestion replace
    # the manifest in one rename, so the dialer never sees half of it.
    staged = up["work"] / "enforce.yaml"
    staged.write_text(GATEWAY % "Enforce" + "---\n" + suggested.stdout)
    applied = policies_applied(up)
    os.replace(staged, up["manifests"] / "gateway.yaml")
    poll(lambda: policies_applied(up) > applied, "new policy in the dialer")

    before = len(denials(up))
    for result in agent_run(up):
        assert result.returncode == 0, result.stderr
    untouched = subprocess.run(
        clrk("run", "--agent", "default/bot", "--state-dir", str(up["state"]), "--",
             "curl", "-sS", "--max-time", "10", "https://evil.example/"),
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert untouched.returncode in (7, 35, 56), untouched.stderr  # refused
    found = poll(lambda: len(denials(up)) > before and denials(up)[before:], "the refusal")
    assert [r["attributes"]["clrk.dst.name"] for r in found] == ["evil.example"]
    assert found[0]["attributes"]["clrk.egress.enforced"] is True
