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

import grpc
import pytest

from clrk_runtime.grpc_auth import AuthError, ClientAuth
from clrk_worker_dialer.policy_client import watch_policy
from clrk_xds.envoy_process import EnvoyProcess, render_bootstrap
from clrk_xds.server import ControlPlane
from tests.tls_dirs import TestCA
from tests.xds.xds_messages import free_port, free_port_block

GATEWAY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp-out, protocol: TCP}]
"""
OTHER_GATEWAY = """\
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: other}
spec:
  listeners: [{name: tcp-other, protocol: TCP}]
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


def first_update(target: str, gateway: str, auth=None):
    async def go():
        async for update in watch_policy(target, gateway, auth):
            return update

    return asyncio.run(asyncio.wait_for(go(), 10))


@pytest.mark.timeout(90)
def test_control_plane_process_serves_envoy_and_dialers(tmp_path):
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "gw.yaml").write_text(GATEWAY)
    base = free_port_block(2)  # SECOND adds a listener at base + 1
    listen = f"unix:{tmp_path / 'run' / 'control-plane.socket'}"
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clrk_xds", "--manifests", str(manifests),
             "--listen", listen, "--envoy-base-port", str(base)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    envoy = EnvoyProcess(
        render_bootstrap("default/gw", listen, 0),
        extra_args=("--base-id", str(os.getpid() % 4000 * 100 + 99)),
        log_level="warning",
    )
    try:
        wait_for(lambda: "server.listening" in log.read_text())
        envoy.start()
        update = first_update(listen, "default/gw")
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


def test_an_open_tcp_listener_refuses_to_start(tmp_path):
    """Issue 11: the admin API, policy stream and ADS are never served to anyone who
    asks; TCP needs a token or mTLS, and without either nothing starts."""
    (tmp_path / "gw.yaml").write_text(GATEWAY)
    out = subprocess.run(
        [sys.executable, "-m", "clrk_xds", "--manifests", str(tmp_path / "gw.yaml"),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "refusing to serve it open" in out.stderr
    empty = tmp_path / "token"
    empty.write_text("\n")
    out = subprocess.run(
        [sys.executable, "-m", "clrk_xds", "--manifests", str(tmp_path / "gw.yaml"),
         "--listen", "127.0.0.1:0", "--token-file", str(empty)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and str(empty) in out.stderr
    with pytest.raises(AuthError):
        ControlPlane([tmp_path / "gw.yaml"], "0.0.0.0:18000")


def test_a_tcp_listener_with_a_token_serves_only_clients_that_send_it(tmp_path):
    """The opt-in TCP listener beside the Unix socket: the CLI and the dialer's policy
    stream get in with the token file, and nothing without it."""
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "gw.yaml").write_text(GATEWAY)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = free_port()
    unix = f"unix:{tmp_path / 'run' / 'control-plane.socket'}"
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clrk_xds", "--manifests", str(manifests),
             "--applied-dir", str(tmp_path / "applied"), "--listen", unix,
             "--listen", f"127.0.0.1:{port}", "--token-file", str(token)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: log.read_text().count("server.listening") == 2)

        def get(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "clrk_cli", "get", "gateways", "-o", "json", *args],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        tcp = ("--server", f"127.0.0.1:{port}")
        refused = get(*tcp)
        assert refused.returncode == 1 and "a valid bearer token is required" in refused.stderr
        assert get(*tcp, "--token-file", str(token)).returncode == 0
        assert get("--server", unix).returncode == 0
        auth = ClientAuth(token_file=str(token))
        update = first_update(f"127.0.0.1:{port}", "default/gw", auth)
        assert update.policy.ref == "default/gw"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            first_update(f"127.0.0.1:{port}", "default/gw")
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


@pytest.mark.timeout(120)
def test_remote_parts_over_mtls_get_only_the_gateway_their_certificate_names(tmp_path):
    """Issue 13, item 4: ADS and the policy stream over TCP with mutual TLS from
    cert-manager-shaped directories (--tls-dir).  A gateway's certificate decides which
    policy a dialer gets and which node an Envoy is, whatever they ask for; it opens no
    admin API.  An operator's certificate (no gateway identity) still does."""
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "gw.yaml").write_text(GATEWAY + OTHER_GATEWAY)
    ca = TestCA(tmp_path / "pki")
    server_dir = ca.server("control-plane", dns=("clrk-control-plane.test",), ips=("127.0.0.1",))
    gw_dir, operator_dir = ca.gateway("gw", "default/gw"), ca.operator()
    port, base = free_port(), free_port_block(2)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clrk_xds", "--manifests", str(manifests),
             "--applied-dir", str(tmp_path / "applied"), "--envoy-base-port", str(base),
             "--listen", f"127.0.0.1:{port}", "--tls-dir", server_dir],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    target = f"127.0.0.1:{port}"
    as_gw = ClientAuth.from_tls_dir(gw_dir)

    def envoy_as(node: str) -> EnvoyProcess:
        return EnvoyProcess(
            render_bootstrap(node, target, 0, tls_dir=gw_dir),
            extra_args=("--base-id", str(os.getpid() % 4000 * 100 + 98)),
            log_level="warning",
            wait_ready=False,
        )

    try:
        wait_for(lambda: "server.listening" in log.read_text())
        assert first_update(target, "default/gw", as_gw).policy.ref == "default/gw"
        assert first_update(target, "", as_gw).policy.ref == "default/gw"  # asks for none
        with pytest.raises(grpc.aio.AioRpcError) as error:
            first_update(target, "default/other", as_gw)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "certificate is for gateway default/gw" in error.value.details()
        # The operator's certificate watches any gateway and uses the admin API.
        as_operator = ClientAuth.from_tls_dir(operator_dir)
        assert first_update(target, "default/other", as_operator).policy.ref == "default/other"

        def get(tls_dir: str) -> subprocess.CompletedProcess[str]:
            files = [f"--ca-file={tls_dir}/ca.crt", f"--cert-file={tls_dir}/tls.crt",
                     f"--key-file={tls_dir}/tls.key"]  # fmt: skip
            return subprocess.run(
                [sys.executable, "-m", "clrk_cli", "get", "gateways", "--server", target, *files],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        assert get(operator_dir).returncode == 0
        refused = get(gw_dir)
        assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
        # Envoy: ADS over mTLS with the gateway's certificate gets the gateway's listener...
        with envoy_as("default/gw") as envoy:
            envoy.wait_until_ready(30)
            wait_for(lambda: f"127.0.0.1:{base}" in envoy.admin_get("/listeners")[1])
        # ...and one claiming another node gets nothing.
        with envoy_as("default/other") as envoy:
            wait_for(lambda: "not default/other" in log.read_text())
            listeners = wait_for(lambda: _admin_or_none(envoy, "/listeners?format=json"))
            assert "socket_address" not in listeners
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def _admin_or_none(envoy: EnvoyProcess, path: str) -> str | None:
    try:
        return envoy.admin_get(path)[1]
    except OSError:  # the admin listener is not up yet
        return None
