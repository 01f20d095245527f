"""One agent TCP connection, sans-io: events in, one action out.

The asyncio shell accepts the connection, builds a `Flow` from what the kernel told it
(source, original destination) and what the dialer knows (agent, DNS-bound names), and
then only carries out the actions this class returns:

- `Refuse`: reset the agent's connection now (no upstream connect is ever attempted) and
  emit the deny record;
- `Wait`: read the agent's first bytes (a TLS ClientHello) until `deadline`;
- `Confirm`: resolve the SNI `name` through the gateway's resolvers (bounded wait) and,
  when the destination is among the answers, bind them for the agent, then call
  `confirmed(names)` with the agent's names for the destination; else `unconfirmed()`;
- `Dial`: connect to the Envoy listener of the decision, write `preamble` (the PROXY v2
  header, then any bytes already read from the agent) and splice both ways; a decision
  that is not `enforced` (Report mode) also leaves its deny record.

Why wait for a ClientHello at all: SPEC 4 matches the SNI on TLS listeners (and rejects
an SNI that contradicts the agent's own DNS answers), and a hard-coded IP without any
DNS binding can only be matched by name through the SNI, once the gateway confirmed
it.  Nothing else waits, so a plain-TCP denial is decided at accept time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from clrk.nexthops import NextHop
from clrk.policy import Agent, Connection, Decision, GatewayPolicy, OwnAddresses, Reason, decide
from clrk.policy.addresses import NO_OWN_ADDRESSES
from clrk_worker_dialer import proxy_v2, tls_sni

DEFAULT_CLIENT_HELLO_WAIT = 1.0  # seconds; SPEC 5.5 "bounded wait"
L7_LISTENERS = {("HTTP", None), ("TLS", "Terminate")}


@dataclass(frozen=True, slots=True)
class Flow:
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    agent: Agent | None
    names: frozenset[str]  # this agent's DNS bindings for dst_ip (SPEC 5.2)
    connection_id: str
    requested_name: str | None = None  # explicit mode: the hostname the agent asked for


class Refuse(NamedTuple):
    decision: Decision
    dst_name: str


class Wait(NamedTuple):
    deadline: float


class Confirm(NamedTuple):
    name: str  # the SNI, the only name: it counts once it resolves to the destination


class Dial(NamedTuple):
    decision: Decision
    next_hop: NextHop
    preamble: bytes


Action = Refuse | Wait | Confirm | Dial
Decide = Callable[[GatewayPolicy, Agent | None, Connection, OwnAddresses], Decision]


def best_name(
    decision: Decision,
    names: frozenset[str],
    sni: str | None = None,
    requested_name: str | None = None,
) -> str:
    """The name a record shows: the one that matched, else the best evidence we have
    (the SNI, the name an explicit-mode client asked for, a DNS-bound name)."""
    return decision.hostname or sni or requested_name or (min(names) if names else "")


def proxy_header(flow: Flow, decision: Decision) -> bytes:
    """SPEC 6: source = the agent, destination = the original destination, clrk TLVs."""
    src_ip = flow.src_ip
    if (":" in src_ip) != (":" in flow.dst_ip):
        # v2 carries one address family; explicit mode may see a v4 client ask for a v6
        # destination.  A v4 source maps into v6; a v6 source cannot map into v4.
        src_ip = f"::ffff:{src_ip}" if ":" in flow.dst_ip else "0.0.0.0"
    agent = flow.agent
    return proxy_v2.encode_clrk(
        src_ip,
        flow.src_port,
        flow.dst_ip,
        flow.dst_port,
        authority=decision.hostname,
        agent_namespace=agent.namespace if agent else None,
        agent_name=agent.name if agent else None,
        route=decision.route,
        deny_policy=decision.deny_policy,
        connection_id=flow.connection_id,
    )


class TcpSession:
    """Decide one connection; at most one terminal action (Refuse or Dial) is returned."""

    __slots__ = (
        "_buffer",
        "_decide",
        "_first",
        "_own",
        "_unverified",
        "_wait",
        "done",
        "flow",
        "next_hops",
        "policy",
        "sni",
    )

    def __init__(
        self,
        policy: GatewayPolicy,
        flow: Flow,
        next_hops: Mapping[str, NextHop],
        *,
        client_hello_wait: float = DEFAULT_CLIENT_HELLO_WAIT,
        own: OwnAddresses = NO_OWN_ADDRESSES,
        decide_fn: Decide = decide,
    ) -> None:
        self.policy = policy
        self._own = own
        self.flow = flow
        self.next_hops = next_hops
        self._wait = client_hello_wait
        self._decide = decide_fn
        self._buffer = b""
        self._first: Decision | None = None
        self._unverified: Decision | None = None  # waiting for the SNI's confirmation
        self.sni: str | None = None
        self.done = False

    # --- events ----------------------------------------------------------------------

    def start(self, now: float) -> Action:
        flow = self.flow
        conn = Connection("TCP", flow.dst_ip, flow.dst_port, flow.names)
        first = self._decide(self.policy, flow.agent, conn, self._own)
        if self._needs_client_hello(first):
            self._first = first
            return Wait(now + self._wait)
        return self._finish(first)

    def data(self, chunk: bytes) -> Action | None:
        """Bytes from the agent before the decision; None means keep waiting."""
        if self.done:
            raise RuntimeError("data after the session decided")
        self._buffer += chunk
        if self._unverified is not None:
            return None  # the ClientHello was read; these bytes follow it once decided
        result = tls_sni.parse_client_hello(self._buffer)
        if result.outcome is tls_sni.SniOutcome.NEED_MORE:
            return None
        if result.outcome is tls_sni.SniOutcome.FOUND:
            self.sni = result.sni
            decision = self._decide_with(self.flow.names)
            if decision.reason is Reason.SNI_UNVERIFIED:
                self._unverified = decision
                return Confirm(decision.hostname or result.sni)
            return self._finish(decision)
        return self._finish(self._pending())

    def confirmed(self, names: frozenset[str]) -> Action:
        """The SNI resolved to the destination and is bound: decide again with `names`,
        the agent's names for the destination now."""
        if self._unverified is None or self.done:
            raise RuntimeError("no confirmation is pending")
        decision = self._decide_with(names)
        if decision.reason is Reason.SNI_UNVERIFIED:  # expired or evicted meanwhile
            decision = self._unverified
        return self._finish(decision)

    def unconfirmed(self) -> Action:
        """The SNI did not resolve to the destination in time: refused `sni_unverified`."""
        return self._finish(self._pending())

    def timeout(self) -> Action:
        """The agent sent no (complete) ClientHello in time: decide without an SNI."""
        return self._finish(self._pending())

    def eof(self) -> Action:
        """The agent closed before the decision: what was decided so far stands."""
        return self._finish(self._pending())

    # --- internals -------------------------------------------------------------------

    def _pending(self) -> Decision:
        if self._unverified is not None:
            return self._unverified
        if self._first is None:
            raise RuntimeError("the session has not started")
        return self._first

    def _decide_with(self, names: frozenset[str]) -> Decision:
        flow = self.flow
        conn = Connection("TCP", flow.dst_ip, flow.dst_port, names, self.sni)
        return self._decide(self.policy, flow.agent, conn, self._own)

    def _tls_listener_for(self, port: int) -> bool:
        return any(
            lst.protocol == "TLS" and (lst.port is None or lst.port == port)
            for lst in self.policy.listeners
        )

    def _needs_client_hello(self, first: Decision) -> bool:
        first = first.effective  # Report mode: where a reported denial goes through
        if first.allowed:
            listener = self.policy.listener(first.listener or "")
            return listener is not None and listener.protocol == "TLS"
        # Only a connection without any DNS binding can be opened by its SNI (SPEC 4).
        return (
            first.reason in (Reason.POLICY, Reason.NO_LISTENER)
            and not self.flow.names
            and self._tls_listener_for(self.flow.dst_port)
        )

    def _forwarded_deny(self, decision: Decision) -> bool:
        # SPEC 4 step 4: on L7 listeners a deny-policy hit is forwarded so that Envoy
        # answers it with the policy's HTTP response.
        if decision.reason is not Reason.DENY_POLICY or decision.listener is None:
            return False
        lst = self.policy.listener(decision.listener)
        return lst is not None and (lst.protocol, lst.tls_mode) in L7_LISTENERS

    def _finish(self, decision: Decision) -> Action:
        self.done = True
        carried = decision.effective  # Report mode: the denial goes through as this says
        if carried.allowed or self._forwarded_deny(carried):
            hop = self.next_hops.get(carried.listener or "")
            if hop is not None:
                preamble = proxy_header(self.flow, carried) + self._buffer
                return Dial(decision, hop, preamble)
            decision = decision._replace(reason=Reason.NO_LISTENER, through=None)
        flow = self.flow
        return Refuse(decision, best_name(decision, flow.names, self.sni, flow.requested_name))
