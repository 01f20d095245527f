"""Resolving references: attachments, deny targets and the conditions they earn."""

from __future__ import annotations

from clrk.api import Scope, Severity, load_text, resolve

HEAD = "apiVersion: clrk.apoxy.dev/v1alpha1\n"
GW = (
    HEAD
    + """kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp, protocol: TCP}, {name: tls, protocol: TLS}]
"""
)


def route(name: str, parents: str, hosts: str = "[a.example.com]") -> str:
    return (
        HEAD
        + f"""kind: EgressL4Route
metadata: {{name: {name}}}
spec:
  parentRefs: {parents}
  rules: [{{matches: [{{destinationHostnames: {hosts}}}]}}]
"""
    )


def deny(name: str, target: str) -> str:
    return (
        HEAD
        + f"""kind: EgressDenyPolicy
metadata: {{name: {name}}}
spec: {{targetRef: {{name: {target}}}}}
"""
    )


def resolved(*docs: str):
    loaded = load_text("---\n".join(docs))
    assert not loaded.errors
    return resolve(loaded.resources)


def test_a_route_without_section_name_attaches_to_every_listener():
    (att,) = resolved(GW, route("r", "[{name: gw}]")).attachments[("default", "gw")]
    assert att.listeners == ("tcp", "tls") and att.deny_policy is None


def test_several_parent_refs_to_one_gateway_merge_in_listener_order():
    r = resolved(GW, route("r", "[{name: gw, sectionName: tls}, {name: gw, sectionName: tcp}]"))
    (att,) = r.attachments[("default", "gw")]
    assert att.listeners == ("tcp", "tls")


def test_a_dangling_parent_is_an_object_error_and_the_route_is_not_accepted():
    r = resolved(GW, route("r", "[{name: nope}]"))
    assert r.attachments == {}
    (finding,) = r.findings
    assert (finding.field, finding.scope, finding.severity) == (
        "spec.parentRefs[0].name",
        Scope.OBJECT,
        Severity.ERROR,
    )
    (cond,) = r.conditions[("EgressL4Route", "default", "r")]
    assert (cond.type, cond.status, cond.reason) == ("Accepted", False, "NoMatchingParent")


def test_a_route_keeps_the_parents_that_resolve():
    r = resolved(GW, route("r", "[{name: nope}, {name: gw, sectionName: tcp}]"))
    (att,) = r.attachments[("default", "gw")]
    assert att.listeners == ("tcp",)
    assert r.conditions[("EgressL4Route", "default", "r")][0].status is True


def test_a_parent_in_another_namespace_is_found_by_its_namespace():
    other = GW.replace("metadata: {name: gw}", "metadata: {name: gw, namespace: infra}")
    r = resolved(other, route("r", "[{name: gw, namespace: infra}]"))
    assert ("infra", "gw") in r.attachments and not r.findings


def test_a_deny_policy_turns_its_target_into_a_deny_route():
    r = resolved(GW, route("paste", "[{name: gw}]"), deny("no-paste", "paste"))
    (att,) = r.attachments[("default", "gw")]
    assert att.deny_policy is not None and att.deny_policy.name == "no-paste"
    assert r.conditions[("EgressDenyPolicy", "default", "no-paste")][0].status is True


def test_a_deny_policy_with_a_missing_target_is_not_accepted():
    r = resolved(GW, deny("d", "nowhere"))
    (finding,) = r.findings
    assert finding.field == "spec.targetRef.name" and finding.scope is Scope.OBJECT
    assert r.conditions[("EgressDenyPolicy", "default", "d")][0].reason == "TargetNotFound"


def test_the_first_deny_policy_by_name_decides_the_response_and_the_other_is_warned():
    r = resolved(GW, route("p", "[{name: gw}]"), deny("b", "p"), deny("a", "p"))
    (att,) = r.attachments[("default", "gw")]
    assert att.deny_policy.name == "a"
    (finding,) = r.findings
    assert finding.severity is Severity.WARNING and finding.name == "b"


def test_a_deny_route_with_a_missing_section_still_denies_on_the_whole_gateway():
    r = resolved(GW, route("p", "[{name: gw, sectionName: http}]"), deny("d", "p"))
    (att,) = r.attachments[("default", "gw")]
    assert att.listeners == ("tcp", "tls")
    (finding,) = r.findings
    assert finding.is_error and "still denies on the whole gateway" in finding.message


def test_a_match_without_destinations_and_a_tld_wildcard_are_warned():
    r = resolved(
        GW, route("r", "[{name: gw}]", hosts="[]"), route("w", "[{name: gw}]", "['*.com']")
    )
    assert all(f.severity is Severity.WARNING for f in r.findings)
    by_route = {f.name: f.message for f in r.findings}
    assert "matches every destination" in by_route["r"]
    assert "top-level domain" in by_route["w"]


def test_an_agent_with_a_dangling_gateway_ref_is_reported():
    agent = (
        HEAD + "kind: DaemonAgent\nmetadata: {name: bot}\nspec: {egressRefs: [{gatewayRef: x}]}\n"
    )
    r = resolved(GW, agent)
    (finding,) = r.findings
    assert finding.field == "spec.egressRefs[0].gatewayRef"
    assert ("default", "bot") in r.agents


def test_a_reference_to_an_invalid_object_says_so():
    loaded = load_text(
        GW.replace("protocol: TCP", "protocol: SCTP") + "---\n" + route("r", "[{name: gw}]")
    )
    r = resolve(loaded.resources, loaded.rejected)
    (finding,) = r.findings
    assert "is invalid (see its own errors)" in finding.message
