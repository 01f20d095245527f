"""`python -m clrk_xds --provider kubernetes` as a process, reading a kubeconfig that
points at the fake API server: a real Envoy gets the gateway's listeners, a dialer the
policy stream, and Programmed turns True only once that Envoy ACKed the version."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
import yaml
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret

from clrk_xds.consistency import SECRET
from clrk_xds.envoy_process import EnvoyProcess, render_bootstrap
from tests.k8s.fake_apiserver import FakeApiServer, api_client
from tests.k8s.objects import Cluster, credential, gateway, obj, route, wait_for
from tests.k8s.rbac import RBAC, control_plane_grants, credential_secrets_binding
from tests.xds.test_ads import Client as AdsClient
from tests.xds.test_server import first_update
from tests.xds.xds_messages import free_port, free_port_block


def kubeconfig(path, server: FakeApiServer, *rbac: dict) -> str:
    """The control plane's service account token: deploy/'s RBAC applies to it (and
    that of `rbac`, the bindings an operator adds)."""
    server.restricted["control-plane"] = control_plane_grants(RBAC, *rbac)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "users": [{"name": "clrk", "user": {"token": "control-plane"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "clrk"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@contextlib.contextmanager
def control_plane(tmp_path, server: FakeApiServer, base: int, base_id: int, *rbac: dict):
    """`python -m clrk_xds --provider kubernetes` started, logging to server.log, and
    the gateway's Envoy (not started): (process, listen address, log path, Envoy),
    both stopped at the end."""
    listen = f"unix:{tmp_path / 'run' / 'control-plane.socket'}"
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clrk_xds", "--provider", "kubernetes",
             "--kubeconfig", kubeconfig(tmp_path / "kubeconfig", server, *rbac),
             "--lease-namespace", "clrk-system", "--identity", "replica-0",
             "--listen", listen, "--envoy-base-port", str(base)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    envoy = EnvoyProcess(
        render_bootstrap("default/gw", listen, 0),
        extra_args=("--base-id", str(os.getpid() % 4000 * 100 + base_id)),
        log_level="warning",
    )
    try:
        yield proc, listen, log, envoy
    except BaseException:
        # What the control plane and Envoy said, in the failure's report.
        print("--- control plane log (tail) ---")
        print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))
        print("--- Envoy log (tail) ---")
        with contextlib.suppress(OSError, AssertionError):  # Envoy not started yet
            print("\n".join(envoy.log_path.read_text(errors="replace").splitlines()[-40:]))
        raise
    finally:
        envoy.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_manifests_and_the_kubernetes_provider_exclude_each_other(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "clrk_xds", "--provider", "kubernetes", "--manifests",
         str(tmp_path), "--listen", f"unix:{tmp_path / 'run' / 's.sock'}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "reads no --manifests" in out.stderr


@pytest.mark.timeout(120)
def test_the_control_plane_on_kubernetes_programs_envoy_and_reports_its_ack(tmp_path):
    with FakeApiServer() as server:
        cluster = Cluster(api_client(server))
        cluster.create(gateway())
        cluster.create(route())
        base = free_port_block(2)  # a second listener comes
        with control_plane(tmp_path, server, base, 98) as (proc, listen, log, envoy):
            wait_for(lambda: "server.listening" in log.read_text())
            # Before Envoy: accepted, in force, not yet programmed
            pending = wait_for(lambda: cluster.condition("EgressGateway", "gw", "Programmed"))
            assert pending["status"] == "False" and pending["reason"] == "Pending"
            update = first_update(listen, "default/gw")
            assert [m.route for m in update.policy.matches] == ["default/r1"]
            envoy.start()

            def programmed(kind, name, generation=1):
                cond = cluster.condition(kind, name, "Programmed")
                return (
                    cond and cond["status"] == "True" and cond["observedGeneration"] == generation
                )

            wait_for(lambda: programmed("EgressGateway", "gw"), timeout=40)
            wait_for(lambda: programmed("EgressL4Route", "r1"))
            assert f"127.0.0.1:{base}" in envoy.admin_get("/listeners")[1]
            # a second listener: Envoy gets it, then the gateway's generation 2 is Programmed
            cluster.replace(gateway(listeners=("tcp-out", "tcp-two")))
            wait_for(lambda: envoy.admin_get("/listeners")[1].count("127.0.0.1:") == 2)
            wait_for(lambda: programmed("EgressGateway", "gw", 2))
            # another object's edit does not send the unchanged ones back to Pending
            before = dict(server.store.status_writes)
            cluster.create(route("r2", host="two.example.com"))
            wait_for(lambda: programmed("EgressL4Route", "r2"))
            after = server.store.status_writes
            assert (
                after[("egressl4routes", "default", "r1")]
                == before[("egressl4routes", "default", "r1")]
            )
            assert (
                after[("egressgateways", "default", "gw")]
                == before[("egressgateways", "default", "gw")]
            )
            lease = [p for m, p in server.requests if "/leases/" in p]
            assert lease  # it campaigned for the Lease
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    assert server.forbidden == []
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    msgs = [entry["msg"] for entry in lines]
    assert "lease.leader" in msgs and "provider.applied" in msgs and "server.stopped" in msgs


@pytest.mark.timeout(120)
def test_a_secret_ref_reaches_envoy_over_ads_and_nowhere_else(tmp_path):
    """The SDS secret as Envoy receives it, over the real gRPC stream: the Secret's
    value, then its rotation pushed; a real Envoy takes it (the credential turns
    Programmed) and shows it redacted; the control plane's log, the objects' status
    and Envoy's config dump never hold it."""
    value, rotated = "sk-ant-process-0123456789", "sk-ant-process-rotated-987"
    with FakeApiServer() as server:
        cluster = Cluster(api_client(server))
        spec = {"listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}
        cluster.create(obj("EgressGateway", "gw", spec))
        cluster.create(route(port=80))
        cluster.put_secret("anthropic", {"api-key": value})
        cluster.create(credential())
        binding = credential_secrets_binding("default")
        started = control_plane(tmp_path, server, free_port(), 97, binding)
        with started as (proc, listen, log, envoy):
            wait_for(lambda: "server.listening" in log.read_text())
            got = asyncio.run(asyncio.wait_for(_sds(listen, rotate=lambda: cluster.put_secret(
                "anthropic", {"api-key": rotated})), 30))  # fmt: skip
            assert got == [value.encode(), rotated.encode()]
            resolved = wait_for(
                lambda: cluster.condition("EgressCredential", "key", "ResolvedRefs")
            )
            assert resolved["status"] == "True"
            envoy.start()
            wait_for(
                lambda: (
                    (cluster.condition("EgressCredential", "key", "Programmed") or {}).get("status")
                    == "True"
                ),
                timeout=40,
            )
            dump = envoy.admin_get("/config_dump")[1]
            secrets = next(
                c for c in json.loads(dump)["configs"] if "SecretsConfigDump" in c["@type"]
            )
            active = secrets["dynamic_active_secrets"]
            (active,) = [s for s in active if s["name"] == "credential/default/key"]
            assert "[redacted]" in json.dumps(active) or "W3JlZGFjdGVkXQ==" in json.dumps(active)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        statuses = str(server.objects("egresscredentials"))
    assert server.forbidden == []
    text = log.read_text()
    assert "provider.applied" in text
    for secret in (value, rotated):
        for form in (secret, base64.b64encode(secret.encode()).decode(), secret[8:]):
            for place in (text, statuses, dump):
                assert form not in place


async def _sds(listen: str, rotate) -> list[bytes]:
    """Subscribe to the gateway's secrets as Envoy does, ACK each response; the
    credential's value in the first one and after `rotate()`."""
    name = "credential/default/key"
    values: list[bytes] = []
    async with grpc.aio.insecure_channel(listen) as channel:
        client = AdsClient(channel)
        client.send(SECRET, node="default/gw")
        while len(values) < 2:
            resp = await client.recv(timeout=10)
            client.send(SECRET, version=resp.version_info, nonce=resp.nonce, node="default/gw")
            for any_ in resp.resources:
                secret = Secret().parse(any_.value)
                if secret.name == name:
                    value = secret.generic_secret.secret.inline_bytes
                    if not values or values[-1] != value:
                        values.append(value)
            if len(values) == 1:
                await asyncio.to_thread(rotate)
    return values
