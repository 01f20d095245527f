"""Relaying an allowed connection's bytes both ways with splice(2): socket -> pipe ->
socket, so the payload never enters Python (nor user space) on its way through.

Each direction is a `Pump` driven by the loop's readiness callbacks on non-blocking
descriptors.  Back-pressure is the pipe itself: a pump stops reading its source while
its pipe holds bytes the destination would not take.  Half-close is carried over (EOF
on one side becomes shutdown(SHUT_WR) on the other, the other direction keeps going);
an error on either side resets both, as the peer's own reset would have.

Pipes start at the kernel's default size and grow to `BULK_PIPE_SIZE` only when a read
fills one: an idle or chatty connection does not hold a large pipe, which counts against
the user's pipe quota (fs.pipe-user-pages-soft) for a dialer without CAP_SYS_RESOURCE.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import socket
from collections.abc import Callable

from clrk.nexthops import NextHop

BULK_PIPE_SIZE = 1 << 20  # the default fs.pipe-max-size: the most an unprivileged call gets
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


async def connect(loop: asyncio.AbstractEventLoop, hop: NextHop) -> socket.socket:
    """A connected non-blocking socket to the next hop: a Unix socket path, or TCP (no
    executor round trip for an IP literal)."""
    if isinstance(hop, str):
        family, address = socket.AF_UNIX, hop
    else:
        host, port = hop
        try:
            version = ipaddress.ip_address(host).version
            family, address = (socket.AF_INET6 if version == 6 else socket.AF_INET), hop
        except ValueError:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, address = infos[0][0], infos[0][4]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if family != socket.AF_UNIX:
            # As asyncio does for its transports: the relay forwards what the agent
            # wrote when it wrote it; Nagle would hold a small request back for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


class Pump:
    """One direction: `src` -> pipe -> `dst`, `head` bytes first."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: socket.socket,
        dst: socket.socket,
        head: bytes,
        on_done: Callable[[], None],
        on_error: Callable[[OSError], None],
    ) -> None:
        self.loop = loop
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.head = memoryview(head) if head else None
        self.on_done, self.on_error = on_done, on_error
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pipe_size = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)
        self.in_pipe = 0  # bytes spliced into the pipe, not yet out of it
        self.eof = False
        self.done = False
        self.moved = 0  # bytes delivered to dst, head included
        self.reading = self.writing = False

    def start(self) -> None:
        self._flush()

    def stop(self) -> None:
        """Unhook from the loop and close the pipe; the sockets belong to the relay."""
        self._read(False)
        self._write(False)
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipe_r = self.pipe_w = -1

    def _read(self, on: bool) -> None:
        if on != self.reading:
            self.reading = on
            if on:
                self.loop.add_reader(self.src_fd, self._readable)
            else:
                self.loop.remove_reader(self.src_fd)

    def _write(self, on: bool) -> None:
        if on != self.writing:
            self.writing = on
            if on:
                self.loop.add_writer(self.dst_fd, self._flush)
            else:
                self.loop.remove_writer(self.dst_fd)

    def _readable(self) -> None:
        try:
            n = os.splice(self.src_fd, self.pipe_w, self.pipe_size, flags=SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self.on_error(exc)
            return
        if n == 0:
            self.eof = True
        elif n >= self.pipe_size and self.pipe_size < BULK_PIPE_SIZE:
            self._grow()
        self.in_pipe += n
        self._flush()

    def _grow(self) -> None:
        try:
            self.pipe_size = fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, BULK_PIPE_SIZE)
        except OSError:  # over the user's pipe quota: carry on with the pipe we have
            self.pipe_size = BULK_PIPE_SIZE  # and do not ask again

    def _flush(self) -> None:
        try:
            while self.head is not None:
                sent = self.dst.send(self.head)
                self.moved += sent
                self.head = self.head[sent:] or None
            while self.in_pipe:
                n = os.splice(self.pipe_r, self.dst_fd, self.in_pipe, flags=SPLICE_FLAGS)
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
        if not self.eof:
            self._read(True)
            return
        self._read(False)
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.done = True
        self.on_done()


class SpliceRelay:
    """Both directions of one connection; closes both sockets when both are done."""

    def __init__(
        self,
        agent: socket.socket,
        upstream: socket.socket,
        *,
        to_upstream: bytes = b"",
        to_agent: bytes = b"",
        on_close: Callable[[SpliceRelay], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.agent, self.upstream = agent, upstream
        for sock in (agent, upstream):
            sock.setblocking(False)
        self.on_close = on_close
        self.closed = False
        self.error: OSError | None = None
        self.outbound = Pump(self.loop, agent, upstream, to_upstream, self._done, self._failed)
        try:
            self.inbound = Pump(self.loop, upstream, agent, to_agent, self._done, self._failed)
        except BaseException:  # no second pipe (EMFILE, pipe quota): give back the first
            self.outbound.stop()
            raise

    def start(self) -> None:
        self.outbound.start()
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
        self.outbound.stop()
        self.inbound.stop()
        for sock in (self.agent, self.upstream):
            if reset:
                _reset(sock)
            else:
                sock.close()
        if self.on_close is not None:
            self.on_close(self)
