"""The README's commands against `clrk up` on `examples/` (issue 6, acceptance 2 and 4),
in the demo's own network namespaces: real curl through `clrk run`, real records,
`clrk apply` through the admin API while the stack runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clrk_cli.demo.world import World
from tests.e2e.topology import leaks, snapshot
from tests.netns_helpers import readable_by_agents

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def clrk(*args: str) -> list[str]:
    return [sys.executable, "-m", "clrk_cli", *args]


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    before = snapshot()
    state = work / "state"
    with World(work) as world:
        proc = world.start_in_host(
            clrk("up", "-f", str(REPO / "examples"), "--gateway", "default/prod-agents",
                 "--state-dir", str(state), "--upstream-ca", str(world.certs["ca"])),
            log=work / "up.log",
        )  # fmt: skip
        assert world.wait_line(proc, "clrk ready", 60), (work / "up.log").read_text()[-3000:]
        yield {"world": world, "state": state, "proc": proc, "work": work}
    assert not leaks(before, snapshot())


def run_as_bot(up, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        clrk("run", "--agent", "default/bot", "--state-dir", str(up["state"]), "--", *argv),
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip


def in_host(up, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", up["world"].host, *argv],
        capture_output=True, text=True, timeout=60, env=ENV, cwd=REPO,
    )  # fmt: skip


def test_an_allowed_api_works_and_a_denied_name_fails_and_is_recorded(up):
    ok = run_as_bot(up, "curl", "-sS", "--max-time", "10", "https://api.anthropic.com/")
    assert ok.returncode == 0, ok.stderr
    denied = run_as_bot(up, "curl", "-sS", "--max-time", "10", "https://evil.example/")
    assert denied.returncode in (7, 35, 56), denied.stderr  # a connection error
    time.sleep(0.6)  # the record writer batches
    out = subprocess.run(
        clrk("records", "--state-dir", str(up["state"]), "--deny-reason", "policy", "-o", "json"),
        capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(found) == 1, found
    attrs = found[0]["attributes"]
    assert attrs["agent.name"] == "bot" and attrs["clrk.dst.name"] == "evil.example"


ROUTE = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: evil-for-a-moment}
spec:
  parentRefs: [{name: prod-agents, sectionName: tcp-out}]
  rules: [{matches: [{destinationHostnames: [evil.example], ports: [{port: %s}]}]}]
"""


def test_apply_takes_effect_without_a_restart_and_an_invalid_one_changes_nothing(up):
    manifest = up["work"] / "route.yaml"
    manifest.write_text(ROUTE % "99999")
    state = ("--state-dir", str(up["state"]))  # its control plane's socket is in there
    bad = in_host(up, *clrk("apply", "-f", str(manifest), *state))
    validate = subprocess.run(clrk("validate", "-f", str(manifest)), capture_output=True,
                              text=True, env=ENV)  # fmt: skip
    assert bad.returncode != 0 and validate.returncode != 0
    error = next(line for line in validate.stdout.splitlines() + validate.stderr.splitlines()
                 if "99999" in line)  # fmt: skip
    assert error in bad.stdout + bad.stderr
    manifest.write_text(ROUTE % "443")
    good = in_host(up, *clrk("apply", "-f", str(manifest), *state))
    assert good.returncode == 0, good.stdout + good.stderr
    # Opened for plain TCP on the tcp-out listener: the TLS handshake goes end to end.
    deadline = time.monotonic() + 10
    with readable_by_agents(up["world"].certs["ca"]) as (upstream_ca,):
        while True:
            out = run_as_bot(up, "curl", "-sS", "--max-time", "5", "--cacert", upstream_ca,
                             "https://evil.example/")  # fmt: skip
            if out.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert out.returncode == 0, out.stderr
