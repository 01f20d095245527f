"""What the DNS forwarder does with one agent query (SPEC 5.2, 5.4), sans-io.

Forward it to the gateway's upstream resolvers, or answer it locally: NXDOMAIN for a
name no pattern of the agent could match under `dns.mode: Filtered` (a Report gateway
forwards it and records the denial), REFUSED for a source that is no known agent.
Malformed queries are dropped: they bind nothing and there is no question to answer.
"""

from __future__ import annotations

from typing import NamedTuple

import dns.message
import dns.rcode

from clrk.policy import Agent, Decision, GatewayPolicy, Reason
from clrk.policy.dnsfilter import name_could_match
from clrk_worker_dialer.dns_binding import DnsQuery, Echo, read_query


class Forward(NamedTuple):
    query: DnsQuery
    reported: Decision | None = None  # Report mode: the denial to record, not enforce
    echo: Echo | None = None  # the query's, when it has the usual shape (read_query)


class Answer(NamedTuple):
    wire: bytes
    decision: Decision  # the denial to record
    query: DnsQuery


class Drop(NamedTuple):
    why: str


Verdict = Forward | Answer | Drop
_new = tuple.__new__


def local_answer(wire: bytes, rcode: int) -> bytes | None:
    """A response to `wire` carrying only `rcode`, or None if it cannot be parsed."""
    try:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
    except Exception:  # dnspython raises many types on hostile bytes
        return None
    response.set_rcode(rcode)
    return response.to_wire()


def on_query(policy: GatewayPolicy, agent: Agent | None, wire: bytes) -> Verdict:
    read = read_query(wire)
    if read is None:
        return Drop("malformed query")
    query, echo = read
    if agent is None:
        reason, rcode = Reason.UNKNOWN_AGENT, dns.rcode.REFUSED
    elif policy.dns.mode == "Filtered" and not name_could_match(policy, agent, query.name):
        reason, rcode = Reason.DNS_FILTERED, dns.rcode.NXDOMAIN
        if policy.mode == "Report":
            decision = Decision(
                reason, policy.ref, agent.ref, policy.default_policy, hostname=query.name
            )
            return Forward(query, decision, echo)
    else:
        return _new(Forward, (query, None, echo))  # the most common verdict: no Python __new__
    answer = local_answer(wire, rcode)
    if answer is None:
        return Drop("malformed query")
    agent_ref = agent.ref if agent else None
    decision = Decision(reason, policy.ref, agent_ref, policy.default_policy, hostname=query.name)
    return Answer(answer, decision, query)
