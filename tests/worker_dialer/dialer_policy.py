"""A small gateway policy shared by the dialer's unit tests."""

from __future__ import annotations

from tests.conftest import compile_yaml

POLICY_YAML = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners:
  - {name: tcp, protocol: TCP}
  - {name: tls, protocol: TLS}
  - {name: web, protocol: HTTP, port: 80}
  - {name: dgram, protocol: UDP}
  dns: {mode: Filtered, upstream: ["198.51.100.53:53"]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: api}
spec:
  parentRefs: [{name: gw, sectionName: tls}]
  rules:
  - matches: [{destinationHostnames: [api.example.com, "*.example.org"], ports: [{port: 443}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: db}
spec:
  parentRefs: [{name: gw, sectionName: tcp}]
  rules:
  - matches: [{destinationCIDRs: [203.0.113.0/24], ports: [{startPort: 5432, endPort: 5439}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: ntp}
spec:
  parentRefs: [{name: gw, sectionName: dgram}]
  rules:
  - matches: [{destinationHostnames: [time.example.com], protocol: UDP, ports: [{port: 123}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: paste}
spec:
  parentRefs: [{name: gw, sectionName: web}]
  rules:
  - matches: [{destinationHostnames: [paste.example.net]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {name: no-paste}
spec:
  targetRef: {group: clrk.apoxy.dev, kind: EgressL4Route, name: paste}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: agent-a, labels: {team: a}}
spec: {egressRefs: [{gatewayRef: gw}]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: agent-b, namespace: other}
spec: {egressRefs: [{gatewayRef: default/gw}]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: agent-b, namespace: third}
spec: {egressRefs: [{gatewayRef: default/gw}]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: elsewhere}
spec: {egressRefs: [{gatewayRef: another}]}
"""

GATEWAY = ("default", "gw")


def policies():
    return compile_yaml(POLICY_YAML)


def gateway_policy():
    return policies().gateways[GATEWAY]


class Records:
    """A record writer that keeps what the dialer emits, for the test to read."""

    def __init__(self) -> None:
        self.emitted: list = []

    def emit(self, record) -> None:
        self.emitted.append(record)
