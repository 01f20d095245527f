"""EnvoyProcess inside a network namespace: Envoy runs there (its PID, not a wrapper's),
the admin API is reached from inside it, and nothing is left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from clrk_xds.envoy_process import EnvoyProcess, static_bootstrap
from tests.netns_helpers import scratch_netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces"),
]


@pytest.fixture
def netns():
    with scratch_netns(f"clrk-envoyns-p{os.getpid()}") as name:
        yield name


def _netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_envoy_runs_in_the_namespace_and_answers_admin_there(netns):
    envoy = EnvoyProcess(static_bootstrap({"listeners": [], "clusters": []}), netns=netns)
    with envoy:
        pid = envoy.pid
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "envoy"
        assert _netns_of(pid) != _netns_of(os.getpid())
        status, body = envoy.admin_get("/ready")
        assert (status, body.strip()) == (200, "LIVE")
        assert envoy.admin_get("/no-such-page")[0] == 404
        # The admin port is bound inside the namespace only.
        host, port = envoy.admin_address.rsplit(":", 1)
        ours = subprocess.run(
            ["curl", "-s", "--max-time", "1", f"http://{host}:{port}/ready"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert ours.stdout.strip() != "LIVE"
    assert not Path(f"/proc/{pid}").exists()


def test_admin_errors_are_oserrors_like_without_a_namespace(netns):
    envoy = EnvoyProcess(static_bootstrap({"listeners": [], "clusters": []}), netns=netns)
    with envoy:
        envoy._admin = "127.0.0.1:1"  # nothing listens there
        with pytest.raises(OSError):
            envoy.admin_get("/ready", timeout=1)
