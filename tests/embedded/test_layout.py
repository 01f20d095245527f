"""clrk_cli.embedded.layout: what `clrk up` runs, checked without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clrk_cli.embedded.layout import (
    LayoutError,
    Ports,
    StateDir,
    TcpListen,
    choose_gateway,
    gateways_with_agents,
    info_document,
    restart_delay,
    stack,
)
from tests.conftest import EXAMPLES, compile_paths, compile_yaml

TWO_GATEWAYS = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: a}
spec: {listeners: [{name: tcp, protocol: TCP}]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: b, namespace: team}
spec: {listeners: [{name: tcp, protocol: TCP}]}
"""


def test_the_gateway_with_agents_is_chosen_from_the_examples():
    policies = compile_paths(EXAMPLES)
    assert gateways_with_agents(policies) == ["default/prod-agents"]
    assert choose_gateway(policies, None) == "default/prod-agents"
    assert choose_gateway(policies, "open-agents") == "default/open-agents"


def test_an_ambiguous_or_unknown_gateway_is_refused():
    policies = compile_yaml(TWO_GATEWAYS)
    with pytest.raises(LayoutError, match="default/a, team/b"):
        choose_gateway(policies, None)
    with pytest.raises(LayoutError, match="no gateway default/c"):
        choose_gateway(policies, "c")
    assert choose_gateway(policies, "team/b") == "team/b"


def children(sockets=Path("/state/run/envoy"), **kw):
    state = StateDir(Path("/state"))
    specs = stack(["/m"], "default/gw", state, sockets=sockets, envoy="/bin/envoy", **kw)
    return {c.name: c for c in specs}


def test_stack_order_probes_and_paths():
    specs = children()
    assert list(specs) == ["control-plane", "extproc", "envoy", "dialer"]
    plane = specs["control-plane"]
    assert plane.argv[1:3] == ("-m", "clrk_xds") and "--manifests" in plane.argv
    assert plane.probe.kind == "http" and plane.probe.target.endswith(":18001/status")
    envoy = specs["envoy"]
    assert envoy.argv[0] == "/bin/envoy" and "--disable-hot-restart" in envoy.argv
    assert envoy.probe.target == "http://127.0.0.1:19000/ready"
    (bootstrap,) = envoy.files.values()
    assert '"id": "default/gw"' in bootstrap
    dialer = specs["dialer"]
    assert dialer.argv[dialer.argv.index("--records") + 1] == "/state/records.jsonl"
    assert dialer.argv[dialer.argv.index("--sandboxes") + 1] == "/state/sandboxes"
    assert dialer.probe.kind == "file" and dialer.remove_before_start == (dialer.probe.target,)
    assert specs["extproc"].argv[-1] == "/state/records.jsonl"
    assert plane.argv[plane.argv.index("--records") + 1] == "/state/records.jsonl"


def test_envoy_and_the_dialer_meet_on_the_socket_directory_given():
    for sockets in ("/state/run/envoy", "/tmp/clrk-x1y2z3"):
        specs = children(sockets=Path(sockets))
        plane, dialer = specs["control-plane"].argv, specs["dialer"].argv
        assert plane[plane.index("--envoy-socket-dir") + 1] == sockets
        assert dialer[dialer.index("--next-hop-socket-dir") + 1] == sockets


def test_the_control_plane_is_only_a_unix_socket_that_envoy_and_the_dialer_reach():
    specs = children()
    control = "unix:/state/run/envoy/control-plane.socket"
    plane, dialer = specs["control-plane"].argv, specs["dialer"].argv
    assert [plane[i + 1] for i, arg in enumerate(plane) if arg == "--listen"] == [control]
    assert dialer[dialer.index("--control-plane") + 1] == control
    (bootstrap,) = specs["envoy"].files.values()
    assert '"path": "/state/run/envoy/control-plane.socket"' in bootstrap
    assert "socket_address" not in bootstrap.split('"static_resources"')[1]


def test_a_tcp_listener_is_opt_in_and_carries_its_authentication():
    listen = TcpListen("0.0.0.0:18000", cert_file="/c.pem", key_file="/k.pem", client_ca_file="/ca")
    plane = children(tcp_listen=listen)["control-plane"].argv
    listens = [plane[i + 1] for i, arg in enumerate(plane) if arg == "--listen"]
    assert listens == ["unix:/state/run/envoy/control-plane.socket", "0.0.0.0:18000"]
    assert plane[plane.index("--client-ca") + 1] == "/ca"
    assert "--token-file" not in plane


def test_the_preferred_socket_directory_is_in_the_state_directory_however_deep():
    assert StateDir(Path("/state")).envoy_sockets == Path("/state/run/envoy")
    deep = Path("/" + "d" * 80)
    assert StateDir(deep).envoy_sockets == deep / "run" / "envoy"  # the choice is clrk up's


def test_optional_extproc_and_otlp():
    specs = children(with_extproc=False, otlp_endpoint="127.0.0.1:4317")
    assert "extproc" not in specs
    argv = specs["dialer"].argv
    assert "--records" not in argv and argv[argv.index("--otlp-endpoint") + 1] == "127.0.0.1:4317"
    assert argv[argv.index("--spool-dir") + 1].endswith("/spool/dialer")
    assert "--records" not in specs["control-plane"].argv


@given(st.integers(min_value=-3, max_value=1000))
def test_restart_delay_is_short_at_first_and_capped(n):
    delay = restart_delay(n)
    assert 0.1 <= delay <= 5.0
    assert restart_delay(n + 1) >= delay


def test_restart_delay_first_restart_is_fast():
    assert restart_delay(0) == 0.1


def test_info_document():
    doc = info_document("default/gw", Ports(), "ns1", 42, "unix:/s/control-plane.socket")
    assert doc == {"gateway": "default/gw", "ports": Ports().as_dict(), "netns": "ns1", "pid": 42,
                   "control_plane": "unix:/s/control-plane.socket"}  # fmt: skip
