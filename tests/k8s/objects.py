"""Custom objects of each kind, as a client creates them, and the client calls."""

from __future__ import annotations

from kubernetes import client

from clrk.api.crds import VERSION, plural
from clrk.api.resources import API_VERSION, GROUP
from tests.xds.test_server import wait_for

__all__ = ["Cluster", "agent", "credential", "deny", "gateway", "obj", "route", "wait_for"]


def obj(kind: str, name: str, spec: dict | None, namespace: str = "default", **meta) -> dict:
    out = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, **meta},
    }
    if spec is not None:
        out["spec"] = spec
    return out


def gateway(name="gw", listeners=("tcp-out",), namespace="default") -> dict:
    spec = {"listeners": [{"name": n, "protocol": "TCP"} for n in listeners]}
    return obj("EgressGateway", name, spec, namespace)


def route(name="r1", host="api.example.com", gateway="gw", port=443, namespace="default"):
    spec = {
        "parentRefs": [{"name": gateway}],
        "rules": [{"matches": [{"destinationHostnames": [host], "ports": [{"port": port}]}]}],
    }
    return obj("EgressL4Route", name, spec, namespace)


def credential(name="key", route="r1", secret="anthropic", key="api-key", namespace="default"):
    """An EgressCredential reading `key` of Secret `secret` (in its own namespace)."""
    spec = {
        "targetRef": {"name": route},
        "header": "x-api-key",
        "placeholder": f"clrk-placeholder-{namespace}-{name}",
        "source": {"secretRef": {"name": secret, "key": key}},
    }
    return obj("EgressCredential", name, spec, namespace)


def deny(name="no-paste", target="r1", namespace="default") -> dict:
    return obj("EgressDenyPolicy", name, {"targetRef": {"name": target}}, namespace)


def agent(kind="TaskAgent", name="coder", gateway="gw", labels=None, namespace="default"):
    spec = {"egressRefs": [{"gatewayRef": gateway}]}
    return obj(kind, name, spec, namespace, labels=labels or {"team": "a"})


class Cluster:
    """create/replace/delete/get of clrk objects through the official client."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def put_secret(self, name: str, data: dict[str, str], namespace: str = "default") -> None:
        """Create or replace an Opaque Secret (`stringData`: the server encodes it)."""
        body = {"metadata": {"name": name, "namespace": namespace}, "stringData": data}
        try:
            self.core.create_namespaced_secret(namespace, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self.core.replace_namespaced_secret(name, namespace, body)

    def delete_secret(self, name: str, namespace: str = "default") -> None:
        self.core.delete_namespaced_secret(name, namespace)

    def create(self, body: dict) -> dict:
        ns = body["metadata"]["namespace"]
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, plural(body["kind"]), body
        )

    def get(self, kind: str, name: str, namespace: str = "default") -> dict:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural(kind), name
        )

    def replace(self, body: dict) -> dict:
        """Update the spec and labels of an object (read, change, write; again on a
        409, as the provider may have written status in between, as kubectl does)."""
        meta = body["metadata"]
        for _ in range(10):
            current = self.get(body["kind"], meta["name"], meta["namespace"])
            current["spec"] = body.get("spec")
            if "labels" in meta:
                current["metadata"]["labels"] = meta["labels"]
            try:
                return self.custom.replace_namespaced_custom_object(
                    GROUP, VERSION, meta["namespace"], plural(body["kind"]), meta["name"], current
                )
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
        raise AssertionError("409 ten times in a row")

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind), name)

    def condition(self, kind: str, name: str, type_: str, namespace: str = "default"):
        status = self.get(kind, name, namespace).get("status") or {}
        for cond in status.get("conditions", []):
            if cond["type"] == type_:
                return cond
        return None
