"""UDP flow table: one decision per flow, idle expiry, bounded size."""

from __future__ import annotations

from clrk.policy import Decision, Reason
from clrk_worker_dialer.flows import FlowTable

DENY = Decision(Reason.POLICY, "default/gw", "default/a", "deny-all")
ALLOW = Decision(Reason.ALLOWED, "default/gw", "default/a", "deny-all", listener="dgram")


def counting(decision):
    calls = []

    def decide():
        calls.append(1)
        return decision

    return decide, calls


def test_a_flow_is_decided_once_while_it_is_active():
    table = FlowTable(idle_timeout=10)
    decide, calls = counting(DENY)
    flow, new = table.datagram("k", 0.0, decide)
    assert new and not flow.allowed
    for t in (1.0, 5.0, 14.0):
        _, new = table.datagram("k", t, decide)
        assert not new
    assert len(calls) == 1 and flow.datagrams == 4


def test_an_idle_flow_is_decided_again_and_keeps_the_shells_state():
    table = FlowTable(idle_timeout=10)
    decide, calls = counting(ALLOW)
    flow, _ = table.datagram("k", 0.0, decide)
    flow.state["upstream"] = "sock"
    again, new = table.datagram("k", 10.0, decide)
    assert new and len(calls) == 2 and again.state == {"upstream": "sock"}


def test_expire_returns_idle_flows_only():
    table = FlowTable(idle_timeout=10)
    table.datagram("old", 0.0, lambda: DENY)
    table.datagram("fresh", 5.0, lambda: DENY)
    assert [f.key for f in table.expire(11.0)] == ["old"]
    assert len(table) == 1


def test_the_table_is_bounded_dropping_the_oldest_flow():
    table = FlowTable(idle_timeout=100, max_flows=3)
    for i in range(5):
        table.datagram(i, float(i), lambda: DENY)
    assert len(table) == 3 and sorted(f.key for f in table) == [2, 3, 4]
