"""The forwarder's upstream exchange and snooping against a real dnsmasq on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import shutil
import socket
import time

import dns.flags
import dns.message
import dns.rcode
import pytest

from clrk.policy import Agent
from clrk_worker_dialer.config import DialerConfig
from clrk_worker_dialer.dns_binding import parse_query
from clrk_worker_dialer.dns_forwarder import Forwarder, SharedUdp, exchange
from clrk_worker_dialer.state import DialerState
from tests.conftest import compile_yaml
from tests.worker_dialer.dialer_policy import GATEWAY, POLICY_YAML, Records
from tests.worker_dialer.loopback_dns import loopback_dnsmasq

pytestmark = pytest.mark.skipif(not shutil.which("dnsmasq"), reason="needs dnsmasq")


@pytest.fixture(scope="module")
def resolver(tmp_path_factory):
    zone = {"a.test": {"A": ["192.0.2.10"], "ttl": 30}, "c.test": {"CNAME": "a.test"}}
    zone |= {"big.test": {"A": [f"192.0.2.{i}" for i in range(1, 60)]}}
    with loopback_dnsmasq(zone, tmp_path_factory.mktemp("dns")) as address:
        yield address


def ask(name: str, resolver, **kw) -> tuple[bytes, bytes | None]:
    query = dns.message.make_query(name, "A")
    query.flags |= dns.flags.RD
    wire = query.to_wire()
    return wire, asyncio.run(exchange(wire, [resolver], 2.0, **kw))


def test_an_answer_comes_back_for_the_same_query_id(resolver):
    wire, answer = ask("a.test", resolver)
    assert answer[:2] == wire[:2]
    assert "192.0.2.10" in dns.message.from_wire(answer).to_text()


def test_tcp_works_too(resolver):
    _wire, answer = ask("c.test", resolver, tcp=True)
    text = dns.message.from_wire(answer).to_text()
    assert "a.test" in text and "192.0.2.10" in text


def test_a_truncated_udp_answer_is_retried_over_tcp(resolver):
    _wire, answer = ask("big.test", resolver)
    message = dns.message.from_wire(answer)
    assert not message.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in message.answer) == 59


def test_a_resolver_that_does_not_answer_gives_none_then_the_next_is_asked(resolver):
    dead = ("127.0.0.1", 9)  # discard: nothing answers
    wire = dns.message.make_query("a.test", "A").to_wire()
    answer = asyncio.run(exchange(wire, [dead, resolver], 0.3))
    assert answer is not None and parse_query(wire).name == "a.test"


def test_the_shared_socket_answers_queries_with_one_id_each_with_their_own_answer(resolver):
    """Agents pick their IDs: two in flight with the same ID on the one upstream socket
    still get their own answers, under their own ID."""
    first = dns.message.make_query("a.test", "A")
    second = dns.message.make_query("c.test", "A")
    first.id = second.id = 4242

    async def both():
        udp = SharedUdp()
        return await asyncio.gather(
            exchange(first.to_wire(), [resolver], 2.0, udp=udp.exchange),
            exchange(second.to_wire(), [resolver], 2.0, udp=udp.exchange),
        )

    answers = asyncio.run(both())
    assert [a[:2] for a in answers] == [b"\x10\x92"] * 2
    names = [dns.message.from_wire(a).question[0].name.to_text() for a in answers]
    assert names == ["a.test.", "c.test."]


def test_the_shared_socket_takes_no_answer_to_another_question():
    """A resolver that answers under the right ID with another question is ignored:
    the query times out rather than binding what was not asked."""

    async def run():
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        udp = SharedUdp()
        wire = dns.message.make_query("a.test", "A").to_wire()
        task = asyncio.create_task(udp.exchange(wire, server.getsockname(), 0.5))
        query, client = await asyncio.get_running_loop().sock_recvfrom(server, 512)
        other = dns.message.make_response(dns.message.make_query("evil.test", "A"))
        other.id = int.from_bytes(query[:2], "big")
        server.sendto(other.to_wire(), client)
        try:
            return await task
        finally:
            server.close()

    assert asyncio.run(run()) is None


# --- the UDP path as callbacks (no task per query) ----------------------------------------

A = Agent("default", "agent-a")


def forwarder_for(resolvers, mode: str = "Forward", timeout: float = 2.0) -> Forwarder:
    state = DialerState(
        DialerConfig(manifests=[], gateway="default/gw", resolvers=resolvers, dns_timeout=timeout),
        Records(),
    )
    policies = compile_yaml(POLICY_YAML.replace("mode: Filtered", f"mode: {mode}"))
    state.apply(policies.gateways[GATEWAY])
    return Forwarder(state)


def ask_udp(forwarder: Forwarder, wire: bytes, agent=A, wait: float = 3.0) -> list[bytes]:
    """What handle_udp replies within `wait` (it ends early on the first reply)."""

    async def run():
        replies: list[bytes] = []
        done = asyncio.Event()

        def reply(answer: bytes) -> None:
            replies.append(answer)
            done.set()

        forwarder.handle_udp(wire, ("10.0.0.2", 5353), agent, reply)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await done.wait()
        await asyncio.sleep(0.05)  # a second reply would be a bug
        return replies

    return asyncio.run(run())


def a_query(name: str, qid: int = 777) -> bytes:
    query = dns.message.make_query(name, "A")
    query.id = qid
    query.flags |= dns.flags.RD
    return query.to_wire()


def test_a_udp_query_is_answered_under_its_own_id_and_snooped_for_its_agent(resolver):
    forwarder = forwarder_for([resolver])
    (answer,) = ask_udp(forwarder, a_query("c.test", qid=777))
    assert answer[:2] == (777).to_bytes(2, "big")
    assert "192.0.2.10" in dns.message.from_wire(answer).to_text()
    assert forwarder.state.names(A, "192.0.2.10") == {"a.test", "c.test"}
    assert forwarder.udp.pending[resolver] == {} and forwarder.udp.per_agent == {}


def test_a_udp_answer_of_addresses_only_binds_its_name_with_its_ttl(resolver):
    """The usual answer (read in one pass by the snoop): its address, for its TTL."""
    forwarder = forwarder_for([resolver])
    before = time.monotonic()
    (answer,) = ask_udp(forwarder, a_query("A.Test"))
    after = time.monotonic()
    assert answer[:2] == (777).to_bytes(2, "big")
    assert forwarder.state.names(A, "192.0.2.10") == {"a.test"}
    (expiry,) = forwarder.state.bindings._agents["default/agent-a"]["192.0.2.10"].values()
    assert before + 30 <= expiry <= after + 30  # bound when it came, for the zone's 30 s


def test_a_truncated_udp_answer_is_taken_again_over_tcp_on_the_udp_path(resolver):
    forwarder = forwarder_for([resolver])
    (answer,) = ask_udp(forwarder, a_query("big.test"))
    message = dns.message.from_wire(answer)
    assert not message.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in message.answer) == 59
    assert len(forwarder.state.names(A, "192.0.2.59")) == 1


def test_a_resolver_that_does_not_answer_is_passed_over_for_the_next_on_the_udp_path(resolver):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # takes queries, never answers (nor TCP)
        forwarder = forwarder_for([silent.getsockname(), resolver], timeout=0.3)
        (answer,) = ask_udp(forwarder, a_query("a.test"))
    assert "192.0.2.10" in dns.message.from_wire(answer).to_text()


def test_filtered_and_unknown_sources_are_answered_locally_on_the_udp_path():
    forwarder = forwarder_for([("127.0.0.1", 9)], mode="Filtered")
    (answer,) = ask_udp(forwarder, a_query("secret.attacker.test"))
    assert dns.message.from_wire(answer).rcode() == dns.rcode.NXDOMAIN
    (answer,) = ask_udp(forwarder, a_query("api.example.com"), agent=None)
    assert dns.message.from_wire(answer).rcode() == dns.rcode.REFUSED
    names = [r.attributes["dns.question.name"] for r in forwarder.state.writer.emitted]
    assert names == ["secret.attacker.test", "api.example.com"]  # one denial record each
    assert ask_udp(forwarder, b"\x00\x01garbage", wait=0.1) == []  # malformed: dropped


def test_one_agent_over_its_share_of_pending_queries_is_dropped_while_another_still_asks(
    monkeypatch,
):
    """A flood from one agent to a resolver that does not answer cannot take the room
    of another agent's queries."""
    monkeypatch.setattr(SharedUdp, "MAX_PENDING_PER_AGENT", 2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        server = silent.getsockname()

        async def run():
            udp, delivered = SharedUdp(), []
            sent = [
                udp.send(a_query(f"q{i}.test"), server, 0.2, delivered.append, "default/a")
                for i in range(3)
            ]
            other = udp.send(a_query("b.test"), server, 0.2, delivered.append, "default/b")
            full = udp.full("default/a"), udp.full("default/b")
            await asyncio.sleep(0.4)
            return sent, other, full, delivered, udp.per_agent, udp.pending[server]

        sent, other, full, delivered, per_agent, pending = asyncio.run(run())
    assert [entry is not None for entry in sent] == [True, True, False]
    assert other is not None and full == (True, False)
    # Nobody answered: each query that went out is told so once, and its room is free.
    assert delivered == [None, None, None] and per_agent == {} and pending == {}


def test_an_answer_to_a_query_given_up_is_delivered_to_nobody():
    async def run():
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        udp, delivered = SharedUdp(), []
        entry = udp.send(a_query("a.test"), server.getsockname(), 2.0, delivered.append, "x/y")
        query, client = await asyncio.get_running_loop().sock_recvfrom(server, 512)
        udp.cancel(entry)
        answer = dns.message.make_response(dns.message.from_wire(query))
        server.sendto(answer.to_wire(), client)
        await asyncio.sleep(0.1)
        server.close()
        return delivered, udp.per_agent

    assert asyncio.run(run()) == ([], {})


def _answer_to(query: bytes) -> bytes:
    return dns.message.make_response(dns.message.from_wire(query)).to_wire()


@contextlib.asynccontextmanager
async def _resolver_socket():
    """A UDP socket on loopback that the test answers from by hand."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    try:
        yield server
    finally:
        server.close()


def _open_sockets(udp: SharedUdp) -> int:
    return sum(u.sock.fileno() >= 0 for u in [*udp.sockets.values(), *udp._retired])


def _arrived(server: socket.socket) -> int:
    """How many datagrams wait on `server` (which does not block)."""
    count = 0
    with contextlib.suppress(BlockingIOError):
        while server.recv(512):
            count += 1
    return count


def test_the_queries_of_one_turn_of_the_loop_go_out_together_when_it_ends():
    """Back to back, not each between the others' work: the resolver is woken once for
    them all, not once each."""

    async def run():
        async with _resolver_socket() as server:
            udp = SharedUdp()
            for name in ("a.test", "b.test", "c.test"):
                udp.send(a_query(name), server.getsockname(), 2.0, lambda _answer: None)
            during = _arrived(server)
            await asyncio.sleep(0)
            after = _arrived(server)
            udp.close()
            return during, after

    assert asyncio.run(run()) == (0, 3)


def test_a_query_that_cannot_go_out_is_given_up_at_once_and_frees_its_room():
    async def run():
        async with _resolver_socket() as server:
            udp, delivered = SharedUdp(), []
            too_big = a_query("a.test") + bytes(70_000)  # past UDP's limit: the send fails
            entry = udp.send(too_big, server.getsockname(), 2.0, delivered.append, "x/y")
            await asyncio.sleep(0)
            left = udp.per_agent, udp.pending[server.getsockname()], _open_sockets(udp)
            udp.close()
            return entry is not None, delivered, left

    assert asyncio.run(run()) == (True, [None], ({}, {}, 1))


def _names_arrived(server: socket.socket) -> list[str]:
    """The names asked in the queries that wait on `server` (which does not block)."""
    names = []
    with contextlib.suppress(BlockingIOError):
        while wire := server.recv(512):
            names.append(parse_query(wire).name)
    return names


def test_a_query_given_up_before_the_turn_ends_never_goes_out():
    async def run():
        async with _resolver_socket() as server:
            udp = SharedUdp()
            entry = udp.send(a_query("a.test"), server.getsockname(), 2.0, lambda _a: None)
            udp.cancel(entry)
            udp.send(a_query("b.test"), server.getsockname(), 2.0, lambda _a: None)
            await asyncio.sleep(0)
            names = _names_arrived(server)
            udp.close()
            return names

    assert asyncio.run(run()) == ["b.test"]


def test_a_query_still_to_send_when_the_shared_socket_closes_never_goes_out():
    async def run():
        async with _resolver_socket() as server:
            udp, delivered = SharedUdp(), []
            udp.send(a_query("a.test"), server.getsockname(), 2.0, delivered.append)
            udp.close()
            await asyncio.sleep(0)
            return _names_arrived(server), delivered

    assert asyncio.run(run()) == ([], [])


class _Refusing(socket.socket):
    """A socket whose every send fails, as one with a full buffer does."""

    def send(self, *_args, **_kwargs) -> int:
        raise OSError(errno.ENOBUFS, "No buffer space available")


def test_a_udp_query_whose_datagram_cannot_go_out_goes_on_over_tcp_at_once(resolver, monkeypatch):
    opened = SharedUdp._open

    def refusing(self, server, now):
        upstream = opened(self, server, now)
        sock = upstream.sock
        upstream.sock = _Refusing(sock.family, sock.type, fileno=sock.detach())
        return upstream

    monkeypatch.setattr(SharedUdp, "_open", refusing)
    forwarder = forwarder_for([resolver], timeout=60.0)  # past ask_udp's wait: no answer
    started = time.monotonic()
    (answer,) = ask_udp(forwarder, a_query("a.test"), wait=10.0)
    assert time.monotonic() - started < 60.0  # not after the UDP wait, which never ends here
    assert "192.0.2.10" in dns.message.from_wire(answer).to_text()
    assert forwarder.udp.per_agent == {} and forwarder.tasks == set()


def test_queries_go_out_from_a_new_port_every_rotate_after_queries(monkeypatch):
    """RFC 5452: a spoofed answer must guess the port as well as the ID, and a port
    learned is soon gone; a replaced socket closes once its queries are answered."""
    monkeypatch.setattr(SharedUdp, "ROTATE_AFTER", 2)

    async def run():
        loop = asyncio.get_running_loop()
        async with _resolver_socket() as server:
            udp, delivered, ports = SharedUdp(), [], []
            for i in range(10):
                udp.send(a_query(f"q{i}.test"), server.getsockname(), 2.0, delivered.append)
                query, client = await loop.sock_recvfrom(server, 512)
                ports.append(client[1])
                server.sendto(_answer_to(query), client)
                await asyncio.sleep(0.02)
            left = _open_sockets(udp), dict(udp._retired), udp.pending[server.getsockname()]
            udp.close()
            return delivered, ports, left

    delivered, ports, left = asyncio.run(run())
    assert len(delivered) == 10 and None not in delivered
    # Two queries a socket; the next socket is opened while the last is still open, so
    # its port differs (a socket closed earlier may have freed the same port by chance).
    assert all(ports[i] == ports[i + 1] for i in range(0, 10, 2))
    assert all(ports[i] != ports[i + 1] for i in range(1, 9, 2))
    assert left == (1, {}, {})


def test_a_socket_is_replaced_by_age_too(monkeypatch):
    """A port learned while the dialer is quiet is gone by its next query."""
    monkeypatch.setattr(SharedUdp, "ROTATE_AGE", 0.5)

    async def run():
        loop = asyncio.get_running_loop()
        async with _resolver_socket() as server:
            udp, ports = SharedUdp(), []
            # b right after a (well within the age), c after the age has passed
            for name, pause in (("a.test", 0), ("b.test", 0.6), ("c.test", 0)):
                udp.send(a_query(name), server.getsockname(), 2.0, lambda _answer: None)
                query, client = await loop.sock_recvfrom(server, 512)
                ports.append(client[1])
                server.sendto(_answer_to(query), client)
                await asyncio.sleep(pause)
            udp.close()
            return ports

    first, second, third = asyncio.run(run())
    assert first == second != third


def test_an_answer_for_a_replaced_sockets_query_is_taken_only_on_that_socket(monkeypatch):
    """The right ID and question sent to the new port is ignored; the replaced socket
    stays open for its query and takes the answer, then closes."""
    monkeypatch.setattr(SharedUdp, "ROTATE_AFTER", 1)

    async def run():
        loop = asyncio.get_running_loop()
        async with _resolver_socket() as server:
            udp, delivered = SharedUdp(), []
            udp.send(a_query("a.test"), server.getsockname(), 2.0, delivered.append)
            query_a, port_a = await loop.sock_recvfrom(server, 512)
            udp.send(a_query("b.test"), server.getsockname(), 2.0, delivered.append)
            query_b, port_b = await loop.sock_recvfrom(server, 512)
            server.sendto(_answer_to(query_a), port_b)  # a's answer to b's socket
            await asyncio.sleep(0.1)
            misdelivered, open_then = list(delivered), _open_sockets(udp)
            server.sendto(_answer_to(query_a), port_a)
            server.sendto(_answer_to(query_b), port_b)
            await asyncio.sleep(0.1)
            open_after = _open_sockets(udp)
            udp.close()
            return port_a != port_b, misdelivered, open_then, open_after, delivered

    replaced, misdelivered, open_then, open_after, delivered = asyncio.run(run())
    assert replaced and misdelivered == [] and open_then == 2 and open_after == 1
    names = [dns.message.from_wire(d).question[0].name.to_text() for d in delivered]
    assert names == ["a.test.", "b.test."]


def test_a_replaced_socket_closes_when_its_query_times_out_or_is_cancelled(monkeypatch):
    monkeypatch.setattr(SharedUdp, "ROTATE_AFTER", 1)

    async def run():
        async with _resolver_socket() as server:
            udp, delivered = SharedUdp(), []
            udp.send(a_query("a.test"), server.getsockname(), 0.1, delivered.append)
            b = udp.send(a_query("b.test"), server.getsockname(), 2.0, delivered.append)
            udp.send(a_query("c.test"), server.getsockname(), 2.0, delivered.append)
            opened = _open_sockets(udp)
            await asyncio.sleep(0.25)  # a times out: its socket closes
            after_timeout = _open_sockets(udp)
            udp.cancel(b)  # b is given up: its socket closes
            after_cancel = _open_sockets(udp)
            udp.close()
            return opened, after_timeout, after_cancel, delivered

    assert asyncio.run(run()) == (3, 2, 1, [None])


def test_close_closes_replaced_sockets_and_a_later_cancel_is_quiet(monkeypatch):
    """Forwarder.close() closes the UDP side, then its tasks' exchanges end."""
    monkeypatch.setattr(SharedUdp, "ROTATE_AFTER", 1)

    async def run():
        async with _resolver_socket() as server:
            udp = SharedUdp()
            task = asyncio.create_task(udp.exchange(a_query("a.test"), server.getsockname(), 2))
            await asyncio.sleep(0.01)
            udp.send(a_query("b.test"), server.getsockname(), 2.0, lambda _answer: None)
            retired = list(udp._retired)
            udp.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return retired, _open_sockets(udp), udp._retired

    retired, still_open, left = asyncio.run(run())
    assert len(retired) == 1 and retired[0].sock.fileno() == -1
    assert still_open == 0 and left == {}


def test_past_max_replaced_the_oldest_replaced_sockets_queries_are_given_up(monkeypatch):
    """Queries that are never answered cannot hold replaced sockets open without bound:
    past MAX_REPLACED the oldest is closed and its query delivered as unanswered."""
    monkeypatch.setattr(SharedUdp, "ROTATE_AFTER", 1)
    monkeypatch.setattr(SharedUdp, "MAX_REPLACED", 2)

    async def run():
        async with _resolver_socket() as server:
            udp, delivered = SharedUdp(), {}
            for name in ("a.test", "b.test", "c.test", "d.test"):
                udp.send(
                    a_query(name), server.getsockname(), 2.0,
                    lambda answer, name=name: delivered.setdefault(name, answer),
                )  # fmt: skip
            left = _open_sockets(udp), len(udp._retired), len(udp.pending[server.getsockname()])
            await asyncio.sleep(0)
            arrived = _names_arrived(server)
            udp.close()
            return delivered, left, arrived

    # a's socket was closed before the turn ended: a never went out.
    assert asyncio.run(run()) == ({"a.test": None}, (3, 2, 3), ["b.test", "c.test", "d.test"])


def test_when_no_new_socket_opens_the_old_port_goes_on_a_while_then_not_at_all(monkeypatch):
    """Out of descriptors, say: rotation is tried on every query; past twice its share
    the socket takes no more (the query goes on over TCP) rather than keep its port."""
    monkeypatch.setattr(SharedUdp, "ROTATE_AFTER", 2)
    real_open = SharedUdp._open

    def first_only(self, server, now):
        if self.sockets:
            raise OSError(24, "Too many open files")
        return real_open(self, server, now)

    monkeypatch.setattr(SharedUdp, "_open", first_only)

    async def run():
        async with _resolver_socket() as server:
            udp = SharedUdp()
            sent = [
                udp.send(a_query(f"q{i}.test"), server.getsockname(), 2.0, lambda _a: None)
                for i in range(6)
            ]
            udp.close()
            return [entry is not None for entry in sent]

    assert asyncio.run(run()) == [True, True, True, True, False, False]


def test_an_agents_share_holds_on_the_slow_path_after_a_timeout_too(monkeypatch):
    """Queries that time out go on in a task (TCP, the next resolvers): they still count
    against their agent, so a flood of names that never resolve cannot hold more."""
    monkeypatch.setattr(SharedUdp, "MAX_PENDING_PER_AGENT", 2)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second,
    ):
        for silent in (first, second):
            silent.bind(("127.0.0.1", 0))  # takes queries, never answers (nor TCP)
            silent.setblocking(False)
        forwarder = forwarder_for([first.getsockname(), second.getsockname()], timeout=0.2)
        key = "default/agent-a"

        async def run():
            loop = asyncio.get_running_loop()
            for i in range(2):
                forwarder.handle_udp(a_query(f"q{i}.test"), ("10.0.0.2", 5353), A, print)
            for _ in range(2):  # both time out on the first, go on to the second
                await asyncio.wait_for(loop.sock_recv(second, 512), 5)
            still_full = forwarder.udp.full(key)
            forwarder.handle_udp(a_query("q2.test"), ("10.0.0.2", 5353), A, print)
            await asyncio.sleep(0.05)
            reached = []
            for silent in (first, second):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        reached.append(silent.recv(512))
            forwarder.close()
            return still_full, reached

        still_full, reached = asyncio.run(run())
    first_names = [parse_query(w).name for w in reached]
    assert still_full and "q2.test" not in first_names


def test_a_closed_forwarder_leaves_no_socket_task_or_pending_query():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        forwarder = forwarder_for([silent.getsockname()], timeout=0.1)

        async def run():
            forwarder.handle_udp(a_query("a.test"), ("10.0.0.2", 5353), A, print)
            forwarder.close()
            await asyncio.sleep(0.3)  # past the timeout: nothing may go on
            forwarder.handle_udp(a_query("b.test"), ("10.0.0.2", 5353), A, print)
            await asyncio.sleep(0.05)
            return forwarder.tasks, forwarder.udp.sockets, forwarder.udp.pending

        assert asyncio.run(run()) == (set(), {}, {})


def test_a_report_gateway_records_no_query_it_drops_for_the_agents_share(monkeypatch):
    """Over its share the query goes nowhere: no "let through" record may say otherwise."""
    monkeypatch.setattr(SharedUdp, "MAX_PENDING_PER_AGENT", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        forwarder = forwarder_for([silent.getsockname()], mode="Filtered", timeout=2.0)
        forwarder.state.policy = dataclasses.replace(forwarder.state.policy, mode="Report")

        async def run():
            for name in ("evil-1.attacker.test", "evil-2.attacker.test"):
                forwarder.handle_udp(a_query(name), ("10.0.0.2", 5353), A, print)
            forwarder.close()

        asyncio.run(run())
    names = [r.attributes["dns.question.name"] for r in forwarder.state.writer.emitted]
    assert names == ["evil-1.attacker.test"]
