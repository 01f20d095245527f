"""Validation findings: one line each, naming file, document, object and field."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Scope(enum.StrEnum):
    """What an error costs.

    SET: the manifests cannot be applied at all (schema, syntax, duplicates); the last good
    policy stays in force.  OBJECT: one object is not accepted (a reference that points
    nowhere) and contributes nothing; the rest of the set still applies.
    """

    SET = "set"
    OBJECT = "object"


@dataclass(frozen=True, slots=True)
class Finding:
    file: str
    document: int  # 1-based index of the YAML document in its file; 0 = the file itself
    kind: str
    name: str
    field: str
    message: str
    severity: Severity = Severity.ERROR
    scope: Scope = Scope.SET

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def line(self) -> str:
        """`FILE: document N: KIND/NAME: FIELD.PATH: message` (warnings prefixed)."""
        where = f"document {self.document}" if self.document else "file"
        text = f"{self.file}: {where}: {self.kind}/{self.name}: {self.field}: {self.message}"
        return f"warning: {text}" if self.severity is Severity.WARNING else text


def field_path(loc: tuple[str | int, ...]) -> str:
    """('spec', 'rules', 0, 'matches') -> 'spec.rules[0].matches'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<document>"
