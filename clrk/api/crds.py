"""CustomResourceDefinitions generated from the models: one per kind.

The OpenAPI v3 schema of each spec is walked from the pydantic model, so a new field
or kind reaches the CRDs by regenerating them.  The schemas are structural and closed:
every field the model knows is declared and nothing else (except an agent's spec,
which keeps other systems' fields as the model does), so the API server refuses a typo
at admission under kubectl's and server-side apply's strict field validation, where a
file is refused by the loader.  A client that asks for no field validation gets the
unknown field pruned and a warning, and the provider enforces what is stored (what
`kubectl get -o yaml` shows).  The schema checks the forms a field is written in; the
loader, run by the provider on every object, still decides validity (hostname rules,
CIDR host bits, references), and its finding becomes the object's Accepted condition.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, BeforeValidator

from clrk.api import grammar, resources
from clrk.api.resources import API_VERSION, GROUP, SPEC_MODELS

VERSION = API_VERSION.rpartition("/")[2]


@dataclass(frozen=True)
class Names:
    plural: str
    short: tuple[str, ...] = ()


NAMES: dict[str, Names] = {
    "EgressGateway": Names("egressgateways", ("egw",)),
    "EgressL4Route": Names("egressl4routes", ("el4r",)),
    "EgressDenyPolicy": Names("egressdenypolicies", ("edp",)),
    "EgressCredential": Names("egresscredentials", ("ecred",)),
    "DaemonAgent": Names("daemonagents"),
    "TaskAgent": Names("taskagents"),
}


def plural(kind: str) -> str:
    return NAMES[kind].plural if kind in NAMES else kind.lower() + "s"


def _anchored(pattern: typing.Pattern[str]) -> str:
    return f"^{pattern.pattern}$"


_STRING = {"type": "string"}
# Each scalar form of the API (a BeforeValidator of `clrk.api.resources`) as written.
_WIRE: dict[object, dict[str, Any]] = {
    grammar.normalise_hostname: {**_STRING, "minLength": 1, "maxLength": 253},
    grammar.parse_cidr: {**_STRING, "minLength": 1, "maxLength": 43},
    grammar.check_object_name: {
        **_STRING,
        "maxLength": 253,
        "pattern": _anchored(grammar._DNS_SUBDOMAIN),
    },
    grammar.check_dns_label: {**_STRING, "maxLength": 63, "pattern": _anchored(grammar._LABEL)},
    grammar.check_label_key: {**_STRING, "minLength": 1, "maxLength": 317},
    grammar.check_label_value: {**_STRING, "maxLength": 63},
    grammar.parse_duration: {"x-kubernetes-int-or-string": True},
    resources._port: {"type": "integer", "minimum": 1, "maximum": 65535},
    resources._status_code: {"type": "integer", "minimum": 400, "maximum": 599},
    resources._endpoint: {**_STRING, "pattern": "^https?://"},
    resources._gateway_ref: {**_STRING, "minLength": 1, "maxLength": 317},
    resources._header_name: {
        **_STRING,
        "minLength": 1,
        "maxLength": 128,
        "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
    },
    resources._env_name: {**_STRING, "pattern": _anchored(resources._ENV_NAME)},
    resources._placeholder: {**_STRING, "pattern": _anchored(resources._PLACEHOLDER)},
    resources._prefix: {**_STRING, "pattern": _anchored(resources._PREFIX)},
    resources._secret_file: {**_STRING, "minLength": 2, "pattern": "^/"},
    resources._secret_key: {
        **_STRING,
        "maxLength": 253,
        "pattern": _anchored(resources._SECRET_KEY),
    },
}
# Resolver's validator is a lambda: found through the alias.
_WIRE[typing.get_args(resources.Resolver)[1].func] = {**_STRING, "minLength": 1}

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _rule(rule: str, message: str, **extra: str) -> dict[str, str]:
    return {"rule": rule, "message": message, **extra}


# What the schema alone cannot say, in CEL: the models' own checks, where CEL can.
CEL: dict[type[BaseModel], list[dict[str, str]]] = {
    resources.Listener: [
        _rule("!has(self.tls) || self.protocol == 'TLS'", "tls is only allowed on a TLS listener"),
    ],
    resources.EgressGatewaySpec: [
        _rule(
            "self.listeners.all(l, self.listeners.exists_one(m, m.name == l.name))",
            "listener names must be unique",
            fieldPath=".listeners",
        ),
    ],
    resources.PortSpec: [
        _rule(
            "has(self.port) != (has(self.startPort) || has(self.endPort))",
            "give either port or startPort/endPort, not both",
        ),
        _rule(
            "has(self.startPort) == has(self.endPort)",
            "a port range needs both startPort and endPort",
        ),
        _rule(
            "!has(self.startPort) || !has(self.endPort) || self.startPort <= self.endPort",
            "startPort must not be greater than endPort",
        ),
    ],
    resources.LabelSelectorRequirement: [
        _rule(
            "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0"
            " : !has(self.values) || size(self.values) == 0",
            "In and NotIn need values; Exists and DoesNotExist take none",
        ),
    ],
    resources.CredentialSource: [
        _rule(
            "(has(self.file) ? 1 : 0) + (has(self.env) ? 1 : 0) + (has(self.secretRef) ? 1 : 0)"
            " == 1",
            "give exactly one of file, env or secretRef",
        ),
    ],
    resources.EgressDenyPolicySpec: [
        _rule(
            "has(self.targetRef) || (has(self.targetRefs) && size(self.targetRefs) > 0)",
            "give targetRef or targetRefs",
        ),
    ],
}


def _bounds(schema: dict[str, Any], metadata: typing.Iterable[object]) -> dict[str, Any]:
    for item in metadata:
        if isinstance(item, annotated_types.MinLen):
            schema["minItems" if schema.get("type") == "array" else "minLength"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            schema["maxItems" if schema.get("type") == "array" else "maxLength"] = item.max_length
    return schema


def type_schema(annotation: object, metadata: typing.Sequence[object] = ()) -> dict[str, Any]:
    """The OpenAPI v3 schema of a value of `annotation`, as it is written."""
    for item in metadata:
        if isinstance(item, BeforeValidator) and item.func in _WIRE:
            return dict(_WIRE[item.func])
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_schema(args[0], [*args[1:], *metadata])
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        if len(present) != 1:
            raise TypeError(f"no structural schema for the union {annotation}")
        # No `nullable`: the API server prunes a null, and the model's default applies.
        return type_schema(present[0], metadata)
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin is list:
        return _bounds({"type": "array", "items": type_schema(args[0])}, metadata)
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1])}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_schema(annotation)
    if annotation in _SCALARS:
        return _bounds({"type": _SCALARS[annotation]}, metadata)
    raise TypeError(f"no schema for {annotation!r}; add its written form to clrk.api.crds")


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        properties[key] = type_schema(info.annotation, info.metadata)
        if info.is_required():
            required.append(key)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if model.model_config.get("extra") == "allow":
        schema["x-kubernetes-preserve-unknown-fields"] = True
    if model in CEL:
        schema["x-kubernetes-validations"] = CEL[model]
    return schema


# metav1.Condition, as Gateway API's status uses it.
CONDITION = {
    "type": "object",
    "required": ["type", "status", "reason", "message", "lastTransitionTime"],
    "properties": {
        "type": {"type": "string", "maxLength": 316},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string", "maxLength": 1024},
        "message": {"type": "string", "maxLength": 32768},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer", "minimum": 0},
    },
}
STATUS = {
    "type": "object",
    "properties": {
        "observedGeneration": {"type": "integer", "minimum": 0},
        "conditions": {
            "type": "array",
            "maxItems": 8,
            "items": CONDITION,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    },
}


def _condition_column(kind: str) -> dict[str, str]:
    return {
        "name": kind,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{kind}")].status',
    }


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of `kind` (apiextensions.k8s.io/v1)."""
    names = NAMES.get(kind, Names(plural(kind)))
    spec = model_schema(SPEC_MODELS[kind])
    top: dict[str, Any] = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": STATUS,
        },
    }
    if kind not in resources.AGENT_KINDS:  # an agent's spec may be left out
        top["required"] = ["spec"]
    crd_names: dict[str, Any] = {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": names.plural,
        "singular": kind.lower(),
        "categories": ["clrk"],
    }
    if names.short:
        crd_names["shortNames"] = list(names.short)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{names.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": crd_names,
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": top},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        _condition_column("Accepted"),
                        _condition_column("Programmed"),
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name (`<plural>.<group>.yaml`) -> CRD, for every kind of the API."""
    return {f"{crd_doc['metadata']['name']}.yaml": crd_doc for crd_doc in map(crd, SPEC_MODELS)}


HEADER = "# Generated from the models by `clrk crds`; do not edit.\n"


def _dump(doc: object) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=1000)


def render_files() -> dict[str, str]:
    """What `clrk crds -o DIR` writes: a file per CRD and a kustomization of them."""
    files = {name: HEADER + _dump(doc) for name, doc in all_crds().items()}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = HEADER + _dump(kustomization)
    return files


def render_stream() -> str:
    """Every CRD as one YAML stream (`clrk crds` without -o)."""
    return HEADER + "".join("---\n" + _dump(doc) for doc in all_crds().values())
