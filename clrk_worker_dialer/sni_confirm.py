"""Confirming an SNI that no DNS answer of the agent bound (SPEC 4): the dialer resolves
the name itself, A and AAAA through the gateway's resolvers, and the name counts only
if the destination is among the answers; those answers are then bound for the agent
exactly as the snoop binds the agent's own (CNAME chains included).

An agent that speaks DNS-over-HTTPS or hard-codes an address still gets its TLS route,
and a ClientHello naming an allowed host, sent to any other address, opens nothing.

The wait is bounded (a slow or silent resolver ends in `sni_unverified`, never in a
connection held open), and so is the number of lookups at once: waiting for a free
slot counts against the same bound, so a flood of claims costs each claimant its own
wait and nobody else anything.  Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import time

import dns.flags
import dns.message
import dns.rdatatype

from clrk.policy import Agent
from clrk_worker_dialer._normalise import normalise_ip
from clrk_worker_dialer.dns_binding import Binding, bindings_from_answer, parse_query
from clrk_worker_dialer.dns_forwarder import exchange
from clrk_worker_dialer.state import DialerState, agent_key

DEFAULT_TIMEOUT = 2.0  # seconds for the whole confirmation, a free slot included
DEFAULT_CONCURRENCY = 64  # lookups at once, for every agent together


class SniConfirmer:
    def __init__(
        self,
        state: DialerState,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if timeout <= 0 or concurrency < 1:
            raise ValueError("the confirmation needs a positive wait and at least one slot")
        self.state = state
        self.timeout = timeout
        self.slots = asyncio.Semaphore(concurrency)

    async def confirm(self, agent: Agent | None, name: str, ip: str) -> bool:
        """Whether `name` resolves to `ip` now; if so its answers are bound for `agent`."""
        key = agent_key(agent)
        if key is None:
            return False
        try:
            async with asyncio.timeout(self.timeout), self.slots:
                bindings = await self._lookup(name)
        except TimeoutError:
            return False
        ip = normalise_ip(ip)
        if not any(b.ip == ip for b in bindings):
            return False
        self.state.bindings.add(key, bindings, time.monotonic())
        return True

    async def _lookup(self, name: str) -> list[Binding]:
        """Both address families at once; an unanswered family contributes nothing."""
        answers = await asyncio.gather(
            *(self._ask(name, rdtype) for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))
        )
        return [binding for found in answers for binding in found]

    async def _ask(self, name: str, rdtype: int) -> list[Binding]:
        query = dns.message.make_query(name, rdtype)
        query.flags |= dns.flags.RD
        wire = query.to_wire()
        state = self.state
        answer = await exchange(wire, state.resolvers, state.config.dns_timeout)
        return [] if answer is None else bindings_from_answer(parse_query(wire), answer)
