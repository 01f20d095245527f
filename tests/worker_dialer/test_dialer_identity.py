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
    ident.register("2001:db8:ffff::2", "other/agent-b")
    assert ident.for_source(P, "2001:DB8:FFFF::2").namespace == "other"
    ident.unregister("198.18.0.2")
    assert ident.for_source(P, "198.18.0.2") is None
    assert ident.source_ref("not an ip") is None


def test_a_sidecar_default_agent_covers_every_source_and_empty_usernames():
    ident = Identity.of({}, default="default/agent-a")
    assert ident.for_source(P, "10.9.9.9").name == "agent-a"
    assert ident.for_username(P, None).name == "agent-a"
    assert ident.for_username(P, "other/agent-b").namespace == "other"
