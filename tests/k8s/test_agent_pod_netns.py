"""The injected agent pod's interception, run from the manifest in a real network
namespace standing in for the pod: the init container's command as written (root, then
it exits), the dialer sidecar's start check, and the agent as a non-root uid without
capabilities, which cannot undo the rules.  (The whole pod, with the dialer, Envoy and
the control plane over mTLS, is not simulated here yet: docs/kubernetes.md.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.netns_helpers import scratch_netns

ROOT = Path(__file__).resolve().parents[2]
INJECTED = ROOT / "deploy" / "agent-example" / "agent-injected.yaml"
CLRK = [sys.executable, "-m", "clrk_cli"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")


def _containers() -> dict[str, dict]:
    pod = yaml.safe_load(INJECTED.read_text())
    return {c["name"]: c for c in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]}


def _argv(container: dict) -> list[str]:
    """The container's command and args, `clrk` run from this checkout."""
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[0] == "clrk", argv
    return [*CLRK, *argv[1:]]


def _in(ns: str, argv: list[str], uid: int | None = None) -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", ns]
    if uid is not None:  # no capabilities at all, as the agent's securityContext says
        prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                   "--inh-caps=-all", "--bounding-set=-all", "--"]  # fmt: skip
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60)


def test_the_manifests_init_container_installs_rules_the_agent_cannot_undo():
    containers = _containers()
    intercept, dialer, agent = (
        containers["clrk-intercept"],
        containers["clrk-dialer"],
        containers["agent"],
    )
    assert intercept["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    agent_uid = agent["securityContext"]["runAsUser"]
    with scratch_netns(f"clrk-pod-{os.getpid()}") as ns:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # Before the init container: the dialer's start refuses (no interception).
        check = [*_argv(dialer)[: _argv(dialer).index("--no-install") + 1], "--", "--help"]
        refused = _in(ns, check)
        assert refused.returncode != 0 and "not installed" in refused.stderr
        done = _in(ns, _argv(intercept))
        assert done.returncode == 0, done.stderr
        assert "interception installed" in done.stderr
        rules = _in(ns, ["iptables-save"]).stdout
        assert "--uid-owner 10101" in rules and "REDIRECT" in rules
        # The agent (its uid, no capabilities) cannot remove or bypass them.
        for argv in (["iptables", "-w", "-t", "nat", "-F"], ["ip", "rule", "flush"]):
            assert _in(ns, argv, uid=agent_uid).returncode != 0
        assert _in(ns, ["iptables-save"]).stdout == rules
