"""Explicit mode (SPEC 5.1): SOCKS5 (CONNECT, UDP ASSOCIATE) and HTTP CONNECT on loopback.

The agent is named by the proxy username with its credential as the password, or is the
configured default agent (clrk_worker_dialer.identity).  A hostname
target is resolved by the dialer itself through the same DNS policy as transparent mode,
bound for that agent, and the checked IP is dialed: there is no window in which the name
could be re-resolved to somewhere else.  The decision is the same TcpSession's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from clrk.policy import Connection, Decision, Reason, decide
from clrk_worker_dialer import http_connect, socks5
from clrk_worker_dialer.dns_forwarder import Forwarder
from clrk_worker_dialer.flows import FlowTable
from clrk_worker_dialer.session import Refuse, TcpSession, best_name
from clrk_worker_dialer.sni_confirm import SniConfirmer
from clrk_worker_dialer.state import DialerState
from clrk_worker_dialer.tcp_front import AgentSide

log = logging.getLogger("clrk.dialer.explicit")


class ExplicitFront(AgentSide):
    """Shared by both proxy protocols: resolve, decide, answer the client, relay."""

    def __init__(
        self, state: DialerState, forwarder: Forwarder, confirmer: SniConfirmer | None = None
    ) -> None:
        super().__init__(state, confirmer)
        self.forwarder = forwarder
        self.replied = False
        self.promised = False
        self.task: asyncio.Task | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if peer is None:  # the client reset the connection while it waited for its turn
            self.reset()
            return
        self.src = (peer[0], peer[1])

    # what each protocol says to its client
    def success(self) -> bytes:
        raise NotImplementedError

    def failure(self, refuse: Refuse | None, unreachable: bool = False) -> bytes:
        raise NotImplementedError

    def _outcome(self, ok: bool, refuse: Refuse | None) -> None:
        if self.replied or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self._reply(ok, refuse))

    def _reply(self, ok: bool, refuse: Refuse | None) -> bytes:
        if self.replied:
            return b""
        self.replied = True
        self.promised = ok
        return self.success() if ok else self.failure(refuse)

    def tell_refused(self, refuse: Refuse | None) -> None:
        self._outcome(False, refuse)

    def tunnel_reply(self) -> bytes:
        return self._reply(True, None)

    def reset(self) -> None:
        # Before the tunnel was promised, the refusal is the proxy's own reply, which the
        # client must be able to read: close gracefully.  After it, a reset is the refusal.
        if self.promised:
            super().reset()
            return
        self._closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def waiting_for_hello(self) -> None:
        # The ClientHello only comes once the client believes the tunnel is up.
        self._outcome(True, None)

    def open(self, host: str, port: int, is_name: bool, agent, leftover: bytes) -> None:
        self.transport.pause_reading()
        self.task = self.loop.create_task(self._open(host, port, is_name, agent, leftover))

    async def _open(self, host, port, is_name, agent, leftover) -> None:
        state = self.state
        policy = state.policy
        name = host if is_name else None
        if is_name:
            addresses, filtered = ([], None)
            if agent is not None:
                addresses, filtered = await self.forwarder.resolve(agent, host, self.src)
            if filtered is not None:
                state.record_dns_denied(
                    filtered.decision, agent=agent, query=host, qtype=1, src=self.src
                )
                self._fail_unreachable()
                return
            if agent is None:
                # Nothing is resolved for a stranger: refuse on identity alone.
                unknown = Decision(Reason.UNKNOWN_AGENT, policy.ref, None, policy.default_policy)
                self.refuse(Refuse(unknown, host), state.flow(self.src, ("", port), None, host))
                return
            if not addresses:
                self._fail_unreachable()
                return
        else:
            addresses = [host]
        chosen = None
        for ip in addresses:
            flow = state.flow(self.src, (ip, port), agent, requested_name=name)
            session = TcpSession(
                policy,
                flow,
                state.next_hops,
                client_hello_wait=state.config.client_hello_wait,
                own=state.own,
            )
            action = session.start(self.loop.time())
            if chosen is None or not isinstance(action, Refuse):
                chosen = (session, action)
            if not isinstance(action, Refuse):
                break
        self.session, action = chosen
        if self._closed:
            return
        self.act(action)
        if leftover and self.session is not None:
            if not self.session.done:
                self.transport.resume_reading()
                self.data_received(leftover)
            else:
                self._pending.append(leftover)
        elif self.session is not None and not self.session.done:
            self.transport.resume_reading()

    def _fail_unreachable(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.replied = True
            self.transport.write(self.failure(None, unreachable=True))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.task is not None and not self.task.done():
            self.task.cancel()


class HttpConnectFront(ExplicitFront):
    def __init__(
        self, state: DialerState, forwarder: Forwarder, confirmer: SniConfirmer | None = None
    ) -> None:
        super().__init__(state, forwarder, confirmer)
        self.parser = http_connect.ConnectRequestParser()

    def before_session(self, data: bytes) -> None:
        if self.task is not None:
            return
        result = self.parser.feed(data)
        if isinstance(result, http_connect.Incomplete):
            return
        if isinstance(result, http_connect.Rejected):
            self.transport.write(http_connect.rejection(result))
            self.transport.close()
            return
        agent = self.state.agent_for_proxy(result.username, result.password)
        self.open(result.host, result.port, result.is_name, agent, result.leftover)

    def success(self) -> bytes:
        return http_connect.established()

    def failure(self, refuse: Refuse | None, unreachable: bool = False) -> bytes:
        if refuse is not None:
            reason = str(refuse.decision.reason)
            return http_connect.refused(403, f"egress denied by clrk: {reason}", reason)
        return http_connect.refused(502, "upstream unreachable")


class Socks5Front(ExplicitFront):
    def __init__(
        self, state: DialerState, forwarder: Forwarder, confirmer: SniConfirmer | None = None
    ) -> None:
        super().__init__(state, forwarder, confirmer)
        self.handshake = socks5.Socks5Handshake(
            allow_no_auth=state.config.default_agent is not None
        )
        self.association: UdpAssociation | None = None

    def before_session(self, data: bytes) -> None:
        if self.task is not None or self.association is not None:
            return  # nothing but the association's lifetime travels on this connection now
        for event in self.handshake.feed(data):
            if isinstance(event, socks5.Send):
                self.transport.write(event.data)
            elif isinstance(event, socks5.Fail):
                self.transport.close()
                return
            elif isinstance(event, socks5.Request):
                agent = self.state.agent_for_proxy(event.username, event.password)
                if event.command is socks5.Command.UDP_ASSOCIATE:
                    self._associate(agent)
                else:
                    self.open(event.host, event.port, event.is_name, agent, event.leftover)
                return

    def _associate(self, agent) -> None:
        local = self.transport.get_extra_info("sockname")
        try:
            self.association = UdpAssociation(self, agent, local[0])
        except OSError:
            self.transport.write(socks5.reply(socks5.Reply.GENERAL_FAILURE))
            self.transport.close()
            return
        host, port = self.association.sock.getsockname()[:2]
        self.transport.write(socks5.reply(socks5.Reply.SUCCEEDED, host, port))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.association is not None:
            self.association.close()

    def success(self) -> bytes:
        return socks5.reply(socks5.Reply.SUCCEEDED)

    def failure(self, refuse: Refuse | None, unreachable: bool = False) -> bytes:
        if refuse is not None:
            return socks5.reply(socks5.Reply.NOT_ALLOWED)
        if unreachable:
            return socks5.reply(socks5.Reply.HOST_UNREACHABLE)
        return socks5.reply(socks5.Reply.GENERAL_FAILURE)


class UdpAssociation:
    """SOCKS5 UDP ASSOCIATE: each (destination) is a flow decided once, like transparent
    UDP; allowed datagrams are relayed, denied flows dropped with one record each.  It
    lives as long as the client's control connection."""

    def __init__(self, front: Socks5Front, agent, local_ip: str) -> None:
        self.front = front
        self.state = front.state
        self.agent = agent
        self.loop = front.loop
        family = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((local_ip, 0))
        self.client_ip = front.src[0]
        self.client: tuple | None = None
        self.flows = FlowTable(self.state.config.udp_idle_timeout)
        self.names: dict[str, list[str]] = {}
        self.upstreams: dict[tuple[str, int], socket.socket] = {}
        self.tasks: set[asyncio.Task] = set()
        self.loop.add_reader(self.sock.fileno(), self._from_client)

    def _from_client(self) -> None:
        for _ in range(64):
            try:
                datagram, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if addr[0] != self.client_ip:
                continue  # only the client that asked for the association may use it
            self.client = addr
            parsed = socks5.decode_udp(datagram)
            if parsed is None:
                continue
            host, port, is_name, payload = parsed
            if is_name:
                task = self.loop.create_task(self._resolve_then_send(host, port, payload))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                self._send(host, port, payload, None)

    async def _resolve_then_send(self, name: str, port: int, payload: bytes) -> None:
        if name not in self.names:
            addresses, filtered = ([], None)
            if self.agent is not None:
                addresses, filtered = await self.front.forwarder.resolve(
                    self.agent, name, self.front.src
                )
            if filtered is not None:
                self.state.record_dns_denied(
                    filtered.decision, agent=self.agent, query=name, qtype=1, src=self.front.src
                )
            self.names[name] = addresses
        for ip in self.names[name][:1]:
            self._send(ip, port, payload, name)

    def _send(self, ip: str, port: int, payload: bytes, name: str | None) -> None:
        state, agent, dst = self.state, self.agent, (ip, port)
        policy = state.policy
        names = state.names(agent, ip)

        def decide_flow() -> Decision:
            return decide(policy, agent, Connection("UDP", ip, port, names), state.own)

        flow, new = self.flows.datagram(dst, time.monotonic(), decide_flow)
        if new and not flow.decision.allowed:  # Report mode records what it lets through
            state.record_dial_denied(
                flow.decision,
                agent=agent,
                dst=dst,
                transport="udp",
                dst_name=best_name(flow.decision, names, requested_name=name),
                src=self.front.src,
            )
        if not flow.allowed:
            return
        up = self.upstreams.get(dst)
        if up is None:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            up = socket.socket(family, socket.SOCK_DGRAM)
            up.setblocking(False)
            try:
                up.connect(dst)
            except OSError:
                up.close()
                return
            self.upstreams[dst] = up
            self.loop.add_reader(up.fileno(), self._from_upstream, up, dst)
        with contextlib.suppress(OSError):
            up.send(payload)

    def _from_upstream(self, up: socket.socket, dst: tuple[str, int]) -> None:
        for _ in range(64):
            try:
                data = up.recv(65535)
            except (BlockingIOError, InterruptedError, OSError):
                return
            if self.client is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(socks5.encode_udp(dst[0], dst[1], data), self.client)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for sock in [self.sock, *self.upstreams.values()]:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.upstreams.clear()
