"""Which L7 chains keep Envoy's ext_proc filter on every request.

ext_proc costs a Python gRPC stream per request, so only a chain where Python must act on
the request keeps it: one whose route carries a deny policy (ext_proc answers with the
policy's response).  A credential needs none: Envoy injects it, answers the tripwire,
and its access log names both.  Every other
L7 chain takes its `egress.http` records from Envoy's HTTP access log, and runs ext_proc
only for a request whose connection the dialer tagged with a deny policy (its policy
may be ahead of Envoy's).  A later feature that must see or change requests in Python
adds its condition here.
"""

from __future__ import annotations

from collections.abc import Sequence

from clrk.policy.compiled import GatewayPolicy, MatchEntry


def needs_ext_proc(policy: GatewayPolicy, matches: Sequence[MatchEntry]) -> bool:
    """True when the chain of these matches (one rule of one route) must run ext_proc on
    every request; `policy` is the gateway the chain belongs to."""
    return any(m.deny_policy is not None for m in matches)
