"""What `List` of the admin API shows, as a pure function of one read of the manifests.

Conditions follow Gateway API: `Accepted` (the object is valid and its references
resolve; from `clrk.api.resolve` where it decides) and `Programmed` (the read it
comes from is the set in force).  Documents that failed validation are listed too,
Accepted=False, so an operator sees why an object is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from clrk.api.findings import Finding
from clrk.api.resources import AGENT_KINDS
from clrk.policy.loaded import Loaded

KIND_ALIASES = {
    "gateway": ("EgressGateway",),
    "gateways": ("EgressGateway",),
    "gw": ("EgressGateway",),
    "egressgateway": ("EgressGateway",),
    "route": ("EgressL4Route",),
    "routes": ("EgressL4Route",),
    "egressl4route": ("EgressL4Route",),
    "policy": ("EgressDenyPolicy",),
    "policies": ("EgressDenyPolicy",),
    "denypolicies": ("EgressDenyPolicy",),
    "egressdenypolicy": ("EgressDenyPolicy",),
    "credential": ("EgressCredential",),
    "credentials": ("EgressCredential",),
    "egresscredential": ("EgressCredential",),
    "agent": AGENT_KINDS,
    "agents": AGENT_KINDS,
    "daemonagent": ("DaemonAgent",),
    "taskagent": ("TaskAgent",),
}
ALL_KINDS = (
    "EgressGateway",
    "EgressL4Route",
    "EgressDenyPolicy",
    "EgressCredential",
    *AGENT_KINDS,
)


def kinds_for(text: str) -> tuple[str, ...]:
    """ "" -> every kind; an alias or kind name (any case) -> its kinds; else ValueError."""
    if not text:
        return ALL_KINDS
    kinds = KIND_ALIASES.get(text.lower())
    if kinds is None:
        known = "gateways, routes, policies, credentials, agents"
        raise ValueError(f"unknown kind {text!r}; expected one of {known}")
    return tuple(kinds)


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class ObjectStatus:
    kind: str
    namespace: str
    name: str
    source_file: str
    source_document: int
    conditions: tuple[Cond, ...]
    last_errors: tuple[str, ...]


def _programmed(accepted: bool, in_force: bool, blocked: bool) -> Cond:
    if not accepted:
        return Cond("Programmed", False, "NotAccepted", "the object contributes nothing")
    if in_force:
        return Cond("Programmed", True, "Programmed")
    if blocked:
        return Cond(
            "Programmed",
            False,
            "Invalid",
            "the manifests are invalid: the last good set stays in force",
        )
    return Cond("Programmed", False, "Pending", "the control plane has not loaded it yet")


def _by_document(findings: Iterable[Finding]) -> dict[tuple[str, int], list[Finding]]:
    out: dict[tuple[str, int], list[Finding]] = {}
    for f in findings:
        out.setdefault((f.file, f.document), []).append(f)
    return out


def object_statuses(
    loaded: Loaded, *, in_force: bool, kinds: tuple[str, ...] = ALL_KINDS
) -> list[ObjectStatus]:
    """Every object of `kinds` in the read, in (kind, namespace, name) order.

    `in_force`: this read is the set the control plane serves.
    """
    load = loaded.load
    conditions_of = loaded.compiled.conditions  # the resolver's, from the compile
    per_doc = _by_document(loaded.findings)
    out: list[ObjectStatus] = []
    for res in load.resources:
        if res.kind not in kinds:
            continue
        found = per_doc.get((res.source.file, res.source.document), [])
        errors = [f for f in found if f.is_error]
        resolved = conditions_of.get((res.kind, res.namespace, res.name), ())
        accepted_cond = next((c for c in resolved if c.type == "Accepted"), None)
        if accepted_cond is not None:
            accepted = accepted_cond.status
            # the finding says what to fix where the resolver's condition does not
            message = accepted_cond.message or (
                errors[0].message if errors and not accepted else ""
            )
            cond = Cond("Accepted", accepted, accepted_cond.reason, message)
        elif errors:
            accepted = False
            cond = Cond("Accepted", False, "InvalidReference", errors[0].message)
        else:
            accepted = True
            cond = Cond("Accepted", True, "Accepted")
        conditions = (cond, _programmed(accepted, in_force and not loaded.blocked, loaded.blocked))
        out.append(
            ObjectStatus(
                res.kind,
                res.namespace,
                res.name,
                res.source.file,
                res.source.document,
                conditions,
                tuple(f.line() for f in found),
            )
        )
    raw = {(src.file, src.document): data for src, data in load.raw}
    taken = {(r.source.file, r.source.document) for r in load.resources}
    for (file, document), found in per_doc.items():
        first = found[0]
        if (file, document) in taken or first.kind not in kinds:
            continue  # also skips file-level findings, whose kind is unknown
        message = next((f.message for f in found if f.is_error), "")
        out.append(
            ObjectStatus(
                first.kind,
                _claimed_namespace(raw.get((file, document))),
                first.name,
                file,
                document,
                (
                    Cond("Accepted", False, "Invalid", message),
                    _programmed(False, False, loaded.blocked),
                ),
                tuple(f.line() for f in found),
            )
        )
    return sorted(out, key=lambda s: (ALL_KINDS.index(s.kind), s.namespace, s.name, s.source_file))


def _claimed_namespace(data: object) -> str:
    meta = data.get("metadata") if isinstance(data, dict) else None
    namespace = meta.get("namespace", "default") if isinstance(meta, dict) else ""
    return namespace if isinstance(namespace, str) else ""
