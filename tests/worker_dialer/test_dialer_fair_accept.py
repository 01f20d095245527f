"""fair_accept: a burst from one source does not go before another source's connection;
every connection is started once; what is not taken yet stays in the kernel's queue, in
the flooder's own listener when the group is steered by source."""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import struct

from clrk_worker_dialer.config import DialerConfig
from clrk_worker_dialer.fair_accept import (
    MAX_PENDING,
    FairAcceptor,
    PendingBudget,
    default_max_pending,
)
from clrk_worker_dialer.source_steering import listen_socket, steered_listeners
from clrk_worker_dialer.state import DialerState
from clrk_worker_dialer.tcp_front import admit_transparent
from tests.worker_dialer.dialer_policy import POLICY_YAML, Records

BURST = 60


def _connect(port: int, source: str) -> socket.socket:
    """A connection the kernel completes before anything accepts it (the listen queue)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


class Started(asyncio.Protocol):
    """Notes the source of each connection in the order the acceptor starts them."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.order.append(transport.get_extra_info("peername")[0])
        transport.close()


async def _serve(
    queued: list[str], *, per_turn: int = 4, max_pending: int = 1000, buckets: int = 1
) -> list[str]:
    """Queue connections from `queued` sources, then serve them; the starting order."""
    listeners = steered_listeners(("127.0.0.1", 0), 1024, buckets)
    port = listeners[0].getsockname()[1]
    clients = [_connect(port, source) for source in queued]
    order: list[str] = []
    acceptor = FairAcceptor(
        listeners, lambda: Started(order), per_turn=per_turn, max_pending=max_pending
    )
    acceptor.start()
    try:
        for _ in range(10 * len(queued)):  # iterations, not time
            if len(order) == len(queued):
                break
            await asyncio.sleep(0)
    finally:
        acceptor.close()
        await acceptor.wait_closed()
        for client in clients:
            client.close()
    return order


def test_a_connection_queued_behind_a_burst_of_another_source_starts_in_the_first_turn():
    order = asyncio.run(_serve(["127.0.0.1"] * BURST + ["127.0.0.2"]))
    assert sorted(order) == sorted(["127.0.0.1"] * BURST + ["127.0.0.2"])  # each once
    assert order.index("127.0.0.2") < 2


def test_sources_take_turns_one_connection_each():
    order = asyncio.run(_serve(["127.0.0.1"] * 5 + ["127.0.0.2"] * 5 + ["127.0.0.3"] * 2))
    assert order[:6] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"] * 2
    assert order[6:] == ["127.0.0.1", "127.0.0.2"] * 3


def test_beyond_max_pending_connections_wait_in_the_kernel_and_are_all_served():
    order = asyncio.run(_serve(["127.0.0.1"] * 30, per_turn=2, max_pending=5))
    assert order == ["127.0.0.1"] * 30


def test_a_low_open_files_limit_bounds_what_is_held_to_a_quarter_of_it():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
    try:
        assert default_max_pending() == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert default_max_pending() == min(MAX_PENDING, soft // 4)


def test_a_flood_beyond_its_share_waits_in_its_own_kernel_queue_not_in_the_others():
    # Two sockets steered by source, two connections held each: the flood's socket is
    # left to the kernel once it holds its two, the neighbour's is still taken from.
    flood, neighbour = "127.0.0.2", "127.0.0.6"
    order = asyncio.run(_serve([flood] * 40 + [neighbour], per_turn=1, max_pending=4, buckets=2))
    assert sorted(order) == sorted([flood] * 40 + [neighbour])
    assert order.index(neighbour) < 2
    # One listener for both: the neighbour waits behind the flood, in the kernel's queue
    # (once taken from it, it takes turns with the flood's last: 39 or 40 go first).
    order = asyncio.run(_serve([flood] * 40 + [neighbour], per_turn=1, max_pending=4))
    assert order.index(neighbour) >= 39


async def _turns_then_close(acceptor: FairAcceptor, clients: list[socket.socket]) -> None:
    """Let the queued turns run (loop iterations, not time), then close it all."""
    for _ in range(10):
        await asyncio.sleep(0)
    acceptor.close()
    await acceptor.wait_closed()
    for client in clients:
        client.close()


def _outcome(client: socket.socket) -> bytes:
    """The first byte the client reads, or b"reset"; closes it."""
    client.settimeout(5)
    try:
        return client.recv(1)
    except ConnectionResetError:
        return b"reset"
    finally:
        client.close()


def test_closing_resets_the_connections_accepted_but_not_started():
    async def run() -> bytes:
        listener = listen_socket(("127.0.0.1", 0), 16)
        client = _connect(listener.getsockname()[1], "127.0.0.1")
        acceptor = FairAcceptor(listener, asyncio.Protocol)
        # Taken from the kernel; its turn has not come.
        acceptor._ready(acceptor.listeners[0], start_first=False)
        acceptor.close()
        await acceptor.wait_closed()
        return _outcome(client)

    assert asyncio.run(run()) == b"reset"


def test_a_connection_its_agent_reset_before_its_turn_ends_without_an_error(tmp_path, monkeypatch):
    # As REDIRECT would say (conntrack outlives the reset); loopback has no NAT.
    monkeypatch.setattr(
        "clrk_worker_dialer.tcp_front.original_destination", lambda _sock: ("203.0.113.5", 5432)
    )
    manifests = tmp_path / "policy.yaml"
    manifests.write_text(POLICY_YAML)
    records = Records()
    state = DialerState(DialerConfig(manifests=[str(manifests)], gateway="default/gw"), records)
    state.load()

    async def run() -> list[dict]:
        errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, c: errors.append(c))
        listener = listen_socket(("127.0.0.1", 0), 16)
        client = _connect(listener.getsockname()[1], "127.0.0.1")
        acceptor = FairAcceptor(listener, None, admit=admit_transparent(state, None))
        # Taken from the kernel; then the agent resets it.
        acceptor._ready(acceptor.listeners[0], start_first=False)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        for _ in range(10):  # its turn, where it is decided
            await asyncio.sleep(0)
        acceptor.close()
        await acceptor.wait_closed()
        return errors

    # The socket has no peer address then; nothing is decided, nothing recorded.
    assert asyncio.run(run()) == []
    assert records.emitted == []


class Greets(asyncio.Protocol):
    def connection_made(self, transport) -> None:  # type: ignore[override]
        transport.write(b"g")


def test_admit_serves_with_the_protocol_it_returns_or_leaves_the_connection_to_itself():
    """The transparent dialer's path: `admit` decides on the socket; None means it dealt
    with it (a refusal: reset, no transport); an admit that fails resets (fail closed)."""

    def admit(conn: socket.socket, _port: int) -> asyncio.Protocol | None:
        port = conn.getpeername()[1]
        if port == ports["greet"]:
            return Greets()
        if port == ports["refuse"]:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return None
        raise RuntimeError("a bug in deciding")

    ports: dict[str, int] = {}

    async def run() -> list[bytes]:
        listener = listen_socket(("127.0.0.1", 0), 16)
        clients = {}
        for name in ("greet", "refuse", "fail"):
            clients[name] = _connect(listener.getsockname()[1], "127.0.0.1")
            ports[name] = clients[name].getsockname()[1]
        acceptor = FairAcceptor(listener, None, admit=admit)
        acceptor.start()
        try:
            outcomes = [
                await asyncio.to_thread(_outcome, clients[name])
                for name in ("greet", "refuse", "fail")
            ]
        finally:
            acceptor.close()
            await acceptor.wait_closed()
        return outcomes

    assert asyncio.run(run()) == [b"g", b"reset", b"reset"]


class _FailingAfter:
    """A listening socket whose accept(2) fails unexpectedly after `good` connections."""

    def __init__(self, sock: socket.socket, good: int) -> None:
        self.sock, self.good = sock, good

    def accept(self):
        if self.good == 0:
            raise OSError(errno.EPROTO, "protocol error")
        self.good -= 1
        return self.sock.accept()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def test_an_unexpected_accept_error_is_logged_and_the_connections_taken_still_start():
    async def run() -> tuple[list[str], list[dict]]:
        errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, c: errors.append(c))
        listener = listen_socket(("127.0.0.1", 0), 16)
        clients = [_connect(listener.getsockname()[1], "127.0.0.1") for _ in range(3)]
        order: list[str] = []
        acceptor = FairAcceptor(listener, lambda: Started(order))
        acceptor.listeners[0].sock = _FailingAfter(listener, 2)  # type: ignore[assignment]
        acceptor._ready(acceptor.listeners[0], start_first=False)
        await _turns_then_close(acceptor, clients)
        return order, errors

    order, errors = asyncio.run(run())
    assert order == ["127.0.0.1"] * 2
    assert errors == []


def test_acceptors_sharing_a_budget_hold_together_no_more_than_it():
    # Two acceptors of two sockets each, one budget of 8: each socket holds 2, so a
    # flood into every socket holds 8 in all, not 8 per acceptor.
    async def run() -> tuple[list[int], int]:
        budget = PendingBudget(8)
        groups = [steered_listeners(("127.0.0.1", 0), 64, 2) for _ in range(2)]
        clients = [
            _connect(socks[0].getsockname()[1], source)
            for socks in groups
            for source in ["127.0.0.2"] * 10 + ["127.0.0.6"] * 10  # one per socket
        ]
        acceptors = [FairAcceptor(socks, asyncio.Protocol, budget=budget) for socks in groups]
        for acceptor in acceptors:
            for listener in acceptor.listeners:
                # What each takes; no turn has started one yet.
                acceptor._ready(listener, start_first=False)
        held = [listener.pending for acceptor in acceptors for listener in acceptor.listeners]
        for acceptor in acceptors:
            acceptor.close()
            await acceptor.wait_closed()
        for client in clients:
            client.close()
        return held, budget.sockets

    held, sockets_left = asyncio.run(run())
    assert held == [2, 2, 2, 2]
    assert sockets_left == 0  # a closed acceptor gives its share back


def test_a_dialer_divides_one_budget_between_all_its_listeners():
    budget = PendingBudget(100)
    budget.sockets = 16 + 16 + 16 + 1 + 1  # TCP v4 and v6 groups, DNS, SOCKS5, CONNECT
    assert budget.share == 2
    budget.sockets = 1000  # more sockets than the budget: each still takes one
    assert budget.share == 1


def test_when_nothing_waits_a_readiness_starts_its_first_connection_at_once():
    async def run(sources: list[str]) -> tuple[list[str], list[str]]:
        admitted: list[str] = []

        def admit(conn: socket.socket, _port: int) -> None:
            admitted.append(conn.getpeername()[0])
            conn.close()

        listener = listen_socket(("127.0.0.1", 0), 16)
        clients = [_connect(listener.getsockname()[1], source) for source in sources]
        acceptor = FairAcceptor(listener, None, admit=admit, per_turn=1)
        acceptor._ready(acceptor.listeners[0])  # the loop's readiness callback
        at_once = list(admitted)
        await _turns_then_close(acceptor, clients)
        return at_once, admitted

    a, b = "127.0.0.1", "127.0.0.2"
    assert asyncio.run(run([a])) == ([a], [a])
    # The first source had its turn: the one behind it goes before its second.
    assert asyncio.run(run([a, a, b])) == ([a], [a, b, a])
