"""deploy/ as a cluster would take it, offline: every Kubernetes object validates against
Kubernetes' own schemas (kubernetes-validate, strict), every clrk object against the
generated CRDs and the loader, the kustomizations assemble, and what they wire together
(service accounts, Secrets, Services, RBAC) exists.  The agent example is what
`clrk inject` makes of the agent as written."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from clrk.api import load_objects
from clrk.api.crds import all_crds
from clrk_cli import main
from tests.k8s.kustomize import build, listed_files
from tests.k8s.openapi_check import problems
from tests.k8s.rbac import RBAC, control_plane_grants, credential_secrets_binding

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
AGENT = DEPLOY / "agent-example"
KUBERNETES = "1.29"  # native sidecars: the oldest release clrk's pods run on
CLRK_GROUP = "clrk.apoxy.dev/"
# cert-manager's kinds: no schema offline; their fields are checked below by hand.
CERT_MANAGER = {"Issuer", "ClusterIssuer", "Certificate"}


def _all_objects() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        out += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _schemas() -> dict[str, dict]:
    return {
        doc["spec"]["names"]["kind"]: doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for doc in all_crds().values()
    }


def test_every_kubernetes_object_under_deploy_validates_against_kubernetes_schemas():
    checked = 0
    for path, obj in _all_objects():
        if obj["kind"] == "Kustomization" or obj["apiVersion"].startswith(CLRK_GROUP):
            continue
        if obj["kind"] in CERT_MANAGER:
            assert obj["apiVersion"] == "cert-manager.io/v1", path
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.relative_to(ROOT)}: {obj['kind']}: {where}: {exc.message}")
        checked += 1
    assert checked >= 15


def test_every_clrk_object_under_deploy_is_valid_for_the_crds_and_the_loader():
    schemas = _schemas()
    objects = [(p, o) for p, o in _all_objects() if o["apiVersion"].startswith(CLRK_GROUP)]
    assert objects
    for path, obj in objects:
        assert problems(obj, schemas[obj["kind"]]) == [], path
    loaded = load_objects([o for _, o in objects], "deploy/agent-example")
    assert loaded.errors == (), [str(f) for f in loaded.errors]


def test_every_file_under_deploy_is_assembled_by_a_kustomization():
    listed = listed_files(DEPLOY) | listed_files(AGENT) | {AGENT / "agent.yaml"}
    assert sorted(set(DEPLOY.rglob("*.yaml")) - listed) == []


def test_the_control_plane_kustomization_wires_what_it_references():
    objects = [o for _, o in build(DEPLOY)]
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), "an object defined twice"
    by_kind: dict[str, dict[tuple, dict]] = {}
    for (kind, ns, name), obj in zip(keys, objects, strict=True):
        by_kind.setdefault(kind, {})[(ns, name)] = obj
    assert "clrk-system" in {ns for _, ns, _ in keys if _ != "Namespace"}
    secrets = {(c["metadata"]["namespace"], c["spec"]["secretName"])
               for c in by_kind["Certificate"].values()}  # fmt: skip
    for (ns, name), deployment in by_kind["Deployment"].items():
        pod = deployment["spec"]["template"]
        account = pod["spec"]["serviceAccountName"]
        assert (ns, account) in by_kind["ServiceAccount"], f"{name}: no {account}"
        for volume in pod["spec"].get("volumes", []):
            if "secret" in volume:
                assert (ns, volume["secret"]["secretName"]) in secrets, f"{name}: {volume}"
        labels = pod["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for (ns, name), service in by_kind["Service"].items():
        selected = [d for (dns, _), d in by_kind["Deployment"].items() if dns == ns
                    and service["spec"]["selector"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]  # fmt: skip
        assert selected, f"Service {name} selects no pod"
    # The control plane reaches ext_proc, and its Envoys reach it, by these Services' names.
    args = by_kind["Deployment"][("clrk-system", "clrk-control-plane")]["spec"]["template"]
    args = args["spec"]["containers"][0]["args"]
    assert "--extproc=clrk-extproc.clrk-system.svc:18002" in args
    assert "--provider=kubernetes" in args and "--tls-dir=/etc/clrk/tls" in args


def test_rbac_is_least_privilege_list_watch_the_kinds_write_their_status_and_leases():
    objects = {(o["kind"], o["metadata"]["name"]): o for _, o in build(DEPLOY)}
    rules = objects[("ClusterRole", "clrk-control-plane")]["rules"]
    kinds = sorted(d["spec"]["names"]["plural"] for d in all_crds().values())
    assert rules == [
        {"apiGroups": ["clrk.apoxy.dev"], "resources": kinds, "verbs": ["list", "watch"]}
        | {"resources": rules[0]["resources"]},
        {"apiGroups": ["clrk.apoxy.dev"], "resources": rules[1]["resources"],
         "verbs": ["get", "update"]},
    ]  # fmt: skip
    assert sorted(rules[0]["resources"]) == kinds
    assert sorted(rules[1]["resources"]) == [f"{k}/status" for k in kinds]
    lease = objects[("Role", "clrk-control-plane-lease")]
    assert lease["metadata"]["namespace"] == "clrk-system"
    assert lease["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "create", "update"],
        }
    ]  # fmt: skip  (list: the status writer reads the other replicas' ACK reports)
    # Secrets: list and watch (by name) only where an operator binds this role per
    # namespace; deploy/ binds it nowhere, and never cluster-wide.
    secrets = objects[("ClusterRole", "clrk-credential-secrets")]
    assert secrets["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}
    ]
    bindings = [o for o in objects.values() if o["kind"].endswith("Binding")]
    assert all(b["roleRef"]["name"] != "clrk-credential-secrets" for b in bindings)
    granted = {(g.group, g.resource) for g in control_plane_grants()}
    assert ("", "secrets") not in granted
    bound = control_plane_grants(RBAC, credential_secrets_binding("team-a"))
    assert {(g.resource, g.verb, g.namespace) for g in bound if g.resource == "secrets"} == {
        ("secrets", "list", "team-a"),
        ("secrets", "watch", "team-a"),
    }


def test_the_agent_example_is_clrk_inject_of_the_agent_as_written(capsys):
    assert main(["inject", "-f", str(AGENT / "agent.yaml")]) == 0
    printed = capsys.readouterr().out
    assert list(yaml.safe_load_all(printed)) == list(
        yaml.safe_load_all((AGENT / "agent-injected.yaml").read_text())
    ), "deploy/agent-example/agent-injected.yaml is stale: rerun clrk inject -f agent.yaml"


def test_the_agent_example_pod_mounts_its_gateway_identity_issued_by_the_clusters_ca():
    objects = [o for _, o in build(AGENT)]
    pod = next(o for o in objects if o["kind"] == "Pod")
    certificate = next(o for o in objects if o["kind"] == "Certificate")
    gateway = pod["metadata"]["annotations"]["clrk.apoxy.dev/gateway"]
    namespace, name = gateway.split("/")
    assert certificate["spec"]["uris"] == [
        f"spiffe://clrk.apoxy.dev/ns/{namespace}/egressgateway/{name}"
    ]
    secret = certificate["spec"]["secretName"]
    assert {"name": "clrk-tls", "secret": {"secretName": secret, "defaultMode": 0o444}} in pod[
        "spec"
    ]["volumes"]
    assert certificate["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "clrk"}
    issuers = [o for _, o in build(DEPLOY) if o["kind"] == "ClusterIssuer"]
    assert [i["metadata"]["name"] for i in issuers] == ["clrk"]
