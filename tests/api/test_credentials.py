"""EgressCredential: what the schema refuses, and which credentials resolution accepts."""

from __future__ import annotations

from dataclasses import replace

from clrk.api import load_text
from clrk.api.resolve import covers
from clrk.policy.loaded import compile_loaded

HEAD = "apiVersion: clrk.apoxy.dev/v1alpha1\n"
SET = (
    HEAD
    + """kind: EgressGateway
metadata: {name: gw}
spec:
  listeners:
  - {name: term, protocol: TLS, tls: {mode: Terminate}}
  - {name: tcp, protocol: TCP}
---
"""
    + HEAD
    + """kind: EgressL4Route
metadata: {name: llm}
spec:
  parentRefs: [{name: gw, sectionName: term}]
  rules: [{matches: [{destinationHostnames: [api.anthropic.com, "*.openai.com"]}]}]
---
"""
    + HEAD
    + """kind: EgressL4Route
metadata: {name: ssh}
spec:
  parentRefs: [{name: gw, sectionName: tcp}]
  rules: [{matches: [{destinationHostnames: [git.example.com]}]}]
"""
)


def credential(name: str = "key", spec: str = "") -> str:
    body = spec or (
        "targetRef: {name: llm}\n  header: x-api-key\n  placeholder: clrk-placeholder-key\n"
        "  source: {file: /run/secrets/key}"
    )
    return f"---\n{HEAD}kind: EgressCredential\nmetadata: {{name: {name}}}\nspec:\n  {body}\n"


def findings(*docs: str) -> list[str]:
    loaded = compile_loaded(load_text(SET + "".join(docs), "c.yaml"))
    return [f.line() for f in loaded.findings if f.is_error]


def conditions(*docs: str) -> dict[str, tuple[bool, str]]:
    loaded = compile_loaded(load_text(SET + "".join(docs), "c.yaml"))
    out = {}
    for (kind, ns, name), conds in loaded.compiled.conditions.items():
        if kind == "EgressCredential":
            out[f"{ns}/{name}"] = (conds[0].status, conds[0].reason)
    return out


def test_a_credential_on_a_terminate_route_is_accepted_and_compiled_without_a_value() -> None:
    loaded = compile_loaded(load_text(SET + credential(), "c.yaml"))
    assert not [f for f in loaded.findings if f.is_error]
    (cred,) = loaded.compiled.gateways[("default", "gw")].credentials
    assert (cred.ref, cred.route, cred.header, cred.source, cred.source_ref) == (
        "default/key",
        "default/llm",
        "x-api-key",
        "file",
        "/run/secrets/key",
    )


def test_unknown_fields_two_sources_and_an_empty_header_are_findings_naming_the_field() -> None:
    spec = (
        "targetRef: {name: llm}\n  header: ''\n  placeholder: clrk-placeholder-key\n"
        "  colour: red\n  source: {file: /run/secrets/key, env: KEY}"
    )
    lines = findings(credential(spec=spec))
    assert any("spec.header: must not be empty" in line for line in lines), lines
    assert any("spec.colour: unknown field" in line for line in lines), lines
    assert any("spec.source: give exactly one of file, env or secretRef" in line for line in lines)
    assert all("EgressCredential/key" in line for line in lines)


def test_a_header_the_gateway_owns_and_a_short_placeholder_are_refused() -> None:
    for header, placeholder, expected in (
        ("x-clrk-agent-name", "clrk-placeholder-key", "spec.header"),
        ("host", "clrk-placeholder-key", "spec.header"),
        ("x-api-key", "short", "spec.placeholder"),
        ("x-api-key", "has space in it", "spec.placeholder"),
    ):
        spec = (
            f"targetRef: {{name: llm}}\n  header: {header}\n  placeholder: '{placeholder}'\n"
            "  source: {env: KEY}"
        )
        assert any(expected in line for line in findings(credential(spec=spec))), header


def test_a_credential_on_a_tcp_only_route_is_not_accepted_never_a_silent_no_op() -> None:
    spec = "targetRef: {name: ssh}\n  header: x-key\n  placeholder: clrk-placeholder-ssh\n"
    spec += "  source: {env: KEY}"
    assert conditions(credential(spec=spec)) == {"default/key": (False, "NotL7Route")}
    assert any("no HTTP or TLS Terminate listener" in f for f in findings(credential(spec=spec)))


def test_a_missing_route_a_foreign_hostname_and_a_secret_ref_are_not_accepted() -> None:
    missing = "targetRef: {name: nope}\n  header: x-key\n  placeholder: clrk-placeholder-a\n"
    foreign = (
        "targetRef: {name: llm}\n  hostnames: [api.gitlab.com]\n  header: x-key\n"
        "  placeholder: clrk-placeholder-b\n"
    )
    secret = "targetRef: {name: llm}\n  header: x-key\n  placeholder: clrk-placeholder-c\n"
    got = conditions(
        credential("a", missing + "  source: {env: A}"),
        credential("b", foreign + "  source: {env: B}"),
        credential("c", secret + "  source: {secretRef: {name: s, key: k}}"),
    )
    assert got == {
        "default/a": (False, "TargetNotFound"),
        "default/b": (False, "HostnameNotInRoute"),
        "default/c": (False, "SecretRefUnsupported"),
    }


def test_a_secret_ref_needs_the_kubernetes_provider_and_is_accepted_under_it() -> None:
    spec = "targetRef: {name: llm}\n  header: x-key\n  placeholder: clrk-placeholder-c\n"
    doc = credential("c", spec + "  source: {secretRef: {name: s, key: k}}")
    assert any("only by the Kubernetes provider" in line for line in findings(doc))
    load = load_text(SET + doc, "c.yaml")
    loaded = compile_loaded(replace(load, secret_refs=True))  # as the provider loads
    assert loaded.compiled.conditions[("EgressCredential", "default", "c")][0].status
    (compiled,) = loaded.compiled.gateways[("default", "gw")].credentials
    assert (compiled.source, compiled.source_ref) == ("secretRef", "s/k")


def test_under_the_kubernetes_provider_a_file_or_env_source_is_not_accepted() -> None:
    """A tenant must not send the control plane's service-account token upstream."""
    spec = "targetRef: {name: llm}\n  header: x-key\n  placeholder: clrk-placeholder-"
    token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    docs = credential("f", spec + "f\n  source: {file: " + token + "}")
    docs += credential("e", spec + "e\n  source: {env: HOME}")
    loaded = compile_loaded(replace(load_text(SET + docs, "c.yaml"), secret_refs=True))
    got = {k: (c.status, c.reason) for k, (c, *_) in loaded.compiled.conditions.items()}
    assert got[("EgressCredential", "default", "f")] == (False, "SourceUnsupported")
    assert got[("EgressCredential", "default", "e")] == (False, "SourceUnsupported")
    assert not loaded.compiled.gateways[("default", "gw")].credentials


def test_placeholders_that_contain_each_other_cannot_both_be_accepted() -> None:
    other = (
        "targetRef: {name: llm}\n  header: x-other\n  placeholder: clrk-placeholder-key-2\n"
        "  source: {env: OTHER}"
    )
    assert conditions(credential(), credential("other", other)) == {
        "default/key": (True, "Accepted"),
        "default/other": (False, "PlaceholderConflict"),
    }


def test_a_wildcard_covers_exactly_one_label() -> None:
    assert covers("*.openai.com", "api.openai.com")
    assert not covers("*.openai.com", "a.b.openai.com")
    assert not covers("*.openai.com", "openai.com")
    assert covers("*.openai.com", "*.openai.com")
    assert not covers("api.openai.com", "*.openai.com")
