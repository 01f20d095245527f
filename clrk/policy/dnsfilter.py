"""`dns.mode: Filtered` (SPEC 5.4): could any hostname pattern available to this agent
ever match a connection to this name?  If not, the dialer answers NXDOMAIN locally, so
the query name itself never leaves the gateway (the DNS exfiltration channel).

CIDR-only matches do not count: they open addresses, not names.  Matches with neither
hostnames nor CIDRs, and `allow-all` gateways, could match any name, so they filter
nothing.  Deny routes count too: an L7 deny route must resolve for Envoy to answer it.
"""

from __future__ import annotations

from clrk.policy.addresses import normalise_name
from clrk.policy.compiled import GatewayPolicy, MatchEntry
from clrk.policy.index import ProtocolIndex, parent_domain
from clrk.policy.model import Agent
from clrk.policy.selectors import selects


def _selects(entries: tuple[MatchEntry, ...] | set[MatchEntry], agent: Agent) -> bool:
    return any(e.selector is None or selects(e.selector, agent.labels) for e in entries)


def _index_could_match(ix: ProtocolIndex, agent: Agent, name: str) -> bool:
    if ix.empty:
        return False
    if _selects(ix.anywhere.values(), agent):
        return True
    if _selects(ix.exact.get(name, ()), agent):
        return True
    parent = parent_domain(name)
    return parent is not None and _selects(ix.wildcard.get(parent, ()), agent)


def name_could_match(policy: GatewayPolicy, agent: Agent | None, name: str) -> bool:
    """False when a query for `name` by `agent` should be answered NXDOMAIN locally."""
    if agent is None:
        return False
    if policy.default_policy == "allow-all":
        return True
    normal = normalise_name(name)
    return any(
        _index_could_match(ix, agent, normal)
        for table in (policy.allow, policy.deny)
        for ix in table.values()
    )
