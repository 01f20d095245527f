"""CRDs from the models: structural, closed, in step with deploy/crds/, and accepting
every example manifest the loader accepts."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from clrk.api import load_paths
from clrk.api.crds import CEL, all_crds, crd, model_schema, render_files, render_stream
from clrk.api.resources import (
    SPEC_MODELS,
    CredentialSource,
    EgressDenyPolicySpec,
    EgressGatewaySpec,
    LabelSelectorRequirement,
    Listener,
    PortSpec,
)
from clrk_cli import main
from tests.k8s.openapi_check import problems

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = ROOT / "deploy" / "crds"
EXAMPLES = ROOT / "examples"


def _schema(kind: str) -> dict:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _nodes(schema: dict, path: str = ""):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_deploy_crds_are_what_clrk_crds_generates_so_a_model_change_needs_a_regeneration():
    expected = render_files()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in DEPLOYED.iterdir()}
    assert sorted(on_disk) == sorted(expected), "run `clrk crds -o deploy/crds`"
    for name, text in expected.items():
        assert on_disk[name] == text, f"deploy/crds/{name} is stale: run `clrk crds -o deploy/crds`"


def test_clrk_crds_writes_the_files_and_prints_the_same_crds_as_one_stream(tmp_path, capsys):
    assert main(["crds", "-o", str(tmp_path / "out")]) == 0
    written = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert written == render_files()
    capsys.readouterr()
    assert main(["crds"]) == 0
    streamed = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert streamed == list(all_crds().values())
    assert render_stream().count("kind: CustomResourceDefinition") == len(SPEC_MODELS)


def test_there_is_one_crd_per_kind_with_short_names_status_and_printer_columns():
    by_kind = {doc["spec"]["names"]["kind"]: doc for doc in all_crds().values()}
    assert sorted(by_kind) == sorted(SPEC_MODELS)
    short = {k: d["spec"]["names"].get("shortNames") for k, d in by_kind.items()}
    assert short["EgressGateway"] == ["egw"]
    assert short["EgressL4Route"] == ["el4r"]
    assert short["EgressDenyPolicy"] == ["edp"]
    for doc in by_kind.values():
        (version,) = doc["spec"]["versions"]
        assert version["subresources"] == {"status": {}}
        columns = [c["name"] for c in version["additionalPrinterColumns"]]
        assert columns == ["Accepted", "Programmed", "Age"]
        assert doc["spec"]["scope"] == "Namespaced"


def test_every_schema_is_structural_every_node_has_a_type_and_no_references_or_unions():
    for kind in SPEC_MODELS:
        for path, node in _nodes(_schema(kind)):
            assert "type" in node or node.get("x-kubernetes-int-or-string"), (kind, path)
            for banned in ("$ref", "anyOf", "oneOf", "allOf", "nullable", "default"):
                assert banned not in node, (kind, path, banned)


def test_only_agent_specs_keep_unknown_fields_everything_else_is_closed():
    for kind in SPEC_MODELS:
        keeping = [
            p for p, n in _nodes(_schema(kind)) if n.get("x-kubernetes-preserve-unknown-fields")
        ]
        assert keeping == ([".spec"] if kind.endswith("Agent") else []), kind


def test_a_typo_in_a_field_name_is_refused_by_the_schema_as_it_is_by_the_loader():
    route = {
        "apiVersion": "clrk.apoxy.dev/v1alpha1",
        "kind": "EgressL4Route",
        "metadata": {"name": "r"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"matches": [{"destinationCIDR": ["10.0.0.0/8"]}]}],
        },
    }
    assert problems(route, _schema("EgressL4Route")) == [
        "spec.rules[0].matches[0].destinationCIDR: unknown field"
    ]


def test_every_example_manifest_the_loader_accepts_passes_its_crd_schema():
    load = load_paths([EXAMPLES])
    assert load.resources and not load.errors
    raw = dict(load.raw)
    for res in load.resources:
        assert problems(raw[res.source], _schema(res.kind)) == [], res.ref


def test_port_and_status_code_bounds_come_from_the_models():
    spec = _schema("EgressL4Route")["properties"]["spec"]
    ports = spec["properties"]["rules"]["items"]["properties"]["matches"]["items"]
    port = ports["properties"]["ports"]["items"]["properties"]["port"]
    assert (port["type"], port["minimum"], port["maximum"]) == ("integer", 1, 65535)
    deny = _schema("EgressDenyPolicy")["properties"]["spec"]["properties"]["denyResponse"]
    code = deny["properties"]["statusCode"]
    assert (code["minimum"], code["maximum"]) == (400, 599)
    listeners = _schema("EgressGateway")["properties"]["spec"]["properties"]["listeners"]
    assert (listeners["minItems"], listeners["maxItems"]) == (1, 16)


def test_cel_rules_name_only_fields_their_object_has():
    for model, rules in CEL.items():
        fields = {info.alias or name for name, info in model.model_fields.items()}
        for rule in rules:
            used = set(re.findall(r"\bself\.(\w+)", rule["rule"]))
            assert used <= fields, (model.__name__, used - fields)


def test_port_xor_range_and_unique_listener_names_are_cel_rules_on_their_objects():
    spec = _schema("EgressGateway")["properties"]["spec"]
    assert any("exists_one" in r["rule"] for r in spec["x-kubernetes-validations"])
    route = _schema("EgressL4Route")["properties"]["spec"]
    match = route["properties"]["rules"]["items"]["properties"]["matches"]["items"]
    rules = match["properties"]["ports"]["items"]["x-kubernetes-validations"]
    assert rules[0]["message"] == "give either port or startPort/endPort, not both"


def _agree(model, candidates):
    """The CRD (schema and CEL rules) accepts exactly what the model accepts."""
    schema = model_schema(model)
    for value in candidates:
        try:
            model.model_validate(value)
            valid = True
        except ValidationError:
            valid = False
        assert (problems(value, schema) == []) == valid, (model.__name__, value)


def _present(**fields):
    return {k: v for k, v in fields.items() if v is not None}


def test_port_xor_range_rules_accept_exactly_what_the_model_accepts():
    _agree(
        PortSpec,
        [
            _present(port=p, startPort=s, endPort=e)
            for p in (None, 80)
            for s in (None, 10, 90)
            for e in (None, 20, 5)
        ],
    )


def test_listener_rules_accept_exactly_what_the_model_accepts():
    _agree(
        Listener,
        [
            _present(name="a", protocol=protocol, tls=tls)
            for protocol in ("TCP", "TLS", "HTTP", "UDP")
            for tls in (None, {}, {"mode": "Terminate"})
        ],
    )
    _agree(
        EgressGatewaySpec,
        [
            {"listeners": [{"name": n, "protocol": "TCP"} for n in names]}
            for names in (["a"], ["a", "b"], ["a", "a"], ["a", "b", "a"], ["b", "a", "c"])
        ],
    )


def test_selector_and_deny_target_rules_accept_exactly_what_the_model_accepts():
    _agree(
        LabelSelectorRequirement,
        [
            _present(key="team", operator=op, values=values)
            for op in ("In", "NotIn", "Exists", "DoesNotExist")
            for values in (None, [], ["a"])
        ],
    )
    target = {"name": "r1"}
    _agree(
        EgressDenyPolicySpec,
        [
            _present(targetRef=one, targetRefs=many)
            for one in (None, target)
            for many in (None, [], [target])
        ],
    )


def test_the_credential_source_rule_accepts_exactly_what_the_model_accepts():
    _agree(
        CredentialSource,
        [
            _present(file=f, env=e, secretRef=s)
            for f in (None, "/run/secrets/token")
            for e in (None, "API_TOKEN")
            for s in (None, {"name": "api", "key": "token"})
        ],
    )
