"""Accepting a listener's connections fairly between agents.

asyncio accepts as many connections as the listen backlog on one readiness event and
starts them all in the next loop iteration.  Under a flood of thousands from one agent
that iteration lasts seconds (each connection is decided and recorded in Python), and
every other agent waits behind it: its new connections, and the relays of the ones
already running, whose readiness the loop does not look at meanwhile.

Here the listener is drained as connections come (accept(2) is cheap), the accepted
sockets wait in one queue per source address, and each loop iteration starts at most
`per_turn` of them, one from each agent in turn.  So an agent's connection waits behind
at most a turn or two of the others', and the loop gets back to its I/O between turns.
(A readiness while none waits starts its first connection at once: there is nobody
to take turns with yet.)  Nothing is dropped here: what is not accepted yet
(descriptors exhausted, the budget held) stays in the kernel's accept queue.

The turns hold while the dialer decides faster than connections come.  A flood faster
than that for longer fills its listener's share of the dialer's `PendingBudget` (one for
all its listeners); that listener is then left to the kernel's queue while the others
are still taken from: `source_steering`
puts each agent's connections in one listener of a group, so the flooder's queue is not
its neighbours' (agents whose sources share a listener share its fate).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import resource
import socket
from collections import OrderedDict, deque
from collections.abc import Callable

from clrk_runtime.logs import fields
from clrk_worker_dialer.sockopts import reset_on_close

log = logging.getLogger("clrk.dialer")

PER_TURN = 4  # connections started per loop iteration: a millisecond or two of deciding
MAX_PENDING = 16384  # accepted, not yet started; beyond it the kernel's queue holds them
ACCEPT_BATCH = 1024  # accept(2)s per readiness: the loop polls its I/O between batches
RETRY_DELAY = 0.1  # after running out of descriptors: the ones held are freed meanwhile
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def default_max_pending() -> int:
    """MAX_PENDING, or a quarter of the open files limit when lower: each held connection
    is a descriptor, and the relays need theirs (six each)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_PENDING
    return max(1, min(MAX_PENDING, soft // 4))


class PendingBudget:
    """What all of a dialer's acceptors may hold together (`default_max_pending`), split
    evenly between their listening sockets.  One budget, not one per listener: a dialer
    has a group of sockets per transparent address and DNS address, and the proxies',
    and floods into each would otherwise together hold several times the descriptors
    meant, until accept(2) runs out of them and pauses every listener."""

    def __init__(self, total: int | None = None) -> None:
        self.total = default_max_pending() if total is None else total
        self.sockets = 0

    @property
    def share(self) -> int:
        """Each socket's share; it shrinks as listeners are added (a socket holding
        more than its share then takes nothing until it holds less)."""
        return max(1, self.total // max(1, self.sockets))


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    return protocol


class _Listener:
    """One listening socket of the group and what it holds: accepted, not started."""

    __slots__ = ("pending", "port", "reading", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]  # every connection it accepts has it
        self.pending = 0
        self.reading = False


class FairAcceptor:
    """Serves listening sockets (one, or a group steered by source) with `factory`'s
    protocols, agents taking turns.  Each socket holds its share of the budget: a
    flood that fills its share leaves the flooder's socket to the kernel's queue while
    the others are still taken from."""

    def __init__(
        self,
        socks: socket.socket | list[socket.socket],
        factory: Callable[[], asyncio.Protocol] | None,
        *,
        admit: Callable[[socket.socket, int], asyncio.Protocol | None] | None = None,
        per_turn: int = PER_TURN,
        max_pending: int | None = None,
        budget: PendingBudget | None = None,
    ) -> None:
        """`admit(conn, port)` (`port`: the listening socket's), when given, is asked in
        the connection's turn instead of `factory`: the protocol to serve it with, or
        None when it has dealt with the connection itself (the transparent dialer
        refuses there, before any transport and its loop iterations exist).  `budget`
        is shared with the dialer's other acceptors; without one, this acceptor has its
        own of `max_pending`."""
        self.loop = asyncio.get_running_loop()
        socks = [socks] if isinstance(socks, socket.socket) else socks
        self.listeners = [_Listener(sock) for sock in socks]
        self.factory = factory
        self.admit = admit
        self.per_turn = per_turn
        self.budget = PendingBudget(max_pending) if budget is None else budget
        self.budget.sockets += len(socks)
        self._queues: OrderedDict[str, deque[tuple[socket.socket, _Listener]]] = OrderedDict()
        self._turn: asyncio.Handle | None = None
        self._went: str | None = None  # a source started at once, since the last turn
        self._retry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    @property
    def share(self) -> int:
        return self.budget.share

    def start(self) -> None:
        for listener in self.listeners:
            self._read(listener)

    def _read(self, listener: _Listener) -> None:
        if not listener.reading and not self._closed:
            listener.reading = True
            self.loop.add_reader(listener.sock.fileno(), self._ready, listener)

    def _ready(self, listener: _Listener, start_first: bool = True) -> None:
        """A readiness: drain the listener, its first connection started at once when
        nothing waits (and `start_first`; the tests drain without starting anything).

        Nobody is passed over by starting it now rather than in a turn one loop
        iteration later (that iteration, its poll of the loop's I/O and the rest of
        the drain were a third of a lone denial's time in the dialer), and its source
        then counts as having had its turn: the sources drained after it, from this
        listener or others ready in the same iteration, go first in the next turn."""
        first_now = start_first and self._turn is None and not self._queues
        self._drain(listener, first_now=first_now)
        if self._queues and self._turn is None:
            self._turn = self.loop.call_soon(self._start_some)

    def _pause(self, listener: _Listener) -> None:
        if listener.reading:
            listener.reading = False
            self.loop.remove_reader(listener.sock.fileno())

    def _drain(self, listener: _Listener, first_now: bool = False) -> None:
        """Take what the listener holds, up to its share; `first_now`: start the first
        at once (nothing waits)."""
        for _ in range(min(ACCEPT_BATCH, self.share - listener.pending)):
            try:
                conn, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue  # the agent gave up while it waited in the queue
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    # Not raised: the connections already queued still get their turn,
                    # and the next readiness tries again.
                    log.warning("accept failed", extra=fields(error=str(exc)))
                    break
                # The kernel keeps the rest queued; starting the held ones frees some.
                log.warning("cannot accept a connection", extra=fields(error=str(exc)))
                for each in self.listeners:
                    self._pause(each)
                if self._retry is None:
                    self._retry = self.loop.call_later(RETRY_DELAY, self._resume)
                break
            # Left blocking: a refusal never waits on it, and whoever keeps it (a
            # transport, the splice relay) makes it non-blocking, one ioctl(2) less.
            if first_now:
                first_now = False
                self._went = peer[0]
                self._start(conn, listener)
                continue
            self._queues.setdefault(peer[0], deque()).append((conn, listener))
            listener.pending += 1
        if listener.pending >= self.share:
            self._pause(listener)
        if self._went is not None and self._went in self._queues:
            self._queues.move_to_end(self._went)  # it had its turn: behind the others

    def _resume(self) -> None:
        self._retry = None
        for listener in self.listeners:
            if listener.pending < self.share:
                self._read(listener)

    def _start_some(self) -> None:
        """One turn: up to per_turn connections, one per agent round-robin; the rest in
        the next iteration, after the loop has polled its I/O."""
        self._turn = self._went = None
        for _ in range(self.per_turn):
            if not self._queues:
                break
            source, queue = next(iter(self._queues.items()))
            conn, listener = queue.popleft()
            if queue:
                self._queues.move_to_end(source)
            else:
                del self._queues[source]
            listener.pending -= 1
            if self._retry is None and listener.pending <= self.share // 2:
                self._read(listener)  # held to its share, then half started: go on
            self._start(conn, listener)
        if self._queues:
            self._turn = self.loop.call_soon(self._start_some)

    def _start(self, conn: socket.socket, listener: _Listener) -> None:
        factory = self.factory
        if self.admit is not None:
            protocol = self._admitted(conn, listener.port)
            if protocol is None:
                return
            factory = functools.partial(_same, protocol)
        task = self.loop.create_task(self._serve(conn, factory))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admitted(self, conn: socket.socket, port: int) -> asyncio.Protocol | None:
        try:
            return self.admit(conn, port)
        except Exception:  # fail closed: a connection nothing decided is reset
            # (only a backstop: the transparent dialer's admit records and resets its
            # own failures, so each refusal the agent sees has its record)
            log.exception("cannot admit a connection")
            with contextlib.suppress(OSError):
                reset_on_close(conn)
            conn.close()
            return None

    async def _serve(self, conn: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        try:
            await self.loop.connect_accepted_socket(factory, conn)
        except OSError as exc:
            log.warning("cannot serve a connection", extra=fields(error=str(exc)))
            conn.close()

    def close(self) -> None:
        """Stop listening; connections accepted but not started yet are reset."""
        if self._closed:
            return
        self._closed = True
        self.budget.sockets -= len(self.listeners)
        for handle in (self._turn, self._retry):
            if handle is not None:
                handle.cancel()
        for queue in self._queues.values():
            for conn, _listener in queue:
                with contextlib.suppress(OSError):
                    reset_on_close(conn)
                conn.close()
        self._queues.clear()
        for listener in self.listeners:
            self._pause(listener)
            listener.pending = 0
            listener.sock.close()

    async def wait_closed(self) -> None:
        """Connections being started finish starting (their protocols then own them)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))
