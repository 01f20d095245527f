"""The dialer's policy state across reloads: what it keeps from the last policy (compiled
routes, decoded matches) never makes the policy differ from a fresh dialer's."""

from __future__ import annotations

import pytest

from clrk.api import load_text
from clrk.policy.compile import compile_policies
from clrk_runtime.policy_messages import policy_update, to_plain
from clrk_worker_dialer.config import DialerConfig
from clrk_worker_dialer.state import DialerState, PolicyError

GW = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp, protocol: TCP}]
"""


def route(name: str, host: str) -> str:
    return f"""---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{matches: [{{destinationHostnames: [{host}]}}]}}]
"""


class _Records:
    def emit(self, record) -> None:
        raise AssertionError(f"loading a policy writes no record: {record}")


def state(manifests: list[str]) -> DialerState:
    return DialerState(DialerConfig(manifests=manifests, gateway="default/gw"), _Records())


def test_a_manifest_reload_compiles_what_a_fresh_dialer_compiles(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(GW + route("b", "b.example.com") + route("c", "c.example.com"))
    dialer = state([str(path)])
    dialer.load()
    kept = dialer.policy.matches[0]
    # A route added that sorts first moves the others; one changes.  Added at the end of
    # the file: the others' documents stay where they were, so `b` is parsed and
    # compiled once, and only moved.
    path.write_text(
        GW + route("b", "b.example.com") + route("c", "x.org") + route("a", "a.example.com")
    )
    dialer.load()
    fresh = state([str(path)])
    fresh.load()
    assert to_plain(dialer.policy) == to_plain(fresh.policy)
    assert [e.order[0] for e in dialer.policy.matches] == [0, 1, 2]
    assert [e.route for e in dialer.policy.matches] == ["default/a", "default/b", "default/c"]
    assert dialer.policy.matches[1].hostnames is kept.hostnames


def test_updates_from_the_control_plane_decode_what_a_fresh_dialer_decodes():
    dialer = state([])
    for text in (
        GW + route("b", "b.example.com"),
        GW + route("a", "a.example.com") + route("b", "b.example.com"),
        GW + route("b", "c.example.com"),
    ):
        policy = _compiled(text)
        update = policy_update("default/gw", policy)
        dialer.apply_update(update)
        fresh = state([])
        fresh.apply_update(update)
        assert to_plain(dialer.policy) == to_plain(fresh.policy) == to_plain(policy)


def test_an_update_for_another_gateway_leaves_the_decoded_matches_as_they_were():
    """It is refused after its matches decoded: the next update with the last good
    policy's matches reuses their entries all the same."""
    dialer = state([])
    good = policy_update("default/gw", _compiled(GW + route("b", "b.example.com")))
    dialer.apply_update(good)
    kept = dialer.policy
    other = policy_update("default/gw", _compiled(GW + route("c", "c.example.com")))
    other.policy.ref = "default/other"
    with pytest.raises(PolicyError, match="for gateway default/other"):
        dialer.apply_update(other)
    assert dialer.policy is kept
    dialer.apply_update(good)
    assert all(a is b for a, b in zip(dialer.policy.matches, kept.matches, strict=True))


def _compiled(text: str):
    return compile_policies(load_text(text).resources).gateways[("default", "gw")]
