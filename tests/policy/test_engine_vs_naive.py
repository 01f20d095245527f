"""Property: on random policies and connections, the compiled engine and the naive
reference return the same decision, reason, route, rule, listener and hostname."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.naive_decide import naive_decide
from clrk.api import load_objects
from clrk.policy import Agent, OwnAddresses, compile_policies, decide
from tests.policy.strategies import LABELS, OWN_CHOICES, connection, policy

agent = st.one_of(st.none(), st.builds(lambda labels: Agent("default", "a", labels), LABELS))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=policy(),
    conns=st.lists(connection(), min_size=1, max_size=8),
    who=agent,
    own=st.sampled_from(OWN_CHOICES),
)
def test_compiled_engine_and_naive_reference_agree(docs, conns, who, own):
    loaded = load_objects(docs)
    assert not loaded.errors, [f.line() for f in loaded.errors]
    own_addresses = own
    gw = compile_policies(loaded.resources).gateways[("default", "gw")]
    for conn in conns:
        got = decide(gw, who, conn, OwnAddresses.of(own_addresses))
        want = naive_decide(
            loaded.resources,
            ("default", "gw"),
            None if who is None else ("default", "a", who.labels),
            conn,
            own_addresses,
        )
        assert (
            got.reason,
            got.route,
            got.rule,
            got.listener,
            got.hostname,
            got.deny_policy,
        ) == (want.reason, want.route, want.rule, want.listener, want.hostname, want.deny_policy), (
            conn
        )
