"""The DNS forwarder shell (SPEC 5.2): agent queries on UDP/53 and TCP/53, whatever
address they were sent to, go to the gateway's upstream resolvers; answers are relayed
and snooped into the agent's bindings.  dns_policy decides; this module does the I/O.

The forwarder sends UDP queries over connected sockets to each upstream resolver
(`SharedUdp`), so only the resolver can answer; each query goes out under a fresh random
ID of its own (agents' IDs may collide) and only the answer with that ID, on the socket
it went out on, and with the same question is taken, its ID given back, and checked again
by the snoop (dns_binding) before anything is bound: unsolicited answers bind nothing.

A spoofed answer that binds a name to an address of the spoofer's is what an agent and
an accomplice outside would aim for (RFC 5452): the sockets' ports are random (the
kernel's) and each socket is replaced after a hundred or so queries, so guessing takes the
port as well as the ID, and a port learned is soon gone.

A query over UDP is a chain of callbacks (datagram in, policy, out under its own ID,
answer in, snoop, reply), no task of its own; only a truncated answer or none goes on in
a task (TCP, then the next resolvers).  The queries go out together at the end of the
loop's turn (send_batch), as the UDP front's answers do.

Each agent holds at most a sixteenth of the pending queries, so one agent's flood leaves
the others room: a query counts against its agent from the moment it is sent until it is
answered or given up, on the slow path too.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import dns.flags
import dns.message
import dns.rdatatype

from clrk.policy import Agent
from clrk_runtime import random_bytes
from clrk_runtime.logs import fields
from clrk_worker_dialer import dns_wire
from clrk_worker_dialer.dns_binding import DnsQuery, Echo, bindings_for
from clrk_worker_dialer.dns_policy import Answer, Drop, Forward, on_query
from clrk_worker_dialer.send_batch import SendBatch
from clrk_worker_dialer.state import DialerState, agent_key

log = logging.getLogger("clrk.dialer.dns")

MAX_TCP_MESSAGE = 65535
_ID = struct.Struct("!H")


def _truncated(answer: bytes) -> bool:
    return len(answer) >= 3 and bool(answer[2] & 0x02)


async def _udp_exchange(wire: bytes, server: tuple[str, int], timeout: float) -> bytes | None:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(server)
        sock.send(wire)
        try:
            # asyncio.timeout, not wait_for: no extra task per query on the hot path.
            async with asyncio.timeout(timeout):
                while True:
                    answer = await loop.sock_recv(sock, 65535)
                    if answer[:2] == wire[:2]:  # anything else does not answer this query
                        return answer
        except (TimeoutError, OSError):
            return None


class _Upstream:
    """One connected socket to a resolver: when it was opened, how many queries went
    out on it, how many still wait for their answer, and whether it was replaced."""

    __slots__ = ("opened", "retired", "sent", "server", "sock", "stuck", "waiting")

    def __init__(self, sock: socket.socket, server: tuple[str, int], opened: float) -> None:
        self.sock = sock
        self.server = server
        self.opened = opened
        self.sent = 0
        self.waiting = 0
        self.retired = False
        self.stuck = False  # due for replacement, and no new socket could be opened


class _Pending:
    """A query out on a shared socket: what its answer must echo, who takes it."""

    __slots__ = ("agent", "deliver", "ident", "pending", "question", "tick", "upstream")

    def __init__(
        self, question: bytes, deliver, agent, pending: dict, ident: int, tick, upstream
    ) -> None:
        self.question = question  # the agent's header and question, as it sent them
        self.deliver = deliver
        self.agent = agent
        self.pending = pending
        self.ident = ident
        self.tick = tick  # the queries whose wait ends in the same tick as this one's
        self.upstream = upstream  # the socket it went out on: only that one answers it


class SharedUdp:
    """One connected UDP socket per upstream resolver at a time for every query (no
    socket per query); pending queries by the ID they went out under.  A socket that has
    sent ROTATE_AFTER queries or is ROTATE_AGE seconds old takes no more: a new one (a
    new random port) takes its place, and the old one is closed once its last query is
    answered or given up.  At most MAX_REPLACED replaced sockets stay open: past that,
    the oldest one's queries are given up (they go on over TCP) and it is closed.

    Callbacks, not a task per query: `send` registers `deliver`, which the socket's
    reader calls with the answer, or one timer for all queries with None (or the end of
    the loop's turn, when the datagram cannot go out: send_batch). Waits end on
    a grid of TICK seconds (rounded up): a set of queries per tick, which an answered
    query leaves at once, so nothing of it outlives its answer.
    """

    TICK = 0.05
    # The port's entropy comes from replacing the socket (a pool of 4 at once would add
    # only 2 bits, each costing a read per readiness); by age too, so that a port learned
    # while the dialer is quiet is gone by the time it is busy again.
    ROTATE_AFTER = 128
    ROTATE_AGE = 10.0
    MAX_REPLACED = 32

    MAX_PENDING = 16_384  # of 65,536 IDs: a fresh one is always found quickly
    # One agent's flood of queries to a resolver that does not answer holds at most this
    # many: the others keep room (16 agents' floods fill the shared table).
    MAX_PENDING_PER_AGENT = MAX_PENDING // 16

    def __init__(self) -> None:
        self.sockets: dict[tuple[str, int], _Upstream] = {}  # each resolver's current one
        # Replaced, oldest first, while queries still wait on them.
        self._retired: dict[_Upstream, None] = {}
        self.pending: dict[tuple[str, int], dict[int, _Pending]] = {}
        self.per_agent: dict[str, int] = {}
        self._ticks: dict[int, set[_Pending]] = {}
        self._tick_heap: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick = 0
        self._ids: list[tuple[int]] = []
        self._outbox: SendBatch[tuple[bytes, _Pending]] = SendBatch(self._send_all)
        self._loop: asyncio.AbstractEventLoop | None = None  # the sockets' readers' loop
        self.closed = False

    def _upstream(self, server: tuple[str, int], now: float) -> _Upstream:
        """The socket the next query to `server` goes out on: OSError when there is
        none (the query goes on over TCP)."""
        current = self.sockets.get(server)
        if current is None:
            self.pending.setdefault(server, {})
            current = self.sockets[server] = self._open(server, now)
            return current
        if current.sent < self.ROTATE_AFTER and now - current.opened < self.ROTATE_AGE:
            return current
        try:
            fresh = self._open(server, now)
        except OSError as exc:
            # Out of descriptors, say: the old port goes on a while, then not at all
            # rather than for good.
            if current.sent >= 2 * self.ROTATE_AFTER or now - current.opened >= 2 * self.ROTATE_AGE:
                raise
            if not current.stuck:
                current.stuck = True
                log.warning("cannot replace the resolver socket", extra=fields(error=str(exc)))
            return current
        self.sockets[server] = fresh
        self._retire(current)
        return fresh

    def _open(self, server: tuple[str, int], now: float) -> _Upstream:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(server)  # binds a random port of the kernel's
        except OSError:
            sock.close()
            raise
        upstream = _Upstream(sock, server, now)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable, server, upstream)
        return upstream

    def _retire(self, upstream: _Upstream) -> None:
        upstream.retired = True
        if not upstream.waiting:
            self._close_socket(upstream)
            return
        self._retired[upstream] = None
        while len(self._retired) > self.MAX_REPLACED:
            oldest = next(iter(self._retired))
            for entry in [e for e in self.pending[oldest.server].values() if e.upstream is oldest]:
                self._forget(entry)  # the last one closes it
                _deliver(entry, None)
            self._close_socket(oldest)  # closed already; this loop must end whatever its count said

    def _close_socket(self, upstream: _Upstream) -> None:
        self._retired.pop(upstream, None)
        if upstream.sock.fileno() < 0:
            return  # closed already
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(upstream.sock.fileno())
        upstream.sock.close()

    def _random_id(self) -> int:
        # Unpredictable IDs from the system's CSPRNG, 512 at a time: one system call per
        # query (and another for every other query, as randbelow rejects half its 17-bit
        # draws) was a tenth of the forwarder's time.
        if not self._ids:
            self._ids = list(_ID.iter_unpack(random_bytes.take(1024)))
        return self._ids.pop()[0]

    def full(self, agent: str | None) -> bool:
        """Whether the agent (None: a query of the dialer's own) may not add a query."""
        return agent is not None and self.per_agent.get(agent, 0) >= self.MAX_PENDING_PER_AGENT

    def hold(self, agent: str | None) -> None:
        """Count a query of `agent` that waits elsewhere (TCP, the next resolvers)."""
        if agent is not None:
            self.per_agent[agent] = self.per_agent.get(agent, 0) + 1

    def release(self, agent: str | None) -> None:
        if agent is not None:
            left = self.per_agent.get(agent, 0) - 1
            if left > 0:
                self.per_agent[agent] = left
            else:
                self.per_agent.pop(agent, None)

    def send(
        self,
        wire: bytes,
        server: tuple[str, int],
        timeout: float,
        deliver: Callable[[bytes | None], None],
        agent: str | None = None,
        question_end: int | None = None,
    ) -> _Pending | None:
        """Send `wire` to `server` under a fresh random ID, at the end of the loop's
        turn. `deliver` is called once, with the answer under the agent's own ID, or
        with None after `timeout` or when the datagram cannot go out. None (and
        `deliver` never called) when it cannot go at all: a limit, no socket.
        `question_end`: dns_wire.question_end(wire) when the caller knows it already."""
        if self.closed:
            return None
        loop = self._loop
        if loop is None or not loop.is_running():  # get_running_loop() costs a getpid(2)
            loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            if question_end is None:
                question_end = dns_wire.question_end(wire)
            question = wire[:question_end]
            upstream = self._upstream(server, now)
        except (OSError, dns_wire.WireError):
            return None
        pending = self.pending[server]
        if self.closed or len(pending) >= self.MAX_PENDING or self.full(agent):
            return None
        ident = self._random_id()
        while ident in pending:
            ident = self._random_id()
        upstream.sent += 1
        upstream.waiting += 1
        tick = math.ceil((now + timeout) / self.TICK)
        bucket = self._ticks.get(tick)
        if bucket is None:
            bucket = self._ticks[tick] = set()
            heapq.heappush(self._tick_heap, tick)
            if self._timer is None or tick < self._timer_tick:
                self._schedule(loop)
        entry = pending[ident] = _Pending(
            question, deliver, agent, pending, ident, bucket, upstream
        )
        bucket.add(entry)
        self.hold(agent)
        self._outbox.add(loop, (_ID.pack(ident) + wire[2:], entry))
        return entry

    def _send_all(self, outbox: list[tuple[bytes, _Pending]]) -> None:
        """The queries of a turn of the loop (send_batch), each on the socket it was
        given; one that cannot go out is given up at once (it goes on over TCP)."""
        for datagram, entry in outbox:
            if entry.pending.get(entry.ident) is not entry:
                continue  # given up meanwhile: cancelled, its socket closed, or close()
            try:
                entry.upstream.sock.send(datagram)
            except OSError:
                self._forget(entry)
                _deliver(entry, None)

    def cancel(self, entry: _Pending) -> None:
        """Forget a query whose answer nobody waits for any more."""
        if entry.pending.get(entry.ident) is entry:
            self._forget(entry)

    def _forget(self, entry: _Pending) -> None:
        del entry.pending[entry.ident]
        entry.tick.discard(entry)
        self.release(entry.agent)
        upstream = entry.upstream
        upstream.waiting -= 1
        if upstream.retired and not upstream.waiting:
            self._close_socket(upstream)

    def close(self) -> None:
        """Stop for good: no socket, reader or timer is left, and nothing pending is
        delivered any more (nor sent: `send` refuses from now on)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for upstream in [*self.sockets.values(), *self._retired]:
            self._close_socket(upstream)
        self.sockets.clear()
        for pending in self.pending.values():
            pending.clear()  # an entry's own reference to it: cancel() finds nothing
        self.pending.clear()
        self._outbox.clear()
        self.per_agent.clear()
        self._ticks.clear()
        self._tick_heap.clear()

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if self._tick_heap:
            self._timer_tick = self._tick_heap[0]
            self._timer = loop.call_at(self._timer_tick * self.TICK, self._expire)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = None
        heap, now = self._tick_heap, loop.time() + 0.001  # the loop may wake a bit early
        while heap and heap[0] * self.TICK <= now:
            for entry in list(self._ticks.pop(heapq.heappop(heap))):  # not answered
                self._forget(entry)
                _deliver(entry, None)
        self._schedule(loop)

    def _readable(self, server: tuple[str, int], upstream: _Upstream) -> None:
        sock, pending = upstream.sock, self.pending[server]
        for _ in range(64):  # a burst, then let the loop run others
            try:
                answer = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error for some earlier query: its wait times out
            if len(answer) < 12:
                continue
            entry = pending.get((answer[0] << 8) | answer[1])
            if entry is None or entry.upstream is not upstream:
                continue
            query = entry.question
            if answer[12 : len(query)] != query[12:]:
                continue  # not the question asked under this ID
            self._forget(entry)
            _deliver(entry, query[:2] + answer[2:])  # the agent's own ID back
            if sock.fileno() < 0:
                return  # that was the last query of a replaced socket: closed

    async def exchange(self, wire: bytes, server: tuple[str, int], timeout: float):
        """The answer to `wire` from `server`, or None after `timeout`."""
        future = asyncio.get_running_loop().create_future()

        def deliver(answer: bytes | None) -> None:
            if not future.done():
                future.set_result(answer)

        entry = self.send(wire, server, timeout, deliver)
        if entry is None:
            return None
        try:
            return await future
        finally:
            self.cancel(entry)


def _deliver(entry: _Pending, answer: bytes | None) -> None:
    try:
        entry.deliver(answer)
    except Exception:  # one query's failure is not the reader's
        log.exception("dns answer handling failed")


UdpExchange = Callable[[bytes, tuple[str, int], float], Awaitable[bytes | None]]


async def _tcp_exchange(wire: bytes, server: tuple[str, int], timeout: float) -> bytes | None:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(server[0], server[1])
            try:
                writer.write(struct.pack("!H", len(wire)) + wire)
                length = struct.unpack("!H", await reader.readexactly(2))[0]
                return await reader.readexactly(length)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None


async def exchange(
    wire: bytes,
    servers: list[tuple[str, int]],
    timeout: float,
    tcp: bool = False,
    udp: UdpExchange = _udp_exchange,
) -> bytes | None:
    """Ask the upstream resolvers in turn; UDP (a socket of its own unless `udp` says
    otherwise), retried over TCP when truncated."""
    for server in servers:
        answer = None
        if not tcp:
            answer = await udp(wire, server, timeout)
        if answer is None or _truncated(answer):
            answer = await _tcp_exchange(wire, server, timeout) or answer
        if answer is not None:
            return answer
    return None


class Forwarder:
    def __init__(self, state: DialerState) -> None:
        self.state = state
        self.udp = SharedUdp()
        self.tasks: set[asyncio.Task] = set()  # queries on the slow path (TCP, retries)
        self.closed = False

    def _verdict(
        self, wire: bytes, src: tuple[str, int], agent: Agent | None, key: str | None
    ) -> Forward | bytes | None:
        """What to do with a query: forward it, answer it locally (the wire), or drop it
        (None). Denials are recorded here; a query to forward over its agent's share of
        pending queries is dropped first, as an overloaded resolver would (the agent asks
        again), so a Report gateway never records one as let through that was not.
        `key`: agent_key(agent)."""
        state = self.state
        if state.policy is None:
            return None
        verdict = on_query(state.policy, agent, wire)
        if isinstance(verdict, Drop):
            log.debug("dropped query", extra=fields(src=src[0], why=verdict.why))
            return None
        if isinstance(verdict, Answer):
            state.record_dns_denied(
                verdict.decision,
                agent=agent,
                query=verdict.query.name,
                qtype=verdict.query.rdtype,
                src=src,
            )
            return verdict.wire
        if self.closed or self.udp.full(key):
            log.debug("dropped query", extra=fields(src=src[0], why="too many pending"))
            return None
        self._record_reported(verdict, agent, src)
        return verdict

    async def handle(
        self, wire: bytes, src: tuple[str, int], agent: Agent | None, tcp: bool
    ) -> bytes | None:
        """The answer for the agent, or None to send nothing."""
        key = agent_key(agent)
        verdict = self._verdict(wire, src, agent, key)
        if not isinstance(verdict, Forward):
            return verdict
        state = self.state
        self.udp.hold(key)
        try:
            answer = await exchange(
                wire, state.resolvers, state.config.dns_timeout, tcp, self.udp.exchange
            )
        finally:
            self.udp.release(key)
        if answer is None:
            return None
        self._bind(key, verdict.query, answer, verdict.echo)
        return answer

    def handle_udp(
        self,
        wire: bytes,
        src: tuple[str, int],
        agent: Agent | None,
        reply: Callable[[bytes], None],
    ) -> None:
        """`handle` for a query over UDP, as callbacks: `reply` gets the answer, if any.

        The first resolver is asked over the shared socket with no task in between;
        only a truncated answer or none at all goes on as `exchange` does (TCP, then
        the next resolvers) in a task.
        """
        if self.closed:
            return
        key = agent_key(agent)  # once per query: the share, the snoop and the slow path
        verdict = self._verdict(wire, src, agent, key)
        if not isinstance(verdict, Forward):
            if verdict is not None:
                reply(verdict)
            return
        state = self.state
        servers, timeout = state.resolvers, state.config.dns_timeout
        if not servers:
            return
        query, echo = verdict.query, verdict.echo

        def answered(answer: bytes | None) -> None:
            if answer is None or _truncated(answer):
                self._slow(wire, servers, timeout, answer, key, query, echo, reply)
            else:
                self._bind(key, query, answer, echo)
                reply(answer)

        # parse_query read the query (verdict): one question and nothing else ends with it.
        asked = len(wire) if dns_wire.lone_counts(wire) else None
        if self.udp.send(wire, servers[0], timeout, answered, key, asked) is None:
            self._slow(wire, servers, timeout, None, key, query, echo, reply)

    def _slow(self, wire, servers, timeout, udp_answer, key, query, echo, reply) -> None:
        """Go on in a task, which counts against the agent's share (`key`) until it ends
        (its UDP queries to the next resolvers do not count again)."""
        if self.closed:
            return

        async def rest() -> None:
            # exchange() from its TCP step for the first resolver on.
            answer = await _tcp_exchange(wire, servers[0], timeout) or udp_answer
            if answer is None:
                answer = await exchange(wire, servers[1:], timeout, udp=self.udp.exchange)
            if answer is not None:
                self._bind(key, query, answer, echo)
                reply(answer)

        def done(task: asyncio.Task) -> None:
            self.tasks.discard(task)
            self.udp.release(key)

        self.udp.hold(key)
        task = asyncio.get_running_loop().create_task(rest())
        self.tasks.add(task)
        task.add_done_callback(done)

    def close(self) -> None:
        self.closed = True
        for task in self.tasks:
            task.cancel()
        self.udp.close()

    def _record_reported(self, verdict: Forward, agent: Agent | None, src) -> None:
        if verdict.reported is not None:
            self.state.record_dns_denied(
                verdict.reported,
                agent=agent,
                query=verdict.query.name,
                qtype=verdict.query.rdtype,
                src=src,
                enforced=False,
            )

    def _bind(self, key: str | None, query: DnsQuery, answer: bytes, echo: Echo | None) -> list:
        """Bind what `answer` proves for the agent of agent_key `key` that asked `query`
        (`echo`: the query's, when it has the usual shape)."""
        if key is None:
            return []
        bindings = bindings_for(query, echo, answer)
        self.state.bindings.add_snooped(key, bindings, time.monotonic())
        return bindings

    async def resolve(
        self, agent: Agent | None, name: str, src: tuple[str, int] = ("", 0)
    ) -> tuple[list[str], Answer | None]:
        """Explicit mode: resolve `name` for `agent` (the proxy client at `src`) through
        the same policy and snoop.

        Returns the bound addresses (IPv4 first) and, when the query was answered
        locally (filtered), that Answer.
        """
        key = agent_key(agent)
        if self.udp.full(key):  # its share is taken: as if the resolvers were silent
            log.debug("unresolved", extra=fields(src=src[0], why="too many pending"))
            return [], None
        self.udp.hold(key)
        try:
            return await self._resolve(agent, key, name, src)
        finally:
            self.udp.release(key)

    async def _resolve(
        self, agent: Agent | None, key: str | None, name: str, src: tuple[str, int]
    ) -> tuple[list[str], Answer | None]:
        addresses: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            query = dns.message.make_query(name, rdtype)
            query.flags |= dns.flags.RD
            wire = query.to_wire()
            verdict = on_query(self.state.policy, agent, wire)
            if isinstance(verdict, Answer):
                return [], verdict
            if not isinstance(verdict, Forward):
                continue
            self._record_reported(verdict, agent, src)
            timeout = self.state.config.dns_timeout
            answer = await exchange(wire, self.state.resolvers, timeout, udp=self.udp.exchange)
            if answer is None:
                continue
            for binding in self._bind(key, verdict.query, answer, verdict.echo):
                if binding.ip not in addresses:
                    addresses.append(binding.ip)
        return addresses, None


class DnsTcp(asyncio.Protocol):
    """TCP/53 (RFC 1035 4.2.2 framing): each message answered in order of arrival."""

    def __init__(self, state: DialerState, forwarder: Forwarder) -> None:
        self.state = state
        self.forwarder = forwarder
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer is None:  # the client reset the connection while it waited for its turn
            transport.abort()
            return
        self.src = (peer[0], peer[1])
        self.agent = self.state.agent_for_source(peer[0]) if self.state.policy else None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            length = struct.unpack_from("!H", self.buffer)[0]
            if len(self.buffer) < 2 + length:
                break
            wire, self.buffer = self.buffer[2 : 2 + length], self.buffer[2 + length :]
            task = asyncio.get_running_loop().create_task(self._answer(wire))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _answer(self, wire: bytes) -> None:
        try:
            answer = await self.forwarder.handle(wire, self.src, self.agent, tcp=True)
        except Exception:
            log.exception("dns over tcp failed")
            answer = None
        if answer is not None and self.transport and not self.transport.is_closing():
            self.transport.write(struct.pack("!H", len(answer)) + answer)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()
