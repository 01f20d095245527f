"""The part of kustomize deploy/ uses, to assemble it offline as `kubectl apply -k` would:
`resources` (files, or directories with a kustomization.yaml) and `namespace` (set on
every namespaced object and on the ServiceAccount subjects of role bindings).  Any other
field of a Kustomization is an error here, so deploy/ cannot outgrow this check."""

from __future__ import annotations

from pathlib import Path

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources"}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "ClusterIssuer",
}  # fmt: skip


def build(directory: Path) -> list[tuple[Path, dict]]:
    """Every object of the kustomization in `directory`, with the file it came from."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    assert not unknown, f"{directory}/kustomization.yaml: fields not checked here: {unknown}"
    out: list[tuple[Path, dict]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            out += build(path)
        else:
            out += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    namespace = kustomization.get("namespace")
    if namespace:
        for _, obj in out:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
    return out


def listed_files(directory: Path) -> set[Path]:
    """The files a kustomization (and those it includes) lists, itself included."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out = {directory / "kustomization.yaml"}
    for entry in kustomization.get("resources", []):
        path = directory / entry
        out |= listed_files(path) if path.is_dir() else {path}
    return out
