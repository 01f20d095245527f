"""fair_accept: a burst from one source does not go before another source's connection;
every connection is started once; what is not taken yet stays in the kernel's queue."""

from __future__ import annotations

import asyncio
import socket

from clrk_worker_dialer.fair_accept import FairAcceptor
from clrk_worker_dialer.server import tcp_listen_socket

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


async def _serve(queued: list[str], *, per_turn: int = 4, max_pending: int = 1000) -> list[str]:
    """Queue connections from `queued` sources, then serve them; the starting order."""
    listener = tcp_listen_socket(("127.0.0.1", 0), 1024)
    port = listener.getsockname()[1]
    clients = [_connect(port, source) for source in queued]
    order: list[str] = []
    acceptor = FairAcceptor(
        listener, lambda: Started(order), per_turn=per_turn, max_pending=max_pending
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


def test_closing_resets_the_connections_accepted_but_not_started():
    async def run() -> bytes:
        listener = tcp_listen_socket(("127.0.0.1", 0), 16)
        client = _connect(listener.getsockname()[1], "127.0.0.1")
        acceptor = FairAcceptor(listener, asyncio.Protocol)
        acceptor._accept()  # taken from the kernel; its turn has not come
        acceptor.close()
        await acceptor.wait_closed()
        client.settimeout(5)
        try:
            return client.recv(1)
        except ConnectionResetError:
            return b"reset"
        finally:
            client.close()

    assert asyncio.run(run()) == b"reset"
