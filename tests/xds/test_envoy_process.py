"""The Envoy launcher against the real binary: bootstrap rendering, validation, start,
/ready, stop, and no process left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clrk_xds.envoy_process import (
    EnvoyError,
    EnvoyProcess,
    envoy_binary,
    render_bootstrap,
    static_bootstrap,
    static_bootstrap_with_secrets,
    validate_config,
)
from tests.tls_dirs import TestCA

EMPTY_STATIC = {"listeners": [], "clusters": []}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_envoy_binary_is_executable() -> None:
    path = Path(envoy_binary())
    assert path.is_file() and os.access(path, os.X_OK)


def _ads_endpoint(boot: dict) -> dict:
    (cluster,) = boot["static_resources"]["clusters"]
    return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]


def test_render_bootstrap_fills_node_ads_and_admin() -> None:
    boot = render_bootstrap("team-a/prod-agents", "127.0.0.1:18000", 19000)
    assert boot["node"] == {"id": "team-a/prod-agents", "cluster": "clrk-gateway"}
    assert boot["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 19000,
    }
    ads = boot["dynamic_resources"]
    assert ads["ads_config"]["api_type"] == "GRPC"
    assert ads["lds_config"] == ads["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    address = _ads_endpoint(boot)["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 18000}


def test_render_bootstrap_reaches_ads_over_a_unix_socket() -> None:
    boot = render_bootstrap("default/gw", "unix:/run/clrk/control-plane.socket", 0)
    assert _ads_endpoint(boot)["address"] == {"pipe": {"path": "/run/clrk/control-plane.socket"}}
    assert _ads_endpoint(render_bootstrap("g", "[::1]:18000", 0))["address"] == {
        "socket_address": {"address": "::1", "port_value": 18000}
    }


def test_render_bootstrap_values_cannot_change_the_document() -> None:
    odd = 'x", admin: {}, "y: {z}\n  - [1]'
    boot = render_bootstrap(odd, 'unix:/a b", admin: {}, x: "', 0, node_cluster="c#1")
    assert boot["node"] == {"id": odd, "cluster": "c#1"}
    assert _ads_endpoint(boot)["address"]["pipe"]["path"] == '/a b", admin: {}, x: "'


@pytest.mark.parametrize("ads", ["127.0.0.1:18000", "unix:/run/clrk/control-plane.socket"])
def test_rendered_bootstrap_is_valid_envoy_config(ads) -> None:
    ok, output = validate_config(render_bootstrap("default/gw", ads, 0))
    assert ok, output


def test_static_bootstrap_with_secrets_refers_to_its_own_secrets() -> None:
    ref = {"name": "leaf/default/term", "sdsConfig": {"ads": {}}}
    chain = {"transportSocket": {"typedConfig": {"commonTlsContext": {
        "tlsCertificateSdsSecretConfigs": [ref]}}}}  # fmt: skip
    secrets = [{"name": "leaf/default/term", "tlsCertificate": {}}]
    plain = {"listeners": [{"name": "l", "filterChains": [chain]}], "clusters": [],
             "secrets": secrets}  # fmt: skip
    config = static_bootstrap_with_secrets(plain)
    assert ref == {"name": "leaf/default/term"}  # no sdsConfig: the bootstrap's secret
    assert config["static_resources"]["secrets"] == secrets
    assert config["static_resources"]["listeners"][0]["filterChains"] == [chain]


def test_validate_config_reports_envoy_error() -> None:
    bad = static_bootstrap(
        {
            "listeners": [
                {
                    "name": "x",
                    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 1}},
                }
            ],
            "clusters": [],
        }
    )
    ok, output = validate_config(bad)
    assert not ok
    assert "no filter chains" in output


def test_start_ready_stop_leaves_nothing() -> None:
    envoy = EnvoyProcess(static_bootstrap(EMPTY_STATIC))
    with envoy:
        status, body = envoy.admin_get("/ready")
        assert (status, body.strip()) == (200, "LIVE")
        pid, workdir = envoy.pid, envoy.workdir
        assert envoy.log_path.is_file()
        assert envoy.proc.poll() is None
    assert envoy.proc.returncode is not None
    assert _gone(pid)
    assert not workdir.exists()


def test_two_envoys_run_side_by_side() -> None:
    with (
        EnvoyProcess(static_bootstrap(EMPTY_STATIC)) as a,
        EnvoyProcess(static_bootstrap(EMPTY_STATIC)) as b,
    ):
        assert a.admin_address != b.admin_address
        assert a.log_path != b.log_path


def test_bad_config_raises_with_log_and_leaves_no_process() -> None:
    envoy = EnvoyProcess({"static_resources": {"clusters": [{"name": ""}]}}, ready_timeout=10)
    with pytest.raises(EnvoyError, match="exited"):
        envoy.start()
    assert envoy.proc.returncode is not None
    assert _gone(envoy.pid)


def test_ads_bootstrap_waits_for_its_control_plane() -> None:
    """With no control plane listening, Envoy runs but is not ready (initial LDS/CDS
    fetch pending); stop() still ends it."""
    with EnvoyProcess(render_bootstrap("default/gw", "127.0.0.1:9", 0), wait_ready=False) as envoy:
        with pytest.raises(EnvoyError, match="not ready"):
            envoy.wait_until_ready(1.0)
        assert envoy.proc.poll() is None
    assert _gone(envoy.pid)


def test_config_is_written_as_json() -> None:
    with EnvoyProcess(static_bootstrap(EMPTY_STATIC)) as envoy:
        written = json.loads((envoy.workdir / "envoy.json").read_text())
        assert written["static_resources"] == EMPTY_STATIC


def test_render_bootstrap_reaches_a_remote_control_plane_over_mutual_tls(tmp_path) -> None:
    tls_dir = TestCA(tmp_path).gateway("gw", "team-a/agents")
    boot = render_bootstrap(
        "team-a/agents", "clrk-control-plane.clrk-system.svc:18000", 0,
        tls_dir=tls_dir, admin_socket=str(tmp_path / "admin.sock"),
    )  # fmt: skip
    cluster = boot["static_resources"]["clusters"][0]
    assert cluster["type"] == "STRICT_DNS"  # the Service's name, resolved
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "clrk-control-plane.clrk-system.svc"
    context = tls["common_tls_context"]
    assert context["tls_certificates"][0]["private_key"] == {"filename": f"{tls_dir}/tls.key"}
    assert context["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "clrk-control-plane.clrk-system.svc"}}
    ]
    # The agent shares the pod's network: Envoy's admin API is a socket it cannot reach.
    assert boot["admin"]["address"] == {"pipe": {"path": str(tmp_path / "admin.sock")}}
    ok, output = validate_config(boot)
    assert ok, output
    by_ip = render_bootstrap("g", "10.0.0.7:18000", 0, tls_dir=tls_dir)
    cluster = by_ip["static_resources"]["clusters"][0]
    assert cluster["type"] == "STATIC" and "sni" not in cluster["transport_socket"]["typed_config"]
