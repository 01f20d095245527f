"""A small checker of documents against a structural OpenAPI v3 schema, as the API
server applies a CRD's schema (types, enums, bounds, patterns, required, unknown
fields) and its CEL rules (`x-kubernetes-validations`, evaluated with cel-python where
the API server uses cel-go).  The tests check examples against the generated CRDs with
it, and the fake API server refuses what a real one would."""

from __future__ import annotations

import functools
import re
from typing import Any

import celpy


@functools.cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_holds(rule: str, value: Any) -> bool:
    """The rule on `self = value`; an evaluation error counts as a refusal."""
    try:
        result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    except celpy.CELEvalError:
        return False
    return result is True or (isinstance(result, celpy.celtypes.BoolType) and bool(result))


_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


def problems(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every way `value` breaks `schema`, one line each (`path: message`)."""
    where = path or "<root>"
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, int | str) and not isinstance(value, bool)
        return [] if ok else [f"{where}: must be an integer or a string"]
    kind = schema.get("type")
    expected = _TYPES.get(kind) if kind else None
    if expected is not None and (
        not isinstance(value, expected) or (isinstance(value, bool) and kind != "boolean")
    ):
        return [f"{where}: must be of type {kind}"]
    out: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: must be one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            out.append(f"{where}: shorter than {schema['minLength']}")
        if len(value) > schema.get("maxLength", len(value)):
            out.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{where}: does not match {schema['pattern']}")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        out.append(f"{where}: out of range")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            out.append(f"{where}: fewer than {schema['minItems']} items")
        if len(value) > schema.get("maxItems", len(value)):
            out.append(f"{where}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            out += problems(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{path}.{key}".lstrip(".") + ": required")
        for key, item in value.items():
            sub = f"{path}.{key}".lstrip(".")
            if key in props:
                out += problems(item, props[key], sub)
            elif isinstance(extra, dict):
                out += problems(item, extra, sub)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and props:
                out.append(f"{sub}: unknown field")
    if not out:  # the API server runs the rules on values that fit the schema
        for rule in schema.get("x-kubernetes-validations", []):
            if not cel_holds(rule["rule"], value):
                out.append(f"{where}: {rule['message']}")
    return out
