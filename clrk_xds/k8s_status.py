"""What each Kubernetes object's status should say, and whether it already does.

Pure functions over one plan, the objects as the API server holds them, which of them
are in the set in force, and what each gateway's Envoy acknowledged:

- `Accepted` is the validation's answer (`admin_status.object_statuses`: the finding
  as reason and message, the same as `clrk get` shows for files);
- `Programmed` is True once the Envoy of every gateway the object feeds ACKed the
  snapshot version that contains it (and stays True while that version of the object
  is unchanged: Envoy keeps it across other objects' edits); False with the NACK's
  message if Envoy refused it, `Pending` until then, `Invalid` while a newer edit of
  it waits behind an invalid set (the last good policy, without that edit, stays in
  force).
- `ResolvedRefs`, on an accepted EgressCredential with a secretRef: whether the
  Secret's key gave a value; False names the Secret and key and why (never a value):
  the credential's requests are then answered 401, never sent without it.
- `observedGeneration` (on the status and on each condition) is the object's
  metadata.generation that these conditions describe.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from clrk.api.resources import AGENT_KINDS, Resource
from clrk_xds.admin_status import Cond, object_statuses
from clrk_xds.provider import Plan

Key = tuple[str, str, str]  # kind, namespace, name

MESSAGE_MAX = 32768  # metav1.Condition's limit


@dataclass(frozen=True)
class Ack:
    """How far one gateway's Envoy got with the snapshot in force."""

    state: str  # "acked", "pending" or "nacked"
    message: str = ""


def gateways_of(res: Resource, routes: Mapping[tuple[str, str], Resource]) -> set[str]:
    """The gateways (node ids, `namespace/name`) whose snapshot an object feeds."""
    if res.kind == "EgressGateway":
        return {res.ref}
    if res.kind == "EgressL4Route":
        return {f"{p.namespace or res.namespace}/{p.name}" for p in res.spec.parent_refs}
    if res.kind == "EgressCredential":
        route = routes.get((res.namespace, res.spec.target_ref.name))
        return gateways_of(route, routes) if route is not None else set()
    if res.kind == "EgressDenyPolicy":
        out: set[str] = set()
        for target in res.spec.targets:
            route = routes.get((res.namespace, target.name))
            if route is not None:
                out |= gateways_of(route, routes)
        return out
    if res.kind in AGENT_KINDS:
        return {
            ref.gateway_ref if "/" in ref.gateway_ref else f"{res.namespace}/{ref.gateway_ref}"
            for ref in res.spec.egress_refs
        }
    return set()


def _programmed(
    accepted: bool,
    in_force: bool,
    blocked: bool,
    nodes: Iterable[str],
    ack: Callable[[str], Ack],
    acked_before: bool = False,
) -> Cond:
    if not accepted:
        return Cond("Programmed", False, "NotAccepted", "the object contributes nothing")
    if not in_force:
        if blocked:
            return Cond(
                "Programmed",
                False,
                "Invalid",
                "the set is invalid (see the objects with Accepted=False): the last good "
                "policy stays in force without this version",
            )
        return Cond("Programmed", False, "Pending", "the control plane has not applied it yet")
    if acked_before:
        # Envoy holds this version of the object already; a newer snapshot (another
        # object's edit) keeps it whether Envoy takes that snapshot or refuses it.
        return Cond("Programmed", True, "Programmed")
    waiting = []
    for node in sorted(nodes):
        got = ack(node)
        if got.state == "nacked":
            return Cond("Programmed", False, "Rejected", f"Envoy of {node}: {got.message}")
        if got.state != "acked":
            waiting.append(node)
    if waiting:
        return Cond(
            "Programmed",
            False,
            "Pending",
            f"waiting for an Envoy of {', '.join(waiting)} to acknowledge the new version",
        )
    return Cond("Programmed", True, "Programmed")


def resolved_refs(res: Resource, problem: str | None) -> Cond:
    """A secretRef credential's Secret: `problem` is why it gave no value, or None."""
    ref = res.spec.source.secret_ref
    where = f"Secret {res.namespace}/{ref.name}, key {ref.key!r}"
    if problem is None:
        return Cond("ResolvedRefs", True, "ResolvedRefs", f"{where}: read")
    return Cond(
        "ResolvedRefs",
        False,
        "SecretUnavailable",
        f"{where}: {problem}; the credential's requests are answered 401 until it is readable",
    )


def desired_conditions(
    plan: Plan,
    in_force: Callable[[Key], bool],
    ack: Callable[[str], Ack],
    acked_before: Callable[[Key], bool] = lambda key: False,
    credential_problem: Callable[[str], str | None] | None = None,
) -> dict[Key, tuple[Cond, ...]]:
    """(Accepted, Programmed[, ResolvedRefs]) of every object the plan read, valid or
    not.

    `acked_before(key)`: this version of the object was Programmed already (its
    Envoys ACKed a snapshot containing it), so another object's edit does not send it
    back to Pending.  `credential_problem(namespace/name)`: why a credential's secret
    gave no value at the last translation, or None (with it, secretRef credentials get
    ResolvedRefs)."""
    loaded = plan.loaded
    by_key = {(r.kind, r.namespace, r.name): r for r in loaded.load.resources}
    routes = {(r.namespace, r.name): r for r in by_key.values() if r.kind == "EgressL4Route"}
    out: dict[Key, tuple[Cond, ...]] = {}
    for st in object_statuses(loaded, in_force=True):
        key = (st.kind, st.namespace, st.name)
        accepted = st.conditions[0]
        res = by_key.get(key)
        nodes = gateways_of(res, routes) if res is not None else set()
        out[key] = (
            accepted,
            _programmed(
                accepted.status, in_force(key), plan.blocked, nodes, ack, acked_before(key)
            ),
        )
        if (
            credential_problem is not None
            and accepted.status
            and res is not None
            and res.kind == "EgressCredential"
            and res.spec.source.secret_ref is not None
        ):
            out[key] += (resolved_refs(res, credential_problem(res.ref)),)
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(conds: Iterable[Cond], generation: int, old: object, now: str = "") -> dict:
    """The `status` to write; a condition whose status is unchanged keeps its time."""
    previous = {}
    if isinstance(old, dict) and isinstance(old.get("conditions"), list):
        previous = {c.get("type"): c for c in old["conditions"] if isinstance(c, dict)}
    conditions = []
    for cond in conds:
        status = "True" if cond.status else "False"
        before = previous.get(cond.type, {})
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        conditions.append(
            {
                "type": cond.type,
                "status": status,
                "reason": cond.reason,
                "message": cond.message[:MESSAGE_MAX],
                "lastTransitionTime": since or now or _now(),
                "observedGeneration": generation,
            }
        )
    return {"observedGeneration": generation, "conditions": conditions}


def _essence(status: object) -> object:
    if not isinstance(status, dict):
        return None
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return None
    return (
        status.get("observedGeneration"),
        sorted(
            (
                str(c.get("type")),
                c.get("status"),
                c.get("reason"),
                c.get("message"),
                c.get("observedGeneration"),
            )
            for c in conditions
            if isinstance(c, dict)
        ),
    )


def same_status(old: object, new: dict) -> bool:
    """True if writing `new` would change nothing but transition times."""
    return _essence(old) == _essence(new)
