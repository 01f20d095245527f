"""The control plane's RBAC, read from deploy/, for the fake API server to enforce:
the provider's tests then fail where a cluster would answer 403."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RBAC = DEPLOY / "gateway" / "rbac.yaml"
SUBJECT = ("clrk-system", "clrk-control-plane")  # namespace, service account


@dataclass(frozen=True)
class Grant:
    group: str
    resource: str  # "leases", "egressl4routes/status"
    verb: str
    namespace: str | None  # None: every namespace (a ClusterRole)


def _bound_roles(docs: list[dict]) -> set[tuple[str, str | None]]:
    """(role name, namespace or None for a ClusterRole) bound to the service account."""
    out = set()
    for doc in docs:
        if doc.get("kind") not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        for subject in doc.get("subjects", []):
            if (subject.get("namespace"), subject.get("name")) == SUBJECT:
                ref = doc["roleRef"]
                cluster = ref["kind"] == "ClusterRole" and doc["kind"] == "ClusterRoleBinding"
                out.add((ref["name"], None if cluster else doc["metadata"]["namespace"]))
    return out


def control_plane_grants(path: Path = RBAC) -> frozenset[Grant]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    bound = _bound_roles(docs)
    grants = set()
    for doc in docs:
        if doc.get("kind") not in ("ClusterRole", "Role"):
            continue
        namespace = doc["metadata"].get("namespace") if doc["kind"] == "Role" else None
        if (doc["metadata"]["name"], namespace) not in bound:
            continue
        for rule in doc.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        grants.add(Grant(group, resource, verb, namespace))
    return frozenset(grants)


def allowed(grants: frozenset[Grant], group: str, resource: str, verb: str, ns: str | None):
    return any(
        g.group == group
        and g.resource == resource
        and g.verb in (verb, "*")
        and (g.namespace is None or g.namespace == ns)
        for g in grants
    )
