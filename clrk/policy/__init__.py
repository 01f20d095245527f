"""The policy core: compile validated resources, then decide() per connection."""

from clrk.policy.addresses import OwnAddresses
from clrk.policy.compile import compile_policies
from clrk.policy.compiled import GatewayPolicy, PolicySet
from clrk.policy.decide import decide
from clrk.policy.model import Agent, Connection, Decision, Reason

__all__ = [
    "Agent",
    "Connection",
    "Decision",
    "GatewayPolicy",
    "OwnAddresses",
    "PolicySet",
    "Reason",
    "compile_policies",
    "decide",
]
