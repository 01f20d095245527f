"""`python -m clrk_xds` as a process: serves a real Envoy and a policy watcher from the
manifest files, reloads on change, and exits cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from clrk_worker_dialer.policy_client import watch_policy
from clrk_xds.envoy_process import EnvoyProcess, render_bootstrap
from tests.xds.xds_messages import free_port

GATEWAY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp-out, protocol: TCP}]
"""
SECOND = """\
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp-out, protocol: TCP}, {name: tcp-two, protocol: TCP}]
"""


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def first_update(target: str, gateway: str):
    async def go():
        async for update in watch_policy(target, gateway):
            return update

    return asyncio.run(asyncio.wait_for(go(), 10))


@pytest.mark.timeout(90)
def test_control_plane_process_serves_envoy_and_dialers(tmp_path):
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "gw.yaml").write_text(GATEWAY)
    port, base = free_port(), free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clrk_xds", "--manifests", str(manifests),
             "--listen", f"127.0.0.1:{port}", "--envoy-base-port", str(base)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    envoy = EnvoyProcess(
        render_bootstrap("default/gw", "127.0.0.1", port, 0),
        extra_args=("--base-id", str(os.getpid() % 4000 * 100 + 99)),
        log_level="warning",
    )
    try:
        wait_for(lambda: "server.listening" in log.read_text())
        envoy.start()
        update = first_update(f"127.0.0.1:{port}", "default/gw")
        assert update.policy.ref == "default/gw" and len(update.policy.listeners) == 1

        def listeners() -> str:
            return envoy.admin_get("/listeners")[1]

        wait_for(lambda: f"127.0.0.1:{base}" in listeners())
        (manifests / "gw.yaml").write_text(SECOND.lstrip("-\n"))
        wait_for(lambda: listeners().count("127.0.0.1:") == 2)
        # an invalid edit keeps what Envoy has
        (manifests / "gw.yaml").write_text("kind: [\n")
        wait_for(lambda: "provider.rejected" in log.read_text())
        assert listeners().count("127.0.0.1:") == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        envoy.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    msgs = [entry["msg"] for entry in lines]
    assert "server.stopped" in msgs and "provider.applied" in msgs
    assert any(e["msg"] == "provider.error" and "gw.yaml" in e["error"] for e in lines)
