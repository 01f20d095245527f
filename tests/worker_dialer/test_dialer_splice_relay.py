"""The splice relay on real loopback sockets: the agent and the next hop are sockets the
test drives from the same event loop as the relay, so every byte really goes through
socket -> pipe -> socket in the kernel.  No mocks, no sleeps that decide an outcome."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import hashlib
import os
import resource
import select
import socket
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk_worker_dialer import splice_relay
from clrk_worker_dialer.splice_relay import (
    BULK_PIPE_SIZE,
    SHRINK_AFTER_SMALL_READS,
    PipePool,
    SpliceRelay,
    connect,
)

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 10.0  # each test's coroutine; pytest-timeout above is the outer safety
LINGER_ZERO = struct.pack("ii", 1, 0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def _no_collection_behind_our_back():
    """Tests here count this process's descriptors.  A collection in the middle of one
    may close sockets an earlier test left in a reference cycle (a whole-suite run once
    counted three fewer than the relay closed), so collect first and hold it off."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class Wiring:
    """agent_peer <-> relay_agent [relay] relay_upstream <-> upstream_peer"""

    agent_peer: socket.socket
    relay_agent: socket.socket
    relay_upstream: socket.socket
    upstream_peer: socket.socket

    def close_peers(self) -> None:
        self.agent_peer.close()
        self.upstream_peer.close()


async def listen_and_connect(hop, listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """`connect()` to `hop` (where `listener` listens): (the connected socket, the accepted)."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    listener.listen()
    with listener:
        ours = await connect(loop, hop)
        theirs, _ = await loop.sock_accept(listener)
    theirs.setblocking(False)
    return ours, theirs


def tcp_listener(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    return sock


def unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


async def wire(upstream: str, tmp_path: Path | None = None) -> Wiring:
    """The agent side is always TCP (it is an accepted connection in the dialer); the
    upstream side is TCP or a Unix socket, as next hops are."""
    agent_listener = tcp_listener()
    relay_agent, agent_peer = await listen_and_connect(
        agent_listener.getsockname()[:2], agent_listener
    )
    if upstream == "unix":
        assert tmp_path is not None
        path = tmp_path / "up.sock"
        relay_upstream, upstream_peer = await listen_and_connect(str(path), unix_listener(path))
    else:
        up_listener = tcp_listener()
        relay_upstream, upstream_peer = await listen_and_connect(
            up_listener.getsockname()[:2], up_listener
        )
    return Wiring(agent_peer, relay_agent, relay_upstream, upstream_peer)


def start(w: Wiring, **kw) -> tuple[SpliceRelay, asyncio.Future]:
    """Start a relay; the future resolves (once: a second call would raise) on close."""
    closed = asyncio.get_running_loop().create_future()
    relay = SpliceRelay(w.relay_agent, w.relay_upstream, on_close=closed.set_result, **kw)
    relay.start()
    return relay, closed


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


async def recv_until_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 18):
        buf += chunk
    return bytes(buf)


async def send_and_finish(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


async def both_ways(w: Wiring, agent_sends, upstream_sends, **heads):
    """Run a relay while both peers send (the coroutines given) and read to EOF; the
    relay and what each peer received, once the relay has closed."""
    relay, closed = start(w, **heads)
    at_upstream, at_agent, _, _ = await asyncio.gather(
        recv_until_eof(w.upstream_peer), recv_until_eof(w.agent_peer), agent_sends, upstream_sends
    )
    assert await closed is relay
    return relay, at_upstream, at_agent


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- bytes both ways ------------------------------------------------------------------


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_megabytes_both_ways_at_once_arrive_intact_and_in_order_after_the_heads(upstream, tmp_path):
    """Both pumps run at the same time on the same two sockets (each socket is one pump's
    source and the other's destination); the heads (the proxy preamble and the tunnel
    reply) must come before anything spliced."""
    up_payload, down_payload = os.urandom(6 << 20), os.urandom(5 << 20)
    to_upstream, to_agent = b"PROXY-PREAMBLE\r\n", b"HTTP/1.1 200 OK\r\n\r\n"

    async def main():
        w = await wire(upstream, tmp_path)
        try:
            return await both_ways(
                w,
                send_and_finish(w.agent_peer, up_payload),
                send_and_finish(w.upstream_peer, down_payload),
                to_upstream=to_upstream,
                to_agent=to_agent,
            )
        finally:
            w.close_peers()

    relay, at_upstream, at_agent = run(main())
    assert at_upstream[: len(to_upstream)] == to_upstream
    assert at_agent[: len(to_agent)] == to_agent
    assert sha(at_upstream[len(to_upstream) :]) == sha(up_payload)
    assert sha(at_agent[len(to_agent) :]) == sha(down_payload)
    assert relay.outbound.moved == len(to_upstream) + len(up_payload)
    assert relay.inbound.moved == len(to_agent) + len(down_payload)
    assert relay.error is None


def test_the_heads_are_sent_even_if_neither_peer_ever_sends_a_byte(tmp_path):
    """A server-speaks-first protocol behind the tunnel: the reply and preamble must not
    wait for agent bytes to wake the relay up."""

    async def main():
        w = await wire("tcp", tmp_path)
        try:
            relay, _ = start(w, to_upstream=b"pre", to_agent=b"reply")
            assert await recv_exactly(w.upstream_peer, 3) == b"pre"
            assert await recv_exactly(w.agent_peer, 5) == b"reply"
            assert not relay.closed
        finally:
            w.close_peers()

    run(main())


# --- half-close -----------------------------------------------------------------------


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
@pytest.mark.parametrize("first", ["agent", "upstream"])
def test_a_half_close_is_carried_over_and_the_other_direction_keeps_going(
    first, upstream, tmp_path
):
    """EOF from one peer becomes a FIN to the other, which may still answer (an HTTP/1.0
    client that shuts down after its request does exactly this).  Only when both
    directions are finished does the relay close both sockets and its two pipes."""

    async def main():
        loop = asyncio.get_running_loop()
        w = await wire(upstream, tmp_path)
        try:
            finisher, other = (
                (w.agent_peer, w.upstream_peer)
                if first == "agent"
                else (w.upstream_peer, w.agent_peer)
            )
            splice_relay.readiness(loop)  # the loop's epoll set: made once, not per relay
            before = open_fds()
            relay, closed = start(w)
            assert open_fds() == before + 4  # a pipe per direction

            await send_and_finish(finisher, b"request")
            assert await recv_until_eof(other) == b"request"  # data, then the FIN
            assert not relay.closed

            await loop.sock_sendall(other, b"still answering")
            assert await recv_exactly(finisher, 15) == b"still answering"
            await loop.sock_sendall(other, b"!")
            assert await recv_exactly(finisher, 1) == b"!"
            assert not relay.closed

            other.shutdown(socket.SHUT_WR)
            assert await recv_until_eof(finisher) == b""
            assert await closed is relay
            assert relay.closed and relay.error is None
            assert w.relay_agent.fileno() == -1 and w.relay_upstream.fileno() == -1
            assert open_fds() == before - 2  # both relay sockets and all pipe ends gone
            assert (relay.outbound.pipe.r, relay.inbound.pipe.w) == (-1, -1)
        finally:
            w.close_peers()

    run(main())


def fin_arrived(sock: socket.socket) -> bool:
    """The peer's FIN is there (EPOLLRDHUP: what Envoy's listener filters watch)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return bool(poller.poll(0))


async def until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


async def fin_held(relay: SpliceRelay) -> None:
    """Until the relay has the agent's EOF and holds it back from the next hop."""
    await until(lambda: relay.outbound.eof)
    assert not relay.outbound.done and relay.outbound.fin_timer is not None


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_an_agents_fin_reaches_the_next_hop_only_once_it_read_all_before_it(upstream, tmp_path):
    """Envoy closes a connection whose FIN is there before its listener filters read the
    PROXY header: an agent that half-closes right after its request would lose it."""

    async def main():
        w = await wire(upstream, tmp_path)
        try:
            relay, closed = start(w, to_upstream=b"header")
            await send_and_finish(w.agent_peer, b"request")
            await until(lambda: relay.outbound.eof)  # the relay has the agent's EOF
            assert not fin_arrived(w.upstream_peer)
            assert await recv_exactly(w.upstream_peer, 13) == b"headerrequest"
            assert await recv_until_eof(w.upstream_peer) == b""  # read all: the FIN came
            await asyncio.get_running_loop().sock_sendall(w.upstream_peer, b"answer")
            assert await recv_exactly(w.agent_peer, 6) == b"answer"
            w.upstream_peer.shutdown(socket.SHUT_WR)
            assert await closed is relay and relay.error is None
        finally:
            w.close_peers()

    run(main())


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_once_the_next_hop_answered_the_agents_fin_goes_at_once(upstream, tmp_path):
    """An answer shows the next hop took the connection: nothing left to wait for."""

    async def main():
        w = await wire(upstream, tmp_path)
        try:
            relay, _ = start(w, to_upstream=b"header")
            await asyncio.get_running_loop().sock_sendall(w.upstream_peer, b"banner")
            assert await recv_exactly(w.agent_peer, 6) == b"banner"
            await send_and_finish(w.agent_peer, b"request")
            await until(lambda: relay.outbound.done)
            assert fin_arrived(w.upstream_peer)  # though it read nothing yet
            assert await recv_until_eof(w.upstream_peer) == b"headerrequest"
        finally:
            w.close_peers()

    run(main())


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_a_next_hop_that_closes_unread_while_the_fin_waits_ends_the_relay(upstream, tmp_path):
    async def main():
        w = await wire(upstream, tmp_path)
        try:
            relay, closed = start(w, to_upstream=b"header")
            await send_and_finish(w.agent_peer, b"request")
            await until(lambda: relay.outbound.eof)
            w.upstream_peer.close()
            assert await closed is relay
            assert relay.outbound.fin_timer is None
            assert [pump.pipe.r for pump in (relay.outbound, relay.inbound)] == [-1, -1]
        finally:
            w.close_peers()

    run(main())


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_a_fin_the_next_hop_leaves_unread_goes_after_the_longest_hold(
    upstream, tmp_path, monkeypatch
):
    """A next hop that reads nothing (Envoy's tcp_proxy until its upstream connects, or
    ever once that upstream stops reading) holds no FIN, and its looks, for long."""
    monkeypatch.setattr(splice_relay, "FIN_HOLD_MAX", 0.05)

    async def main():
        w = await wire(upstream, tmp_path)
        try:
            relay, _ = start(w, to_upstream=b"header")
            await send_and_finish(w.agent_peer, b"request")
            await fin_held(relay)
            await until(lambda: relay.outbound.done)
            assert fin_arrived(w.upstream_peer)
            assert await recv_until_eof(w.upstream_peer) == b"headerrequest"
        finally:
            w.close_peers()

    run(main())


@pytest.mark.parametrize("answer", [b"answer", b""], ids=["data", "eof"])
@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_a_held_fin_goes_as_soon_as_the_next_hop_answers(answer, upstream, tmp_path, monkeypatch):
    """Not at the next look (here an hour away): a server that answers as it reads, or
    closes, shows it took the connection."""
    monkeypatch.setattr(splice_relay, "FIN_RECHECK_FIRST", 3600.0)

    async def main():
        w = await wire(upstream, tmp_path)
        try:
            relay, _ = start(w, to_upstream=b"header")
            await send_and_finish(w.agent_peer, b"request")
            await fin_held(relay)
            if answer:
                await asyncio.get_running_loop().sock_sendall(w.upstream_peer, answer)
                assert await recv_exactly(w.agent_peer, len(answer)) == answer
            else:
                w.upstream_peer.shutdown(socket.SHUT_WR)
                assert await recv_until_eof(w.agent_peer) == b""
            await until(lambda: relay.outbound.done)
            assert fin_arrived(w.upstream_peer)
            assert await recv_until_eof(w.upstream_peer) == b"headerrequest"
        finally:
            w.close_peers()

    run(main())


def test_an_immediate_eof_from_both_peers_closes_the_relay_cleanly(tmp_path):
    """Nothing relayed at all: both EOFs alone finish both pumps."""

    async def main():
        w = await wire("tcp", tmp_path)
        try:
            w.agent_peer.shutdown(socket.SHUT_WR)
            w.upstream_peer.shutdown(socket.SHUT_WR)
            relay, closed = start(w)
            assert await closed is relay
            assert await recv_until_eof(w.agent_peer) == b""
            assert await recv_until_eof(w.upstream_peer) == b""
            assert relay.error is None
            assert (relay.outbound.moved, relay.inbound.moved) == (0, 0)
        finally:
            w.close_peers()

    run(main())


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_what_the_agent_sent_before_the_relay_started_follows_the_head_within_the_start(
    upstream, tmp_path
):
    """Not a loop iteration later, when the next hop may already have woken up for the
    head alone."""

    async def main():
        w = await wire(upstream, tmp_path)
        try:
            w.agent_peer.send(b"first bytes")
            assert select.select([w.relay_agent], [], [], TIMEOUT)[0]  # arrived
            relay, closed = start(w, to_upstream=b"HEAD ")
            # (no await since: what the next hop has now, the start sent)
            assert select.select([w.upstream_peer], [], [], TIMEOUT)[0]
            assert w.upstream_peer.recv(100) == b"HEAD first bytes"
            assert relay.outbound.reading  # and it goes on reading
            w.agent_peer.shutdown(socket.SHUT_WR)
            w.upstream_peer.shutdown(socket.SHUT_WR)
            assert await recv_until_eof(w.upstream_peer) == b""
            assert await closed is relay and relay.error is None
        finally:
            w.close_peers()

    run(main())


# --- the relays' own readiness --------------------------------------------------------


@contextlib.contextmanager
def readiness_and_pairs(loop: asyncio.AbstractEventLoop, count: int):
    """A Readiness of its own on `loop` and `count` socket pairs, all gone afterwards."""
    readiness = splice_relay.Readiness(loop)
    pairs = [socket.socketpair() for _ in range(count)]
    try:
        yield readiness, pairs
    finally:
        loop.remove_reader(readiness.epoll.fileno())
        readiness.epoll.close()
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_a_descriptor_unwatched_by_an_earlier_callback_of_the_same_wake_is_not_called():
    async def main():
        loop = asyncio.get_running_loop()
        called = []
        with readiness_and_pairs(loop, 2) as (readiness, pairs):
            fds = [ours.fileno() for ours, _ in pairs]

            def on_read(mine: int, other: int) -> None:
                called.append(mine)
                readiness.watch(mine, 0, on_read, on_read)
                readiness.watch(other, 0, on_read, on_read)

            for mine, other in (fds, fds[::-1]):
                readiness.watch(mine, select.EPOLLIN, lambda m=mine, o=other: on_read(m, o), None)
            for _, theirs in pairs:  # both readable before the loop looks
                theirs.send(b"x")
            await until(lambda: called)
            for _ in range(5):
                await asyncio.sleep(0)
            assert len(called) == 1 and not readiness.watched

    run(main())


def test_a_relay_callback_that_raises_is_reported_and_the_others_still_run():
    async def main():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
        called = []
        with readiness_and_pairs(loop, 2) as (readiness, pairs):

            def failing() -> None:
                called.append("failing")
                readiness.watch(pairs[0][0].fileno(), 0, failing, None)
                raise RuntimeError("a bug")

            def fine() -> None:
                called.append("fine")
                readiness.watch(pairs[1][0].fileno(), 0, fine, None)

            readiness.watch(pairs[0][0].fileno(), select.EPOLLIN, failing, None)
            readiness.watch(pairs[1][0].fileno(), select.EPOLLIN, fine, None)
            for _, theirs in pairs:
                theirs.send(b"x")
            await until(lambda: len(called) == 2)
            assert sorted(called) == ["failing", "fine"]
            assert [type(exc) for exc in reported] == [RuntimeError]

    run(main())


def test_the_relays_epoll_set_goes_with_its_loop():
    """A process that runs many loops (a test suite does) must not keep a descriptor per
    loop it ever relayed on."""

    async def main():
        found = splice_relay.readiness(asyncio.get_running_loop())
        return weakref.ref(found), found.epoll.fileno()

    found, fd = asyncio.run(main())
    gc.collect()
    assert found() is None
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_relay_still_running_when_its_loop_ends_keeps_neither_the_loop_nor_its_sockets():
    """An abandoned relay (its peers still open) must go with its loop: its sockets
    closed, so both ends see the connection end, and the epoll set with them."""

    async def main():
        w = await wire("tcp")
        relay, _closed = start(w)
        loop = asyncio.get_running_loop()
        fds = (w.relay_agent.fileno(), splice_relay.readiness(loop).epoll.fileno())
        return weakref.ref(relay), weakref.ref(loop), fds, (w.agent_peer, w.upstream_peer)

    relay, loop, fds, peers = asyncio.run(main())
    try:
        gc.collect()
        assert relay() is None and loop() is None
        for fd in fds:
            with pytest.raises(OSError):
                os.fstat(fd)
    finally:
        for peer in peers:
            peer.close()


# --- the pipe pool --------------------------------------------------------------------


async def one_exchange(w: Wiring, pool: PipePool, request: bytes, answer: bytes) -> SpliceRelay:
    """A relay with `pool`'s pipes: the agent sends `request` and finishes, the next
    hop answers and finishes; each side checks what it got."""
    loop = asyncio.get_running_loop()
    relay, closed = start(w, pipes=pool.pipes(), pool=pool)
    await send_and_finish(w.agent_peer, request)
    assert await recv_until_eof(w.upstream_peer) == request
    await loop.sock_sendall(w.upstream_peer, answer)
    w.upstream_peer.shutdown(socket.SHUT_WR)
    assert await recv_until_eof(w.agent_peer) == answer
    assert await closed is relay
    return relay


def test_a_relay_that_ends_cleanly_leaves_its_pipes_to_the_next_carrying_nothing_of_its_own(
    tmp_path,
):
    async def main():
        pool = PipePool()
        first = await wire("unix", tmp_path)
        try:
            relay = await one_exchange(first, pool, b"first request", b"first answer")
            pipes = {relay.outbound.pipe, relay.inbound.pipe}
            assert all(pipe.r >= 0 for pipe in pipes)  # kept open, in the pool
        finally:
            first.close_peers()
        (tmp_path / "up.sock").unlink()
        second = await wire("unix", tmp_path)
        try:
            relay = await one_exchange(second, pool, b"second", b"reply")
            assert {relay.outbound.pipe, relay.inbound.pipe} == pipes  # the same pipes
        finally:
            second.close_peers()
        pool.close()
        assert all(pipe.r == -1 for pipe in pipes)

    run(main())


def test_a_reset_relay_closes_its_pipes_rather_than_leave_them_to_another(tmp_path):
    async def main():
        pool = PipePool()
        w = await wire("tcp", tmp_path)
        try:
            relay, closed = start(w, pipes=pool.pipes(), pool=pool)
            await asyncio.get_running_loop().sock_sendall(w.agent_peer, b"unread by anyone")
            w.upstream_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            w.upstream_peer.close()
            assert await closed is relay and relay.error is not None
            assert (relay.outbound.pipe.r, relay.inbound.pipe.r) == (-1, -1)
            fresh = pool.pipes()
            assert not {*fresh} & {relay.outbound.pipe, relay.inbound.pipe}
            for pipe in fresh:
                pipe.close()
        finally:
            w.close_peers()
            pool.close()

    run(main())


def test_the_pool_keeps_only_first_size_pipes_and_at_most_its_count():
    pool = PipePool(keep=1)
    grown, small = pool.pipes()
    extra, spare = pool.pipes()
    spare.close()
    grown.capacity = fcntl.fcntl(grown.w, fcntl.F_SETPIPE_SZ, BULK_PIPE_SIZE)
    pool.give(grown)
    pool.give(small)
    pool.give(extra)
    assert grown.r == -1 and extra.r == -1 and small.r >= 0
    pool.close()
    assert small.r == -1


# --- back-pressure --------------------------------------------------------------------


async def send_until_blocked(sock: socket.socket, relay: SpliceRelay, data: bytes) -> int:
    """Send from `data` without blocking until the agent's socket has taken nothing for
    20 rounds of the loop in a row (the relay ran in between); return how much it took.
    Fails if all of `data` goes in (nothing held it back)."""
    sent, idle = 0, 0
    while idle < 20:
        try:
            n = sock.send(data[sent : sent + (1 << 16)])
        except BlockingIOError:
            n = 0
        sent += n
        assert sent < len(data), "the agent could send everything: no back-pressure"
        idle = idle + 1 if n == 0 else 0
        await asyncio.sleep(0.005 if n == 0 else 0)
    return sent


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_a_next_hop_that_does_not_read_stops_the_relay_reading_from_the_agent(upstream, tmp_path):
    """The relay must not buffer without bound: with the next hop not reading, the relay
    stops reading the agent, the agent's sends block with at most what the sockets'
    buffers and one pipe hold in flight, and once the next hop reads everything arrives,
    in order."""
    payload = os.urandom(8 << 20)

    async def main():
        w = await wire(upstream, tmp_path)
        try:
            socks = (w.agent_peer, w.relay_agent, w.relay_upstream, w.upstream_peer)
            for sock in socks:  # fixed sizes: no autotuning to make the bound a moving target
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            path = ((w.agent_peer, socket.SO_SNDBUF), (w.relay_agent, socket.SO_RCVBUF))
            path += ((w.relay_upstream, socket.SO_SNDBUF), (w.upstream_peer, socket.SO_RCVBUF))
            on_path = sum(sock.getsockopt(socket.SOL_SOCKET, opt) for sock, opt in path)
            relay, closed = start(w)

            in_flight = await send_until_blocked(w.agent_peer, relay, payload)
            assert not relay.outbound.reading, "the agent is blocked but the relay still reads"
            assert relay.outbound.writing  # waiting for the next hop to take more
            assert 0 < relay.outbound.in_pipe <= relay.outbound.pipe.capacity <= BULK_PIPE_SIZE
            # the kernel counts buffers by whole segments and overshoots a little: twice
            # the configured sizes is "roughly the buffers", far below the 8 MiB offered
            assert in_flight <= 2 * on_path + relay.outbound.pipe.capacity
            assert not relay.closed

            received, _ = await asyncio.gather(
                recv_until_eof(w.upstream_peer),
                send_and_finish(w.agent_peer, payload[in_flight:]),
            )
            w.upstream_peer.shutdown(socket.SHUT_WR)
            assert await closed is relay
            return received
        finally:
            w.close_peers()

    assert sha(run(main())) == sha(payload)


# --- resets ---------------------------------------------------------------------------


@pytest.mark.parametrize("resetter", ["agent", "upstream"])
def test_a_reset_by_one_peer_resets_the_other_and_closes_the_relay_with_the_error(
    resetter, tmp_path
):
    """A reset must not turn into a clean FIN on the other side: the other peer would
    take a truncated response for a complete one."""

    async def main():
        loop = asyncio.get_running_loop()
        w = await wire("tcp", tmp_path)
        try:
            relay, closed = start(w)
            await loop.sock_sendall(w.agent_peer, b"hello")
            assert await recv_exactly(w.upstream_peer, 5) == b"hello"
            await loop.sock_sendall(w.upstream_peer, b"world")
            assert await recv_exactly(w.agent_peer, 5) == b"world"

            gone, other = (
                (w.agent_peer, w.upstream_peer)
                if resetter == "agent"
                else (w.upstream_peer, w.agent_peer)
            )
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            gone.close()
            assert await closed is relay
            with pytest.raises(ConnectionResetError):
                await loop.sock_recv(other, 10)
            assert relay.closed
            assert isinstance(relay.error, ConnectionResetError)
            assert w.relay_agent.fileno() == -1 and w.relay_upstream.fileno() == -1
        finally:
            w.close_peers()

    run(main())


def test_a_reset_by_the_agent_reaches_a_unix_socket_next_hop_as_a_plain_eof(tmp_path):
    """Unix sockets have no RST: SO_LINGER 0 on the relay's side is a plain close, so
    the next hop sees an ordinary EOF (it cannot tell an aborted request from a complete
    one by the transport alone).  The relay itself still records the agent's reset."""

    async def main():
        loop = asyncio.get_running_loop()
        w = await wire("unix", tmp_path)
        try:
            relay, closed = start(w)
            await loop.sock_sendall(w.agent_peer, b"partial")
            assert await recv_exactly(w.upstream_peer, 7) == b"partial"
            w.agent_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            w.agent_peer.close()
            assert await closed is relay
            assert isinstance(relay.error, ConnectionResetError)
            assert await loop.sock_recv(w.upstream_peer, 10) == b""
        finally:
            w.close_peers()

    run(main())


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_a_next_hop_that_closes_mid_upload_resets_the_agent_and_frees_everything(
    upstream, tmp_path
):
    """The next hop answers an upload early and closes while the agent is still blocked
    sending.  The relay resets both sides (an early answer may be cut: ending one
    direction only would need a draining, lingering close) and must not hang: the
    agent's send fails, the relay closes, nothing is left open."""

    async def main():
        loop = asyncio.get_running_loop()
        w = await wire(upstream, tmp_path)
        try:
            splice_relay.readiness(loop)  # the loop's epoll set: made once, not per relay
            before = open_fds()
            relay, closed = start(w)
            uploading = asyncio.ensure_future(loop.sock_sendall(w.agent_peer, bytes(32 << 20)))
            await recv_exactly(w.upstream_peer, 64 << 10)
            await loop.sock_sendall(w.upstream_peer, b"HTTP/1.1 413 Too Large\r\n\r\n")
            w.upstream_peer.close()
            with pytest.raises(OSError):
                await uploading  # reset: the upload can never complete
            assert await closed is relay
            return relay.error, before - open_fds()
        finally:
            w.close_peers()

    error, freed = run(main())
    assert isinstance(error, BrokenPipeError | ConnectionResetError)
    # counted before the relay made its pipes: its two sockets and the next hop's end
    # are closed, and its four pipe ends are gone again
    assert freed == 3


def test_a_relay_that_cannot_get_its_second_pipe_gives_back_the_first(tmp_path):
    """Out of descriptors (or over the pipe quota) the constructor raises; the pipe it
    already made must not leak, or a dialer at its limit would stay there.  The limit
    is set so that exactly one more pipe fits: descriptors are allocated lowest first."""

    async def main():
        w = await wire("tcp", tmp_path)
        try:
            gc.collect()  # no socket closed behind our back while the limit is low
            probe = os.pipe()
            for fd in probe:
                os.close(fd)
            before = open_fds()
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(probe) + 1, hard))
            try:
                with pytest.raises(OSError) as raised:
                    SpliceRelay(w.relay_agent, w.relay_upstream)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert raised.value.errno == errno.EMFILE
            assert open_fds() == before
            # the sockets stay the caller's: still open, still usable
            assert w.relay_agent.fileno() != -1 and w.relay_upstream.fileno() != -1
        finally:
            w.close_peers()
            w.relay_agent.close()
            w.relay_upstream.close()

    run(main())


# --- connect() ------------------------------------------------------------------------


async def connect_and_echo(hop, listener: socket.socket) -> tuple[int, object]:
    """`connect()`, prove the connection carries a byte, return (family, peer name)."""
    loop = asyncio.get_running_loop()
    ours, theirs = await listen_and_connect(hop, listener)
    with ours, theirs:
        assert not ours.getblocking()
        await loop.sock_sendall(ours, b"x")
        assert await recv_exactly(theirs, 1) == b"x"
        return ours.family, ours.getpeername()


def test_connect_reaches_a_unix_socket_path(tmp_path):
    path = tmp_path / "hop.sock"
    family, peer = run(connect_and_echo(str(path), unix_listener(path)))
    assert family == socket.AF_UNIX
    assert peer == str(path)


def test_connect_reaches_an_ipv4_literal():
    listener = tcp_listener("127.0.0.1")
    hop = listener.getsockname()[:2]
    family, peer = run(connect_and_echo(hop, listener))
    assert family == socket.AF_INET
    assert peer == hop


def test_connect_turns_nagle_off_on_a_tcp_next_hop():
    """asyncio does it for its transports; the relay must too, or a small request the
    agent wrote would wait for the next hop's delayed ACK (tens of milliseconds)."""
    listener = tcp_listener("127.0.0.1")
    listener.listen()

    async def main():
        sock = await connect(asyncio.get_running_loop(), listener.getsockname()[:2])
        with sock:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    try:
        assert run(main()) != 0
    finally:
        listener.close()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
def test_connect_reaches_an_ipv6_literal():
    listener = tcp_listener("::1")
    hop = listener.getsockname()[:2]
    family, peer = run(connect_and_echo(hop, listener))
    assert family == socket.AF_INET6
    assert peer[:2] == hop


def test_a_unix_next_hop_with_a_full_accept_queue_is_waited_for_not_half_connected(tmp_path):
    """A Unix connect fails with EAGAIN while the listener's queue is full (TCP would
    retry its SYN); connect() retries until the listener accepts, and the socket it
    returns really is connected."""
    path = tmp_path / "busy.sock"
    listener = unix_listener(path)
    listener.listen(0)
    queued = []
    try:
        while True:  # fill the accept queue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            if sock.connect_ex(str(path)) == errno.EAGAIN:
                sock.close()
                break
            queued.append(sock)

        async def main():
            loop = asyncio.get_running_loop()
            attempt = asyncio.ensure_future(connect(loop, str(path)))
            await asyncio.sleep(0.05)
            assert not attempt.done()  # still retrying, not "connected"
            listener.setblocking(False)
            while not attempt.done():
                with contextlib.suppress(BlockingIOError):
                    listener.accept()[0].close()
                await asyncio.sleep(0.005)
            sock = await attempt
            with sock:
                return sock.getpeername()

        assert run(main()) == str(path)
    finally:
        for sock in queued:
            sock.close()
        listener.close()


def test_a_unix_next_hop_that_never_accepts_times_out_without_leaking(tmp_path):
    path = tmp_path / "stuck.sock"
    listener = unix_listener(path)
    listener.listen(0)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    filler.setblocking(False)
    filler.connect_ex(str(path))
    try:

        async def main():
            before = open_fds()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(connect(asyncio.get_running_loop(), str(path)), 0.1)
            return before, open_fds()

        before, after = run(main())
        assert after == before
    finally:
        filler.close()
        listener.close()


def test_a_refused_connection_raises_oserror_and_leaks_no_descriptor(tmp_path):
    """Bound but not listening: the kernel refuses at once, for TCP as for Unix sockets;
    a missing socket file fails too.  Each failure closes the socket it made."""
    tcp = tcp_listener()  # kept bound, so nobody else can start listening on the port
    hole = tmp_path / "nobody.sock"
    unix = unix_listener(hole)

    async def main():
        loop = asyncio.get_running_loop()
        before = open_fds()
        for hop in (tcp.getsockname()[:2], str(hole), str(tmp_path / "missing.sock")):
            with pytest.raises(OSError):
                await connect(loop, hop)
        assert open_fds() == before

    with tcp, unix:
        run(main())


# --- chatty connections ---------------------------------------------------------------


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_many_small_messages_ping_pong_through_the_relay(upstream, tmp_path):
    """A chatty protocol: each few-byte message must go through on its own (nothing
    waits for a pipe to fill), 200 times each way."""

    async def main():
        loop = asyncio.get_running_loop()
        w = await wire(upstream, tmp_path)
        try:
            relay, closed = start(w)
            for i in range(200):
                ping, pong = b"ping %d" % i, b"pong %d" % i
                await loop.sock_sendall(w.agent_peer, ping)
                assert await recv_exactly(w.upstream_peer, len(ping)) == ping
                await loop.sock_sendall(w.upstream_peer, pong)
                assert await recv_exactly(w.agent_peer, len(pong)) == pong
            w.agent_peer.shutdown(socket.SHUT_WR)
            w.upstream_peer.shutdown(socket.SHUT_WR)
            assert await closed is relay
            # small reads never fill the default pipe, so it never grew
            assert relay.outbound.pipe.capacity < BULK_PIPE_SIZE
        finally:
            w.close_peers()

    run(main())


def test_a_pipe_grown_for_bulk_shrinks_back_when_the_traffic_is_small_again(tmp_path):
    """Large pipes count against the user's pipe quota: only a connection moving bulk
    keeps one."""

    async def main():
        loop = asyncio.get_running_loop()
        w = await wire("tcp", tmp_path)
        try:
            relay, closed = start(w)
            bulk = os.urandom(8 << 20)
            _, got = await asyncio.gather(
                loop.sock_sendall(w.agent_peer, bulk),
                recv_exactly(w.upstream_peer, len(bulk)),
            )
            assert got == bulk
            grown = relay.outbound.pipe.may_grow and relay.outbound.pipe.capacity
            for _ in range(SHRINK_AFTER_SMALL_READS):
                await loop.sock_sendall(w.agent_peer, b"ping")
                assert await recv_exactly(w.upstream_peer, 4) == b"ping"
            w.agent_peer.shutdown(socket.SHUT_WR)
            w.upstream_peer.shutdown(socket.SHUT_WR)
            assert await closed is relay
            return grown, relay.outbound.pipe
        finally:
            w.close_peers()

    grown, pipe = run(main())
    assert grown == BULK_PIPE_SIZE  # the bulk transfer did grow it (root: no quota)
    assert pipe.capacity == pipe.small


# --- arbitrary chunkings --------------------------------------------------------------

chunks = st.lists(st.binary(min_size=1, max_size=3000), max_size=12)


@settings(max_examples=20, deadline=None)
@given(up=chunks, down=chunks, to_upstream=st.binary(max_size=64), to_agent=st.binary(max_size=64))
def test_any_chunking_of_the_traffic_arrives_as_the_same_bytes(up, down, to_upstream, to_agent):
    """However the peers cut their writes, each side gets its head then the other
    peer's bytes, concatenated."""

    async def send_chunks(sock: socket.socket, parts: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        for part in parts:
            await loop.sock_sendall(sock, part)
            await asyncio.sleep(0)  # let the relay run between writes
        sock.shutdown(socket.SHUT_WR)

    async def main():
        w = await wire("tcp")
        try:
            return await both_ways(
                w,
                send_chunks(w.agent_peer, up),
                send_chunks(w.upstream_peer, down),
                to_upstream=to_upstream,
                to_agent=to_agent,
            )
        finally:
            w.close_peers()

    _, at_upstream, at_agent = run(main())
    assert at_upstream == to_upstream + b"".join(up)
    assert at_agent == to_agent + b"".join(down)


def test_a_pipe_given_back_after_the_pool_closed_is_closed_not_kept():
    """A relay may end after the dialer's stop closed the pool: its pipes must not leak."""
    pool = PipePool()
    first, second = pool.pipes()
    pool.close()
    pool.give(first)
    pool.give(second)
    assert first.r == -1 and second.r == -1
