"""The asyncio shell of one agent TCP connection: transparent (the kernel redirected
it; SO_ORIGINAL_DST says where it was going) or explicit (SOCKS5 / HTTP CONNECT told us).

It carries out a TcpSession's actions and nothing else decides here.  A transparent
connection is decided on its accepted socket (`admit_transparent`): a refusal is
recorded and reset there, before asyncio builds a transport for it, which would cost
the denial more than the decision and its record; an allowed connection that needs none
of the agent's bytes (not TLS) is dialed and handed to the splice relay there too, as
the transport would only be built to be taken apart again (about half the dialer's CPU
per allowed connection).  Only a connection that must be read first gets a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from clrk.nexthops import describe
from clrk.policy import Agent, Decision, OwnAddresses, Reason
from clrk_runtime.logs import fields
from clrk_worker_dialer.session import (
    Action,
    Confirm,
    Dial,
    Flow,
    Refuse,
    TcpSession,
    Wait,
    best_name,
)
from clrk_worker_dialer.sockopts import original_destination, reset_on_close
from clrk_worker_dialer.splice_relay import SpliceRelay, connect, connect_unix_now
from clrk_worker_dialer.state import DialerState

if TYPE_CHECKING:
    from clrk_worker_dialer.sni_confirm import SniConfirmer

log = logging.getLogger("clrk.dialer")

UPSTREAM_CONNECT_TIMEOUT = 5.0


class AgentSide(asyncio.Protocol):
    """Decide, then relay.  Subclasses supply the flow (transparent or explicit)."""

    def __init__(self, state: DialerState, confirmer: SniConfirmer | None = None) -> None:
        self.state = state
        self.confirmer = confirmer  # None: an SNI no DNS answer bound is never confirmed
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.session: TcpSession | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._confirming: asyncio.Task | None = None
        self._pending: list[bytes] = []  # bytes read while dialing
        self._closed = False

    # --- the session -----------------------------------------------------------------

    def begin(self, flow: Flow, own: OwnAddresses | None = None) -> None:
        self.session, action = _start_session(self.state, flow, own, self.loop.time())
        self.act(action)

    def act(self, action) -> None:
        if isinstance(action, Refuse):
            self.refuse(action)
        elif isinstance(action, Wait):
            self.waiting_for_hello()
            self._timer = self.loop.call_at(action.deadline, self._hello_timeout)
        elif isinstance(action, Confirm):
            self._cancel_timer()
            self.transport.pause_reading()  # the kernel holds what follows the ClientHello
            self._confirming = self.loop.create_task(self._confirm(action.name))
        elif isinstance(action, Dial):
            self._cancel_timer()
            if not action.decision.enforced:
                self._record_reported(action)
            self.transport.pause_reading()
            self.loop.create_task(self._dial(action))

    def waiting_for_hello(self) -> None:
        """Explicit mode must answer the proxy handshake before a ClientHello can come."""

    async def _confirm(self, name: str) -> None:
        """SPEC 4: the SNI counts once the gateway's own lookup binds it to the address."""
        session = self.session
        flow = session.flow
        ok = self.confirmer is not None and await self.confirmer.confirm(
            flow.agent, name, flow.dst_ip
        )
        if self._closed or session.done:
            return
        if ok:
            self.act(session.confirmed(self.state.names(flow.agent, flow.dst_ip)))
        else:
            self.act(session.unconfirmed())

    def _hello_timeout(self) -> None:
        self._timer = None
        if self.session is not None and not self.session.done and not self._closed:
            self.act(self.session.timeout())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def refuse(self, action: Refuse, flow: Flow | None = None) -> None:
        """Record the denial and reset; `flow` when there is no session to take it from."""
        self._cancel_timer()
        _record_refusal(self.state, action, flow or self.session.flow)
        self.tell_refused(action)
        self.reset()

    def _record_reported(self, action: Dial) -> None:
        _record_reported_dial(self.state, self.session, action)

    def reset(self) -> None:
        """SPEC 5.3: an RST right after the decision."""
        self._closed = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                reset_on_close(sock)
        transport.abort()

    async def _dial(self, action: Dial) -> None:
        try:
            upstream = await asyncio.wait_for(
                connect(self.loop, action.next_hop), UPSTREAM_CONNECT_TIMEOUT
            )
        except (TimeoutError, OSError) as exc:
            _unreachable(action, exc)
            self.tell_refused(None)
            self.reset()
            return
        if self._closed or self.transport.is_closing():
            upstream.close()
            return
        to_upstream = action.preamble + b"".join(self._pending)
        self._pending.clear()
        pipes = agent = None
        try:
            pipes = self.state.pipes.pipes()  # before promising anything: what can run out
            agent = await self._take_socket()
        except OSError as exc:  # out of descriptors or of the pipe quota
            log.error("cannot relay", extra=fields(error=str(exc)))
        if agent is None:
            if pipes is not None:
                for pipe in pipes:
                    pipe.close()
            upstream.close()
            if not self._closed:
                self.tell_refused(None)
                self.reset()
            return
        relay = SpliceRelay(
            agent,
            upstream,
            to_upstream=to_upstream,
            to_agent=self.tunnel_reply(),
            pipes=pipes,
            pool=self.state.pipes,
            loop=self.loop,
        )
        relay.start()

    def tell_refused(self, refuse: Refuse | None) -> None:
        """Explicit mode answers the proxy request (`None`: the next hop was unreachable)."""

    def tunnel_reply(self) -> bytes:
        """What the agent is told once the next hop answered (explicit mode's success)."""
        return b""

    async def _take_socket(self) -> socket.socket | None:
        """Take the agent's socket from its asyncio transport for the splice relay.

        The transport is paused, so the kernel holds any unread bytes; once its write
        buffer is empty (it practically always is: at most a proxy reply was written),
        a duplicate of the descriptor outlives the transport's close.
        """
        transport = self.transport
        deadline = self.loop.time() + UPSTREAM_CONNECT_TIMEOUT  # an agent that never reads
        while transport.get_write_buffer_size() and not transport.is_closing():
            if self.loop.time() > deadline:
                return None
            await asyncio.sleep(0.001)
        if self._closed or transport.is_closing():
            return None
        fd = os.dup(transport.get_extra_info("socket").fileno())
        try:
            agent = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            raise
        transport.abort()
        return agent

    # --- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.session is not None and not self.session.done:
            action = self.session.data(data)
            if action is not None:
                self.act(action)
        elif self.session is not None:
            self._pending.append(data)  # dialing; normally reading is paused meanwhile
        else:
            self.before_session(data)

    def before_session(self, data: bytes) -> None:
        """Explicit mode: the proxy handshake.  Transparent connections never get here."""

    def eof_received(self) -> bool:
        if self.session is not None and not self.session.done:
            self.act(self.session.eof())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        if self._confirming is not None:
            self._confirming.cancel()


def _start_session(
    state: DialerState, flow: Flow, own: OwnAddresses | None, now: float
) -> tuple[TcpSession, Action]:
    assert state.policy is not None
    session = TcpSession(
        state.policy,
        flow,
        state.next_hops,
        client_hello_wait=state.config.client_hello_wait,
        own=state.own if own is None else own,
    )
    return session, session.start(now)


def _record_reported_dial(state: DialerState, session: TcpSession, action: Dial) -> None:
    """Report mode: the deny record of a connection that goes through anyway."""
    flow = session.flow
    state.record_dial_denied(
        action.decision,
        agent=flow.agent,
        dst=(flow.dst_ip, flow.dst_port),
        transport="tcp",
        dst_name=best_name(action.decision, flow.names, session.sni, flow.requested_name),
        src=(flow.src_ip, flow.src_port),
        connection_id=flow.connection_id,
    )


def _record_refusal(state: DialerState, action: Refuse, flow: Flow) -> None:
    state.record_dial_denied(
        action.decision,
        agent=flow.agent,
        dst=(flow.dst_ip, flow.dst_port),
        transport="tcp",
        dst_name=action.dst_name,
        src=(flow.src_ip, flow.src_port),
        connection_id=flow.connection_id,
    )


def _record_undecided(
    state: DialerState,
    src: tuple[str, int],
    dst: tuple[str, int],
    agent: Agent | None = None,
) -> bool:
    """A connection refused before any decision (not redirected, or deciding failed):
    `blocked_address`, always enforced, as for the gateway's own addresses."""
    policy = state.policy
    gateway = state.config.gateway if policy is None else policy.ref
    default = "" if policy is None else policy.default_policy
    agent_ref = None if agent is None else f"{agent.namespace}/{agent.name}"
    decision = Decision(Reason.BLOCKED_ADDRESS, gateway, agent_ref, default)
    state.record_dial_denied(decision, agent=agent, dst=dst, transport="tcp", dst_name="", src=src)
    return True


def _local(conn: socket.socket) -> tuple[str, int]:
    local = conn.getsockname()
    return local[0], local[1]


def _reset_now(conn: socket.socket) -> None:
    """SPEC 5.3: an RST right after the decision, on a socket no transport owns."""
    with contextlib.suppress(OSError):
        reset_on_close(conn)
    conn.close()


def _unreachable(action: Dial, exc: OSError) -> None:
    log.warning(
        "next hop unreachable",
        extra=fields(next_hop=describe(action.next_hop), error=str(exc)),
    )


def _relay_accepted(
    state: DialerState,
    loop: asyncio.AbstractEventLoop,
    conn: socket.socket,
    upstream: socket.socket,
    preamble: bytes,
) -> None:
    """Splice an accepted agent socket no transport owns to its connected next hop,
    `preamble` (the PROXY v2 header) first; reset both when the relay cannot exist."""
    try:
        pipes = state.pipes.pipes()
    except OSError as exc:  # out of descriptors or of the pipe quota
        log.error("cannot relay", extra=fields(error=str(exc)))
        upstream.close()
        _reset_now(conn)
        return
    # (Nagle is off, as asyncio's transport would have it: what the next hop answers
    # reaches the agent when it comes, not after the agent's next ACK; the listener
    # passed TCP_NODELAY on, source_steering.listen_socket.)
    SpliceRelay(
        conn, upstream, to_upstream=preamble, pipes=pipes, pool=state.pipes, loop=loop
    ).start()


async def _dial_accepted(
    state: DialerState, loop: asyncio.AbstractEventLoop, conn: socket.socket, action: Dial
) -> None:
    """The next hop when it cannot be connected at once (a TCP hop; a Unix listener
    whose accept queue is full), within the connect timeout."""
    try:
        upstream = await asyncio.wait_for(connect(loop, action.next_hop), UPSTREAM_CONNECT_TIMEOUT)
    except (TimeoutError, OSError) as exc:
        _unreachable(action, exc)
        _reset_now(conn)
        return
    _relay_accepted(state, loop, conn, upstream, action.preamble)


class TransparentTcp(AgentSide):
    """A connection the kernel REDIRECTed to the dialer, its session started by
    `admit_transparent`; the transport carries out the first action that is not a
    refusal (wait for a ClientHello, confirm an SNI, dial)."""

    def __init__(
        self,
        state: DialerState,
        confirmer: SniConfirmer | None,
        session: TcpSession,
        first: Action,
    ) -> None:
        super().__init__(state, confirmer)
        self.session = session
        self._first = first

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.act(self._first)


def admit_transparent(
    state: DialerState, confirmer: SniConfirmer | None
) -> Callable[[socket.socket, int], TransparentTcp | None]:
    """What the acceptor asks of each accepted transparent connection (and the port of
    the socket that accepted it): decide it now; None once it was refused (recorded,
    then reset: the record exists before the agent sees the reset) or handed to the next
    hop (dialed after the decision, never before), else the protocol that reads what the
    decision still needs."""
    loop = asyncio.get_running_loop()
    dialing: set[asyncio.Task] = set()  # a task the loop holds only weakly

    def dial(conn: socket.socket, session: TcpSession, action: Dial) -> None:
        if not action.decision.enforced:
            _record_reported_dial(state, session, action)
        hop = action.next_hop
        if isinstance(hop, str):
            try:
                upstream = connect_unix_now(hop)
            except OSError as exc:
                _unreachable(action, exc)
                _reset_now(conn)
                return
            if upstream is not None:
                _relay_accepted(state, loop, conn, upstream, action.preamble)
                return
        task = loop.create_task(_dial_accepted(state, loop, conn, action))
        dialing.add(task)
        task.add_done_callback(dialing.discard)

    def admit(conn: socket.socket, port: int) -> TransparentTcp | None:
        try:
            peer = conn.getpeername()
        except OSError:  # no peer: the agent reset it while it waited; nothing refused
            _reset_now(conn)
            return None
        src, dst, agent, recorded = (peer[0], peer[1]), None, None, False
        try:
            dst = original_destination(conn)
            if dst is None:
                # Not REDIRECTed: sent to the dialer's own address, the gateway's.
                recorded = _record_undecided(state, src, _local(conn))
                _reset_now(conn)
                return None
            own = None
            # (Its local port is always `port`: its local address is asked only then.)
            if dst[1] == port and dst == _local(conn):
                # The dialer's own port, by one of the gateway's addresses (REDIRECT
                # keeps it as the original destination): blocked_address, recorded,
                # whether or not that address is known as the gateway's yet.
                own = state.own.including(dst[0])
            agent = state.agent_for_source(src[0])
            flow = state.flow(src, dst, agent)
            session, action = _start_session(state, flow, own, loop.time())
            if isinstance(action, Refuse):
                _record_refusal(state, action, flow)
                recorded = True
                _reset_now(conn)
                return None
        except Exception:
            # Fail closed, and a refusal the agent sees has its record like any other.
            log.exception("cannot decide a connection; refused")
            if not recorded:
                with contextlib.suppress(Exception):
                    _record_undecided(state, src, dst or _local(conn), agent)
            _reset_now(conn)
            return None
        # Allowed (or waiting for what the decision still needs): no refusal from here.
        if isinstance(action, Dial):
            dial(conn, session, action)
            return None
        return TransparentTcp(state, confirmer, session, action)

    return admit
