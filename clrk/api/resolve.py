"""Cross-object resolution of a validated resource set.

References that point nowhere are not fatal for the set (SPEC 3): the object that holds
them is reported Accepted=False and contributes nothing.  The one exception fails
closed the other way: a deny route whose listener section is missing still denies on
its gateway, because dropping it would open what the operator meant to close.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from clrk.api.findings import Finding, Scope, Severity
from clrk.api.resources import AGENT_KINDS, Resource

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    """A route attached to one gateway through the listed listeners (gateway order)."""

    route: Resource
    listeners: tuple[str, ...]
    deny_policy: Resource | None


@dataclass(frozen=True)
class Resolution:
    gateways: dict[Key, Resource]
    attachments: dict[Key, tuple[Attachment, ...]]
    agents: dict[Key, Resource]
    conditions: dict[tuple[str, str, str], tuple[Condition, ...]]
    findings: tuple[Finding, ...]
    credentials: dict[Key, Resource] = field(default_factory=dict)  # the accepted ones


def _key(res: Resource) -> Key:
    return (res.namespace, res.name)


@dataclass(frozen=True, slots=True)
class _Attached:
    """One route's part of `attach`, and the objects it was computed from."""

    route: Resource
    deny_policy: Resource | None
    parents: tuple[tuple[Key, Resource | None, bool], ...]  # gateway, its object, rejected
    attachments: tuple[tuple[Key, Attachment], ...]
    condition: Condition
    findings: tuple[Finding, ...]

    def holds(
        self,
        route: Resource,
        deny_policy: Resource | None,
        gateways: dict[Key, Resource],
        rejected: frozenset[tuple[str, str, str]],
    ) -> bool:
        """Still the result for these objects (resources are immutable: the same object
        is the same content)."""
        return (
            self.route is route
            and self.deny_policy is deny_policy
            and all(
                gateways.get(gkey) is gateway
                and (gateway is not None or (("EgressGateway", *gkey) in rejected) is was)
                for gkey, gateway, was in self.parents
            )
        )


class AttachCache:
    """Each route's attachments and findings from the last resolution, reused while the
    route, its deny policy and its parent gateways are the same objects (a manifest
    cache keeps an unchanged document's object): a reload that changed one route of a
    thousand attaches one.  Holds only the routes of the last set.  Not thread-safe:
    one resolution at a time."""

    def __init__(self) -> None:
        self.last: dict[int, _Attached] = {}  # id(route) -> its result; holds the route


@dataclass
class _Resolver:
    resources: Sequence[Resource]
    rejected: frozenset[tuple[str, str, str]] = frozenset()
    secret_refs: bool = False  # the provider reads Kubernetes Secrets
    findings: list[Finding] = field(default_factory=list)
    conditions: dict[tuple[str, str, str], list[Condition]] = field(default_factory=dict)

    def report(self, res: Resource, path: str, message: str, *, warning: bool = False) -> None:
        self.findings.append(
            Finding(
                res.source.file,
                res.source.document,
                res.kind,
                res.name,
                path,
                message,
                Severity.WARNING if warning else Severity.ERROR,
                Scope.OBJECT,
            )
        )

    def missing(self, kind: str, key: Key) -> str:
        if (kind, *key) in self.rejected:
            return f"{kind} {key[0]}/{key[1]} is invalid (see its own errors)"
        return f"{kind} {key[0]}/{key[1]} does not exist"

    def condition(self, res: Resource, cond: Condition) -> None:
        self.conditions.setdefault((res.kind, res.namespace, res.name), []).append(cond)

    def of_kind(self, kind: str) -> dict[Key, Resource]:
        return {_key(r): r for r in self.resources if r.kind == kind}

    def deny_targets(self, routes: dict[Key, Resource]) -> dict[Key, Resource]:
        targets: dict[Key, Resource] = {}
        policies = sorted(self.of_kind("EgressDenyPolicy").values(), key=_key)
        for policy in policies:
            spec = policy.spec
            refs = [("spec.targetRef", spec.target_ref)] if spec.target_ref else []
            refs += [(f"spec.targetRefs[{i}]", t) for i, t in enumerate(spec.target_refs)]
            found = 0
            for path, ref in refs:
                key = (policy.namespace, ref.name)
                if key not in routes:
                    self.report(
                        policy,
                        f"{path}.name",
                        self.missing("EgressL4Route", key)
                        + " (a deny policy targets routes in its own namespace)",
                    )
                    continue
                found += 1
                if key in targets:
                    self.report(
                        policy,
                        f"{path}.name",
                        f"route {key[0]}/{key[1]} is already targeted by deny policy "
                        f"{targets[key].ref}, whose denyResponse is used",
                        warning=True,
                    )
                    continue
                targets[key] = policy
            accepted = found > 0
            self.condition(
                policy,
                Condition("Accepted", accepted, "Accepted" if accepted else "TargetNotFound"),
            )
        return targets

    def attach(
        self,
        gateways: dict[Key, Resource],
        routes: dict[Key, Resource],
        denied: dict[Key, Resource],
        cache: AttachCache | None = None,
    ) -> dict[Key, tuple[Attachment, ...]]:
        last = cache.last if cache is not None else {}
        now: dict[int, _Attached] = {}
        per_gateway: dict[Key, list[Attachment]] = {}
        for rkey in sorted(routes):
            route = routes[rkey]
            deny_policy = denied.get(rkey)
            done = last.get(id(route))
            if done is None or not done.holds(route, deny_policy, gateways, self.rejected):
                done = self._attach_route(route, deny_policy, gateways)
            else:
                self.findings.extend(done.findings)
            now[id(route)] = done
            for gkey, att in done.attachments:
                per_gateway.setdefault(gkey, []).append(att)
            self.condition(route, done.condition)
        if cache is not None:
            cache.last = now  # only the routes of this set: a deleted one keeps nothing
        return {k: tuple(v) for k, v in per_gateway.items()}

    def _attach_route(
        self, route: Resource, deny_policy: Resource | None, gateways: dict[Key, Resource]
    ) -> _Attached:
        first_finding = len(self.findings)
        wanted: dict[Key, set[str]] = {}
        parents = []
        for i, ref in enumerate(route.spec.parent_refs):
            gkey = (ref.namespace or route.namespace, ref.name)
            gateway = gateways.get(gkey)
            parents.append((gkey, gateway, ("EgressGateway", *gkey) in self.rejected))
            if gateway is None:
                self.report(
                    route,
                    f"spec.parentRefs[{i}].name",
                    self.missing("EgressGateway", gkey),
                )
                continue
            names = [lst.name for lst in gateway.spec.listeners]
            if ref.section_name is None:
                wanted.setdefault(gkey, set()).update(names)
            elif ref.section_name in names:
                wanted.setdefault(gkey, set()).add(ref.section_name)
            else:
                note = (
                    "; as a deny policy target it still denies on the whole gateway"
                    if deny_policy
                    else ""
                )
                self.report(
                    route,
                    f"spec.parentRefs[{i}].sectionName",
                    f"EgressGateway {gateway.ref} has no listener {ref.section_name!r} "
                    f"(it has {', '.join(names)}){note}",
                )
                if deny_policy:
                    wanted.setdefault(gkey, set()).update(names)
        attachments = []
        for gkey, chosen in wanted.items():
            order = [lst.name for lst in gateways[gkey].spec.listeners]
            listeners = tuple(n for n in order if n in chosen)
            attachments.append((gkey, Attachment(route, listeners, deny_policy)))
        accepted = bool(wanted)
        self.lint_matches(route)
        return _Attached(
            route,
            deny_policy,
            tuple(parents),
            tuple(attachments),
            Condition("Accepted", accepted, "Accepted" if accepted else "NoMatchingParent"),
            tuple(self.findings[first_finding:]),
        )

    def lint_matches(self, route: Resource) -> None:
        for r, rule in enumerate(route.spec.rules):
            for m, match in enumerate(rule.matches):
                path = f"spec.rules[{r}].matches[{m}]"
                if not match.destination_hostnames and not match.destination_cidrs:
                    self.report(
                        route,
                        path,
                        "no destinationHostnames or destinationCIDRs: matches every destination",
                        warning=True,
                    )
                for h, name in enumerate(match.destination_hostnames):
                    if name.startswith("*.") and "." not in name[2:]:
                        self.report(
                            route,
                            f"{path}.destinationHostnames[{h}]",
                            f"{name!r} matches every name directly under a top-level domain",
                            warning=True,
                        )

    def credentials(
        self,
        gateways: dict[Key, Resource],
        routes: dict[Key, Resource],
        attachments: dict[Key, tuple[Attachment, ...]],
    ) -> dict[Key, Resource]:
        """The credentials that may inject: target an L7 route, name only hostnames it
        allows, and hold a placeholder no other credential's overlaps."""
        accepted: dict[Key, Resource] = {}
        for key, cred in sorted(self.of_kind("EgressCredential").items()):
            reason, path, problem = self._credential_problem(
                cred, gateways, routes, attachments, accepted
            )
            if problem:
                self.report(cred, path, problem)
            else:
                accepted[key] = cred
            self.condition(cred, Condition("Accepted", not problem, reason, problem))
        return accepted

    def _credential_problem(
        self,
        cred: Resource,
        gateways: dict[Key, Resource],
        routes: dict[Key, Resource],
        attachments: dict[Key, tuple[Attachment, ...]],
        accepted: dict[Key, Resource],
    ) -> tuple[str, str, str]:
        """(reason, field, message) of the first reason `cred` cannot inject; the
        message is empty when it can."""
        spec = cred.spec
        rkey = (cred.namespace, spec.target_ref.name)
        route = routes.get(rkey)
        if route is None:
            missing = self.missing("EgressL4Route", rkey)
            note = " (a credential targets a route in its own namespace)"
            return "TargetNotFound", "spec.targetRef.name", missing + note
        on_l7 = any(
            _is_l7(gateways[gkey], name)
            for gkey, atts in attachments.items()
            for att in atts
            if att.route is route
            for name in att.listeners
        )
        if not on_l7:
            return (
                "NotL7Route",
                "spec.targetRef.name",
                f"route {route.ref} is attached to no HTTP or TLS Terminate listener: a "
                "credential is injected only where the gateway sees the requests",
            )
        if spec.source.secret_ref is not None and not self.secret_refs:
            return (
                "SecretRefUnsupported",
                "spec.source.secretRef",
                "a Kubernetes Secret is read only by the Kubernetes provider (the control "
                "plane's --provider kubernetes); with manifest files use source.file or "
                "source.env",
            )
        if self.secret_refs and spec.source.secret_ref is None:
            # A tenant's credential must not read the control plane's own files or
            # environment (its service-account token) and send them upstream.
            return (
                "SourceUnsupported",
                f"spec.source.{spec.source.kind}",
                "under the Kubernetes provider a credential reads a Secret of its own "
                "namespace (source.secretRef) only, never the control plane's files or "
                "environment",
            )
        matches = [m for rule in route.spec.rules for m in rule.matches]
        allowed = [h for m in matches for h in m.destination_hostnames]
        any_name = any(not m.destination_hostnames for m in matches)
        for i, name in enumerate(spec.hostnames):
            if not any_name and not any(covers(p, name) for p in allowed):
                return (
                    "HostnameNotInRoute",
                    f"spec.hostnames[{i}]",
                    f"{name!r} is not a hostname route {route.ref} allows",
                )
        for other in accepted.values():
            mine, theirs = spec.placeholder, other.spec.placeholder
            if mine in theirs or theirs in mine:
                return (
                    "PlaceholderConflict",
                    "spec.placeholder",
                    f"overlaps the placeholder of EgressCredential {other.ref}: the "
                    "tripwire could not tell the two apart",
                )
        return "Accepted", "", ""

    def agents(self, gateways: dict[Key, Resource]) -> dict[Key, Resource]:
        agents: dict[Key, Resource] = {}
        for res in self.resources:
            if res.kind not in AGENT_KINDS:
                continue
            agents[_key(res)] = res
            for i, ref in enumerate(res.spec.egress_refs):
                namespace, _, name = ref.gateway_ref.rpartition("/")
                if (namespace or res.namespace, name) not in gateways:
                    self.report(
                        res,
                        f"spec.egressRefs[{i}].gatewayRef",
                        self.missing("EgressGateway", (namespace or res.namespace, name)),
                    )
        return agents


def resolve(
    resources: Sequence[Resource],
    rejected: frozenset[tuple[str, str, str]] = frozenset(),
    secret_refs: bool = False,
    cache: AttachCache | None = None,
) -> Resolution:
    """`rejected`: (kind, namespace, name) of documents that failed validation;
    `secret_refs`: the provider reads Kubernetes Secrets (else a secretRef is a finding);
    `cache`: the attachments of the last resolution of the same source, to reuse."""
    r = _Resolver(resources, rejected, secret_refs)
    gateways = r.of_kind("EgressGateway")
    routes = r.of_kind("EgressL4Route")
    denied = r.deny_targets(routes)
    attachments = r.attach(gateways, routes, denied, cache)
    agents = r.agents(gateways)
    credentials = r.credentials(gateways, routes, attachments)
    return Resolution(
        gateways=gateways,
        attachments=attachments,
        agents=agents,
        conditions={k: tuple(v) for k, v in r.conditions.items()},
        findings=tuple(r.findings),
        credentials=credentials,
    )


def _is_l7(gateway: Resource, listener: str) -> bool:
    lst = next(lst for lst in gateway.spec.listeners if lst.name == listener)
    return lst.protocol == "HTTP" or lst.tls_mode == "Terminate"


def covers(pattern: str, name: str) -> bool:
    """A route's hostname pattern allows `name` (itself a name or a `*.` pattern): a
    wildcard stands for exactly one label, as everywhere in clrk."""
    if pattern == name:
        return True
    if not pattern.startswith("*.") or name.startswith("*."):
        return False
    head, _, parent = name.partition(".")
    return bool(head) and parent == pattern[2:]


def agent_gateways(agent: Resource) -> list[Key]:
    """The gateways an agent declares in spec.egressRefs."""
    out = []
    for ref in agent.spec.egress_refs:
        namespace, _, name = ref.gateway_ref.rpartition("/")
        out.append((namespace or agent.namespace, name))
    return out
