"""The UDP front's DNS answers to agents (the TPROXY sockets themselves need root and are
exercised by the network tests; here the reply socket is a plain one on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from clrk_worker_dialer.config import DialerConfig
from clrk_worker_dialer.dns_forwarder import Forwarder
from clrk_worker_dialer.state import DialerState
from clrk_worker_dialer.udp_front import UdpFront
from tests.worker_dialer.dialer_policy import Records


def _arrived(sock: socket.socket) -> list[bytes]:
    got = []
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(sock.recv(512))
    return got


@contextlib.asynccontextmanager
async def _front_and_agent():
    """A front whose reply socket for 127.0.0.1:<port> is a plain bound one, and the
    agent's socket it answers."""
    state = DialerState(DialerConfig(manifests=[], gateway="default/gw"), Records())
    front = UdpFront(state, Forwarder(state))
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as agent,
    ):
        server.bind(("127.0.0.1", 0))
        agent.bind(("127.0.0.1", 0))
        agent.setblocking(False)
        front.replies[server.getsockname()] = server
        try:
            yield front, server.getsockname(), agent
        finally:
            front.close()


def test_the_dns_answers_of_one_turn_of_the_loop_go_out_together_when_it_ends():
    """Back to back, not each between the other queries' work: the agent is woken once
    for them all, not once each."""

    async def run():
        async with _front_and_agent() as (front, dst, agent):
            for answer in (b"one", b"two", b"three"):
                front._reply(answer, agent.getsockname(), dst)
            during = _arrived(agent)
            await asyncio.sleep(0)
            return during, _arrived(agent)

    assert asyncio.run(run()) == ([], [b"one", b"two", b"three"])


def test_an_answer_still_to_send_when_the_front_closes_is_not_sent():
    async def run():
        async with _front_and_agent() as (front, dst, agent):
            front._reply(b"one", agent.getsockname(), dst)
            front.close()
            await asyncio.sleep(0)
            return _arrived(agent)

    assert asyncio.run(run()) == []
