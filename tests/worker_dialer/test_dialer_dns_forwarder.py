"""The forwarder's upstream exchange and snooping against a real dnsmasq on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket

import dns.flags
import dns.message
import pytest

from clrk_worker_dialer.dns_binding import parse_query
from clrk_worker_dialer.dns_forwarder import SharedUdp, exchange
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
