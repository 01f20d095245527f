"""Agent identity: sandbox address, proxy username, or the sidecar's one agent."""

from __future__ import annotations

from clrk_worker_dialer.identity import Identity, find_agent
from tests.worker_dialer.dialer_policy import gateway_policy

P = gateway_policy()


def test_a_namespaced_reference_finds_the_agent():
    assert find_agent(P, "default/agent-a").labels == {"team": "a"}


def test_a_bare_name_finds_an_agent_only_when_it_is_unique():
    assert find_agent(P, "agent-a").name == "agent-a"
    assert find_agent(P, "agent-b") is None  # other/agent-b and third/agent-b
    assert find_agent(P, "other/agent-b").namespace == "other"


def test_an_agent_of_another_gateway_or_an_undeclared_one_is_unknown():
    assert find_agent(P, "elsewhere") is None
    assert find_agent(P, "default/ghost") is None
    assert find_agent(P, "") is None


def test_sources_are_registered_and_normalised():
    ident = Identity.of({"198.18.0.2": "default/agent-a"})
    assert ident.for_source(P, "::ffff:198.18.0.2").name == "agent-a"
    assert ident.for_source(P, "198.18.0.6") is None
    ident.register("fd63:6c72:6b00::2", "other/agent-b")
    assert ident.for_source(P, "FD63:6C72:6B00::2").namespace == "other"
    ident.unregister("198.18.0.2")
    assert ident.for_source(P, "198.18.0.2") is None
    assert ident.source_ref("not an ip") is None


def no_credentials(ref: str) -> None:
    return None


def test_a_sidecar_default_agent_covers_every_source_and_empty_usernames():
    ident = Identity.of({}, default="default/agent-a")
    assert ident.for_source(P, "10.9.9.9").name == "agent-a"
    assert ident.for_proxy(P, None, None, no_credentials).name == "agent-a"
    assert ident.for_proxy(P, "", None, no_credentials).name == "agent-a"


def test_without_credentials_only_the_default_agent_may_be_named():
    ident = Identity.of({}, default="default/agent-a")
    assert ident.for_proxy(P, "agent-a", "", no_credentials).name == "agent-a"
    assert ident.for_proxy(P, "default/agent-a", None, no_credentials) is not None
    assert ident.for_proxy(P, "other/agent-b", None, no_credentials) is None
    assert ident.for_proxy(P, "default/ghost", None, no_credentials) is None
    nobody = Identity.of({})
    assert nobody.for_proxy(P, None, None, no_credentials) is None
    assert nobody.for_proxy(P, "default/agent-a", "", no_credentials) is None


def test_an_agent_with_a_credential_needs_its_token_as_the_password():
    tokens = {"other/agent-b": "s3cret", "default/agent-a": ""}  # an empty one matches nothing
    ident = Identity.of({}, default="default/agent-a")

    def proxy(user, password):
        return ident.for_proxy(P, user, password, tokens.get)

    assert proxy("other/agent-b", "s3cret").namespace == "other"
    assert proxy("other/agent-b", "s3cre") is None
    assert proxy("other/agent-b", None) is None
    # Even the default agent, once it has a credential, is named only with it.
    assert proxy("default/agent-a", "") is None
    assert proxy("default/agent-a", None) is None
