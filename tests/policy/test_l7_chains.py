"""Which L7 chains keep ext_proc on every request: those whose route has a deny policy
(not those that inject a credential: Envoy does that, and its access log records it)."""

from __future__ import annotations

from clrk.policy.l7_chains import needs_ext_proc
from tests.conftest import compile_yaml

POLICY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: web, protocol: HTTP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: llm}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{destinationHostnames: [api.anthropic.com]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: paste}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{destinationHostnames: [pastebin.com]}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: no-paste}
spec:
  targetRef: {group: clrk.apoxy.dev, kind: EgressL4Route, name: paste}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressCredential
metadata: {name: key}
spec:
  targetRef: {name: llm}
  header: x-api-key
  placeholder: clrk-placeholder-key
  source: {env: KEY}
"""


def _policy():
    return compile_yaml(POLICY).gateways[("default", "gw")]


def test_a_deny_policy_route_needs_ext_proc_to_answer() -> None:
    policy = _policy()
    paste = [m for m in policy.matches if m.route == "default/paste"]
    assert needs_ext_proc(policy, paste)


def test_an_allow_route_injecting_a_credential_and_the_default_chain_do_not() -> None:
    policy = _policy()
    llm = [m for m in policy.matches if m.route == "default/llm"]
    assert policy.credentials and policy.credentials[0].route == "default/llm"
    assert llm and not needs_ext_proc(policy, llm)
    assert not needs_ext_proc(policy, ())
