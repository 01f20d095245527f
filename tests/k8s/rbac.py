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
    names: frozenset[str] | None = None  # a rule's resourceNames; None: any name


def _bound_roles(docs: list[dict]) -> set[tuple[str, str, str | None]]:
    """(role kind, role name, namespace or None) bound to the service account: a
    ClusterRole bound by a RoleBinding grants its rules in that namespace only."""
    out = set()
    for doc in docs:
        if doc.get("kind") not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        for subject in doc.get("subjects", []):
            if (subject.get("namespace"), subject.get("name")) == SUBJECT:
                ref = doc["roleRef"]
                where = (
                    None if doc["kind"] == "ClusterRoleBinding" else doc["metadata"]["namespace"]
                )
                out.add((ref["kind"], ref["name"], where))
    return out


def grants_of(docs: list[dict]) -> frozenset[Grant]:
    """What the RBAC objects among `docs` grant the control plane's service account."""
    grants = set()
    for kind, name, where in _bound_roles(docs):
        role = next(
            (
                d
                for d in docs
                if d.get("kind") == kind
                and d["metadata"]["name"] == name
                and (kind == "ClusterRole" or d["metadata"].get("namespace") == where)
            ),
            None,
        )
        for rule in role.get("rules", []) if role else []:
            names = rule.get("resourceNames")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        grants.add(
                            Grant(group, resource, verb, where, frozenset(names) if names else None)
                        )
    return frozenset(grants)


def control_plane_grants(path: Path = RBAC, *extra: dict) -> frozenset[Grant]:
    """deploy/'s grants, and those of `extra` RBAC objects (a RoleBinding an operator
    adds, say)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return grants_of(docs + list(extra))


def credential_secrets_binding(namespace: str) -> dict:
    """The RoleBinding an operator adds in each namespace whose credentials name
    Secrets (docs/kubernetes-provider.md): deploy/'s ClusterRole, in that namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "clrk-credential-secrets", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "clrk-credential-secrets",
        },
        "subjects": [{"kind": "ServiceAccount", "name": SUBJECT[1], "namespace": SUBJECT[0]}],
    }


def allowed(
    grants: frozenset[Grant],
    group: str,
    resource: str,
    verb: str,
    ns: str | None,
    name: str | None = None,
) -> bool:
    """`name`: of the object asked for (a list or watch: its metadata.name selector)."""
    return any(
        g.group == group
        and g.resource == resource
        and g.verb in (verb, "*")
        and (g.namespace is None or g.namespace == ns)
        and (g.names is None or name in g.names)
        for g in grants
    )
