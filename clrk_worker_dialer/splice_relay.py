"""Relaying an allowed connection's bytes both ways with splice(2): socket -> pipe ->
socket, so the payload never enters Python (nor user space) on its way through.

Each direction is a `Pump` driven by readiness callbacks on non-blocking descriptors
(`Readiness`: the relays' own epoll set, one reader of the loop).  Back-pressure is the
pipe itself: a pump stops reading its source while its pipe holds bytes the destination
would not take.  Half-close is carried over (EOF on one side becomes shutdown(SHUT_WR)
on the other, the other direction keeps going);
the agent's reaches the next hop only once it has read what came before, or answered, or
after `FIN_HOLD_MAX` (Envoy drops a connection whose FIN is there before it has read the
PROXY header).
Any error on either side resets both.  (Ending only the failed direction, to let an
answer the next hop sent before closing mid-upload through, needs the abandoned side
drained and a lingering close, or it deadlocks and truncates silently: not done.)

Pipes start at the kernel's default size, grow to `BULK_PIPE_SIZE` when a read fills
one and shrink back when the traffic is small again: only connections moving bulk hold
large pipes, which count against the user's pipe quota (fs.pipe-user-pages-soft) for a
dialer without CAP_SYS_RESOURCE.  A relay that ends cleanly gives its pipes, empty and at
their first size, to a `PipePool` (when it was given one) for the next connection: a
short connection's pipes were 8 of its ~37 system calls.  A pipe that may hold a byte
(the relay was reset, or a count disagrees) is closed, never handed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import os
import select
import socket
import weakref
from collections.abc import Callable

from clrk.nexthops import NextHop
from clrk_worker_dialer.peer_unread import PeerUnread

BULK_PIPE_SIZE = 1 << 20  # the default fs.pipe-max-size: the most an unprivileged call gets
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
SHRINK_AFTER_SMALL_READS = 16
# A held FIN (`Pump._hold_fin`) looks again after FIN_RECHECK_FIRST seconds, then twice as
# long each time up to FIN_RECHECK_MAX (how late the FIN may reach a next hop that waited
# for it to answer), and goes anyway after FIN_HOLD_MAX: Envoy has read the header long
# before unless it is overloaded, and its tcp_proxy reads nothing more until its upstream
# connects (or, when that upstream stops reading, ever): an agent must not keep a FIN,
# and its looks, waiting that long.
FIN_RECHECK_FIRST = 0.001
FIN_RECHECK_MAX = 0.02
FIN_HOLD_MAX = 2.0


async def connect(loop: asyncio.AbstractEventLoop, hop: NextHop) -> socket.socket:
    """A connected non-blocking socket to the next hop: a Unix socket path, or TCP (no
    executor round trip for an IP literal; a name's addresses tried in turn)."""
    if isinstance(hop, str):
        return await _connect_unix(hop)
    host, port = hop
    try:
        version = ipaddress.ip_address(host).version
        targets = [(socket.AF_INET6 if version == 6 else socket.AF_INET, hop)]
    except ValueError:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        targets = [(info[0], info[4]) for info in infos]
    error: OSError | None = None
    for family, address in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # As asyncio does for its transports: the relay forwards what the agent
            # wrote when it wrote it; Nagle would hold a small request back for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error or OSError(f"{host} has no address")


def connect_unix_now(path: str) -> socket.socket | None:
    """A non-blocking Unix stream connect, which never waits: it completes or fails at
    once.  None when the listener's accept queue is full (EAGAIN, where TCP would retry
    its SYN; the socket would then look writable to a loop that waits for the connect to
    complete, though it is not connected)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        # A Unix socket's send buffer is all it holds in flight (the default ~208 KB):
        # as large as a bulk pipe, one splice empties the pipe instead of a few with
        # EAGAIN and epoll changes between them (capped by net.core.wmem_max).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BULK_PIPE_SIZE)
        err = sock.connect_ex(path)
    except BaseException:
        sock.close()
        raise
    if err == 0:
        return sock
    sock.close()
    if err == errno.EAGAIN:
        return None
    raise OSError(err, os.strerror(err), path)


async def _connect_unix(path: str) -> socket.socket:
    """`connect_unix_now`, retried while the accept queue is full, backing off; the
    caller bounds the whole attempt with its connect timeout."""
    delay = 0.001
    while (sock := connect_unix_now(path)) is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return sock


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


class Pipe:
    """One non-blocking pipe, sized as its traffic needs (see the module docstring)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.small = self.capacity = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)
        self.may_grow = True
        self.small_reads = 0  # in a row

    def after_read(self, n: int) -> None:
        """Grow after a read that filled the pipe (unless the quota refused it once)."""
        if n >= self.capacity and self.capacity < BULK_PIPE_SIZE and self.may_grow:
            try:
                self.capacity = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, BULK_PIPE_SIZE)
            except OSError:  # over the user's pipe quota: carry on with the pipe we have
                self.may_grow = False

    def after_drain(self, last_read: int) -> None:
        """Shrink an empty large pipe once reads have stayed small for a while: give the
        quota back.  (A bulk transfer has small reads too, whenever the relay catches up
        with the sender; shrinking at the first one would resize the pipe over and over.)"""
        self.small_reads = self.small_reads + 1 if last_read < self.small else 0
        if self.capacity > self.small and self.small_reads >= SHRINK_AFTER_SMALL_READS:
            with contextlib.suppress(OSError):
                self.capacity = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, self.small)

    def close(self) -> None:
        for fd in (self.r, self.w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.r = self.w = -1


def open_pipes() -> tuple[Pipe, Pipe]:
    """A relay's two pipes, or none (out of descriptors or of the pipe quota): allocate
    them before promising a connection anything."""
    first = Pipe()
    try:
        return first, Pipe()
    except BaseException:
        first.close()
        raise


class PipePool:
    """Empty pipes at their first size that ended relays gave back, at most `keep`
    (each holds two descriptors and a share of the pipe quota while it waits)."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._free: list[Pipe] = []
        self._closed = False

    def pipes(self) -> tuple[Pipe, Pipe]:
        """Two pipes for a relay, kept ones first (as `open_pipes`: none when they
        cannot be had)."""
        free = self._free
        if len(free) >= 2:
            return free.pop(), free.pop()
        if free:
            first = free.pop()
            try:
                return first, Pipe()
            except BaseException:
                first.close()
                raise
        return open_pipes()

    def give(self, pipe: Pipe) -> None:
        """Keep `pipe`, which its pump emptied, for the next relay; or close it (no
        room, or grown for bulk, or the pool closed: a relay may end after the dialer's
        stop closed it)."""
        keep = not self._closed and len(self._free) < self.keep
        if keep and pipe.capacity == pipe.small and pipe.r >= 0:
            pipe.small_reads = 0
            pipe.may_grow = True
            self._free.append(pipe)
        else:
            pipe.close()

    def close(self) -> None:
        self._closed = True
        for pipe in self._free:
            pipe.close()
        self._free.clear()


def _nothing() -> None:
    pass


class Readiness:
    """The relays' descriptors in an epoll set of their own, which the loop watches as
    one reader.  A relay's sockets are (un)watched about four times per connection:
    here each is one epoll_ctl, without the handle, key and lookups asyncio's
    add_reader and remove_reader make for each, nor its ready queue per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # (weakly: only the loop keeps this, see `readiness`)
        self.loop = weakref.ref(loop)
        self.epoll = select.epoll()
        self.watched: dict[int, tuple[int, Callable[[], None], Callable[[], None]]] = {}
        loop.add_reader(self.epoll.fileno(), self._ready)

    def watch(
        self, fd: int, mask: int, on_read: Callable[[], None], on_write: Callable[[], None]
    ) -> None:
        """Call `on_read` while `fd` is readable and `on_write` while it is writable, as
        `mask` (EPOLLIN, EPOLLOUT, both, 0: neither) asks."""
        watched = self.watched
        old = watched.get(fd)
        if mask:
            if old is None:
                self.epoll.register(fd, mask)
            elif old[0] != mask:
                self.epoll.modify(fd, mask)
            watched[fd] = (mask, on_read, on_write)
        elif old is not None:
            del watched[fd]
            with contextlib.suppress(OSError):  # as asyncio's: the fd was closed meanwhile
                self.epoll.unregister(fd)

    def _ready(self) -> None:
        watched = self.watched
        for fd, events in self.epoll.poll(0):
            entry = watched.get(fd)
            if entry is None:
                continue  # unwatched by a callback before it
            # (an fd closed and reused by a relay a callback started in this same pass
            # would take the old event; none does: relays start from the loop, and each
            # callback tries its I/O rather than trusting the event)
            try:
                if entry[0] & _READ and events & _READ_EVENTS:
                    entry[1]()
                    entry = watched.get(fd)  # what that callback left
                if entry is not None and entry[0] & _WRITE and events & _WRITE_EVENTS:
                    entry[2]()
            except Exception as exc:  # as the loop would: reported, the others still run
                loop = self.loop()
                if loop is not None:
                    loop.call_exception_handler(
                        {"message": "splice relay callback failed", "exception": exc}
                    )


_READ, _WRITE = select.EPOLLIN, select.EPOLLOUT
# (as asyncio's selector: a hang-up or error wakes both a reader and a writer)
_READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_ATTRIBUTE = "_clrk_splice_readiness"


def readiness(loop: asyncio.AbstractEventLoop) -> Readiness:
    """The loop's `Readiness`, made at its first relay.  Kept on the loop itself: a
    relay still running when its loop ends holds the loop (through its callbacks), so
    a table outside the loop would keep all three, sockets and epoll set included, for
    the process's life; as a cycle through the loop they go with it."""
    found = getattr(loop, _ATTRIBUTE, None)
    if found is None:
        found = Readiness(loop)
        setattr(loop, _ATTRIBUTE, found)
    return found


class Pump:
    """One direction: `src` -> pipe -> `dst`, `head` bytes first.  With `fin_after_read`,
    `src`'s EOF reaches `dst` only once `dst`'s peer has read all that went before it
    or has sent something, or after FIN_HOLD_MAX (see `peer_unread`: Envoy drops a
    connection whose FIN comes before it has read the PROXY header, as an agent that
    half-closes right after its request makes it)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: socket.socket,
        dst: socket.socket,
        head: bytes,
        pipe: Pipe,
        on_done: Callable[[], None],
        on_error: Callable[[OSError], None],
        fin_after_read: bool = False,
    ) -> None:
        self.loop = loop
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.head = memoryview(head) if head else None
        self.pipe = pipe
        self.on_done, self.on_error = on_done, on_error
        self.in_pipe = 0  # bytes spliced into the pipe, not yet out of it
        self.last_read = 0
        self.eof = False
        self.done = False  # EOF passed on
        self.moved = 0  # bytes delivered to dst, head included
        self.got = False  # a byte came from src
        self.reading = self.writing = False
        self.partner: Pump | None = None  # the other direction
        self.fin_after_read = fin_after_read
        self.fin_recheck = FIN_RECHECK_FIRST
        self.fin_deadline = 0.0  # set when the FIN is first held
        self.fin_timer: asyncio.Handle | None = None
        self.peer: PeerUnread | None = None  # `dst`'s, once a FIN is held
        self.readiness = readiness(loop)

    def start(self) -> None:
        self._flush()

    def stop(self, pool: PipePool | None = None) -> None:
        """Unhook from the loop and close the pipe, or give it to `pool` when it is
        certainly empty (EOF passed on: everything read was written); the sockets
        belong to the relay."""
        self._read(False)
        self._write(False)
        if self.fin_timer is not None:
            self.fin_timer.cancel()
            self.fin_timer = None
        if pool is not None and self.done and not self.in_pipe:
            pool.give(self.pipe)
        else:
            self.pipe.close()

    def _read(self, on: bool) -> None:
        if on != self.reading:
            self.reading = on
            self._watch_src()

    def _write(self, on: bool) -> None:
        if on != self.writing:
            self.writing = on
            partner = self.partner
            if partner is not None:
                partner._watch_src()
            else:
                self.readiness.watch(
                    self.dst_fd, select.EPOLLOUT if on else 0, _nothing, self._flush
                )

    def _watch_src(self) -> None:
        """`src` is read by this pump and written by the other: what both wait for."""
        partner = self.partner
        writing = partner is not None and partner.writing
        mask = (select.EPOLLIN if self.reading else 0) | (select.EPOLLOUT if writing else 0)
        self.readiness.watch(
            self.src_fd, mask, self._readable, partner._flush if partner else _nothing
        )

    def _readable(self) -> None:
        if self._fill():
            self._flush()

    def _fill(self) -> bool:
        """One splice from `src` into the pipe: False when nothing came (or it failed:
        the relay is reset then)."""
        pipe = self.pipe
        try:
            n = os.splice(self.src_fd, pipe.w, pipe.capacity, flags=SPLICE_FLAGS)
        except BlockingIOError:
            return False
        except OSError as exc:
            self.on_error(exc)
            return False
        if n == 0:
            self.eof = True
            self._answered()
        else:
            if not self.got:
                self.got = True
                self._answered()
            pipe.after_read(n)
        self.last_read = n
        self.in_pipe += n
        return True

    def _flush(self) -> None:
        try:
            while self.head is not None:
                sent = self.dst.send(self.head)
                self.moved += sent
                self.head = self.head[sent:] or None
            while self.in_pipe:
                n = os.splice(self.pipe.r, self.dst_fd, self.in_pipe, flags=SPLICE_FLAGS)
                self.in_pipe -= n
                self.moved += n
        except BlockingIOError:
            self._read(False)
            self._write(True)
            return
        except OSError as exc:
            self.on_error(exc)
            return
        self._write(False)
        self.pipe.after_drain(self.last_read)
        if not self.eof:
            self._read(True)
            return
        self._read(False)
        partner = self.partner
        if partner is None or not partner.done:
            # (When the other direction is done too, the relay closes both sockets now,
            # and close(2) sends the same FIN: nothing is left unread on either.  The
            # next hop's EOF also shows it had taken the connection: no FIN to hold.)
            if self._hold_fin():
                return
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)
        self.done = True
        self.on_done()

    def _answered(self) -> None:
        """`src` sent its first byte, or its EOF: it took the connection, so the other
        direction's held FIN goes now."""
        partner = self.partner
        if partner is not None and partner.fin_timer is not None:
            partner.fin_timer.cancel()
            partner.fin_timer = self.loop.call_soon(partner._flush)

    def _hold_fin(self) -> bool:
        """True (and a look again later) while `dst`'s peer has not read all it was sent
        and has not answered (an answer shows it took the connection), for at most
        FIN_HOLD_MAX."""
        self.fin_timer = None
        if not self.fin_after_read or (self.partner is not None and self.partner.got):
            return False
        now = self.loop.time()
        if not self.fin_deadline:
            self.fin_deadline = now + FIN_HOLD_MAX
        elif now >= self.fin_deadline:
            return False
        if self.peer is None:
            self.peer = PeerUnread(self.dst)
        try:
            left = self.peer.left()
        except OSError:  # not connected any more: nothing to wait for
            return False
        if not left:
            return False
        self.fin_timer = self.loop.call_later(self.fin_recheck, self._flush)
        self.fin_recheck = min(self.fin_recheck * 2, FIN_RECHECK_MAX)
        return True


class SpliceRelay:
    """Both directions of one connection; closes both sockets when both are done."""

    def __init__(
        self,
        agent: socket.socket,
        upstream: socket.socket,
        *,
        to_upstream: bytes = b"",
        to_agent: bytes = b"",
        pipes: tuple[Pipe, Pipe] | None = None,
        pool: PipePool | None = None,
        on_close: Callable[[SpliceRelay], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """`pool`: where the pipes go when the relay ends cleanly (else they are closed);
        `loop`: the running loop, when the caller has it at hand (asking costs a
        getpid(2))."""
        self.loop = asyncio.get_running_loop() if loop is None else loop
        self.pool = pool
        self.agent, self.upstream = agent, upstream
        for sock in (agent, upstream):
            if sock.getblocking():  # no system call for one that is not
                sock.setblocking(False)
        self.on_close = on_close
        self.closed = False
        self.error: OSError | None = None
        out_pipe, in_pipe = pipes if pipes is not None else open_pipes()
        done, failed = self._done, self._failed
        self.outbound = Pump(
            self.loop, agent, upstream, to_upstream, out_pipe, done, failed, fin_after_read=True
        )
        self.inbound = Pump(self.loop, upstream, agent, to_agent, in_pipe, done, failed)
        self.outbound.partner, self.inbound.partner = self.inbound, self.outbound

    def start(self) -> None:
        """The agent has usually sent its first bytes by now (the dialer accepted after
        the handshake): they are read at once, to follow the head in the same turn rather
        than a loop iteration later, in a second wake-up of the next hop."""
        outbound = self.outbound
        outbound._fill()
        if not self.closed:
            outbound.start()
        if not self.closed:
            self.inbound.start()

    def _done(self) -> None:
        if self.outbound.done and self.inbound.done:
            self.close()

    def _failed(self, exc: OSError) -> None:
        self.error = exc
        self.close(reset=True)

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        pool = None if reset else self.pool
        self.outbound.stop(pool)
        self.inbound.stop(pool)
        for sock in (self.agent, self.upstream):
            if reset:
                _reset(sock)
            else:
                sock.close()
        if self.on_close is not None:
            self.on_close(self)
