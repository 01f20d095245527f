"""`clrk up` in a test topology's gw namespace (never the root namespace), with its
manifests and state directory, for the tests that drive it through `clrk run`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.topology import Topology, python_module, read_line

HERE = Path(__file__).resolve().parent
READY_TIMEOUT = 60.0
POLICY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: egress}
spec:
  listeners:
  - {name: tcp, protocol: TCP}
  - {name: tls, protocol: TLS, port: 443}
  dns: {upstream: ["198.51.100.53:53"]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: web}
spec:
  parentRefs: [{name: egress, sectionName: tcp}]
  rules:
  - matches: [{destinationHostnames: [example.test], ports: [{port: 80}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: bot}
spec: {egressRefs: [{gatewayRef: egress}]}
"""
CURL = ["curl", "-sS", "--max-time", "5"]


def clrk(*args: str) -> list[str]:
    return python_module("clrk_cli", *args)


class Stack:
    """`clrk up` in the topology's gw namespace."""

    def __init__(self, topology: Topology, manifests: Path, state: Path) -> None:
        self.topology, self.state = topology, state
        self.proc = topology.start_in_gw(
            clrk("up", "-f", str(manifests), "--state-dir", str(state))
        )
        line = read_line(self.proc, READY_TIMEOUT)
        if line != "clrk ready\n":
            self.stop()
            raise AssertionError(f"not ready: {line!r}\n{self.log()}")

    def log(self) -> str:
        return self.topology.processes.stderr_text(self.proc)

    def health(self) -> dict:
        out = self.topology.run_in_gw(["curl", "-sS", "http://127.0.0.1:9464/healthz"])
        return json.loads(out.stdout)

    def metrics(self) -> str:
        return self.topology.run_in_gw(["curl", "-sS", "http://127.0.0.1:9464/metrics"]).stdout

    def run(self, *argv: str, timeout: float = 30.0, extra=()) -> subprocess.CompletedProcess:
        """`clrk run --agent bot -- argv` from the root namespace (where a user is)."""
        return subprocess.run(
            clrk("run", "--agent", "bot", "--state-dir", str(self.state), *extra, "--", *argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(HERE.parents[1])},
        )

    def stop(self) -> int:
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.topology.processes.stop(self.proc)
        return code


@contextlib.contextmanager
def running_stack(topology: Topology, directory: Path, policy: str) -> Iterator[Stack]:
    """`clrk up` on `policy` with its files in `directory`; stopped cleanly on exit."""
    manifests = directory / "policy.yaml"
    manifests.write_text(policy)
    stack = Stack(topology, manifests, directory / "state")
    try:
        yield stack
    finally:
        assert stack.stop() == 0


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
