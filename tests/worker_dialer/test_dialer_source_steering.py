"""source_steering: a listener group where the kernel puts each source's connections in
one socket's accept queue (read back by accepting from each socket); an address in use
fails as for any listener."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from clrk_worker_dialer import source_steering
from clrk_worker_dialer.redirect_rules import spec_for_index
from clrk_worker_dialer.source_steering import BUCKETS, steered_listeners
from tests.netns_helpers import scratch_netns

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a network namespace")


def _accepted(sock: socket.socket) -> list[str]:
    sources = []
    while True:
        try:
            conn, peer = sock.accept()
        except BlockingIOError:
            return sources
        conn.close()
        sources.append(peer[0])


def test_each_sources_connections_wait_in_one_socket_and_sandbox_neighbours_in_others():
    socks = steered_listeners(("127.0.0.1", 0), 64, buckets=4)
    port = socks[0].getsockname()[1]
    assert {sock.getsockname()[1] for sock in socks} == {port}
    clients = []
    try:
        # .2, .6, .10, .14: the agent side of four neighbouring /30 links.
        for source, count in (("127.0.0.2", 5), ("127.0.0.6", 3), ("127.0.0.10", 2),
                              ("127.0.0.14", 1), ("127.0.0.2", 2)):  # fmt: skip
            for _ in range(count):
                client = socket.socket()
                client.bind((source, 0))
                client.connect(("127.0.0.1", port))
                clients.append(client)
        queues = sorted((_accepted(sock) for sock in socks), key=len)
    finally:
        for sock in [*socks, *clients]:
            sock.close()
    assert queues == [["127.0.0.14"], ["127.0.0.10"] * 2, ["127.0.0.6"] * 3, ["127.0.0.2"] * 7]


def test_what_a_listener_accepts_comes_with_nagle_off():
    listeners = steered_listeners(("127.0.0.1", 0), 16, buckets=1)
    try:
        with socket.create_connection(listeners[0].getsockname()):
            listeners[0].setblocking(True)
            conn, _peer = listeners[0].accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        for listener in listeners:
            listener.close()


def test_ipv6_listeners_take_their_program_too():
    socks = steered_listeners(("::1", 0), 64)
    try:
        assert len(socks) == BUCKETS
        assert all(sock.family == socket.AF_INET6 for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_an_address_already_listened_on_fails_instead_of_joining_the_group_there():
    socks = steered_listeners(("127.0.0.1", 0), 64)
    try:
        with pytest.raises(OSError) as raised:
            steered_listeners(("127.0.0.1", socks[0].getsockname()[1]), 64)
        assert raised.value.errno == errno.EADDRINUSE
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("refusal", [errno.ENOPROTOOPT, errno.EINVAL])
def test_a_kernel_refusing_reuseport_gets_one_plain_listener_with_a_warning(
    monkeypatch, caplog, refusal
):
    real = source_steering.listen_socket

    def refusing(addr, backlog, *, reuseport=False):
        if reuseport:
            raise OSError(refusal, os.strerror(refusal))
        return real(addr, backlog)

    monkeypatch.setattr(source_steering, "listen_socket", refusing)
    socks = steered_listeners(("127.0.0.1", 0), 64)
    try:
        assert len(socks) == 1
        client = socket.create_connection(socks[0].getsockname())
        client.close()
    finally:
        for sock in socks:
            sock.close()
    assert "cannot steer connections by source" in caplog.text


def test_a_port_taken_while_the_group_is_made_still_fails(monkeypatch):
    def taken(addr, backlog, *, reuseport=False):
        if reuseport:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return real(addr, backlog)

    real = source_steering.listen_socket
    monkeypatch.setattr(source_steering, "listen_socket", taken)
    with pytest.raises(OSError) as raised:
        steered_listeners(("127.0.0.1", 0), 64)
    assert raised.value.errno == errno.EADDRINUSE


# Run inside a scratch namespace holding the sandbox slots' agent addresses: which socket
# of a steered group (by index) each source's connection waits in.
_PROBE = """
import json, socket, sys
from clrk_worker_dialer.source_steering import steered_listeners
listen, sources = sys.argv[1], sys.argv[2:]
socks = steered_listeners((listen, 0), 64)
port, clients, index = socks[0].getsockname()[1], [], {}
for source in sources:
    client = socket.socket(socks[0].family)
    client.bind((source, 0))
    client.connect((listen, port))
    clients.append(client)
for i, sock in enumerate(socks):
    while True:
        try:
            conn, peer = sock.accept()
        except BlockingIOError:
            break
        index[peer[0]] = i
        conn.close()
print(json.dumps({"sockets": len(socks), "index": index}))
"""


def _slot_sockets(family: int, slots: range) -> dict[int, int]:
    """Sandbox slot -> the socket of a real steered group its agent's connection waited
    in, with the slots' own addresses (as `clrk run` gives them) in a scratch namespace."""
    specs = {slot: spec_for_index(slot, "x", tcp_port=1, udp_port=1, dns_port=1) for slot in slots}
    v6 = family == socket.AF_INET6
    sources = {(spec.agent_v6 if v6 else spec.agent_v4): slot for slot, spec in specs.items()}
    listen = specs[slots[0]].host_v6 if v6 else specs[slots[0]].host_v4
    with scratch_netns(f"clrk-steer-{os.getpid()}") as ns:
        for address in [listen, *sources]:
            extra = ["nodad"] if v6 else []
            subprocess.run(
                [
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    f"{address}/{128 if v6 else 32}",
                    "dev",
                    "lo",
                    *extra,
                ],
                check=True,
            )
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _PROBE, listen, *sources],
            capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2],
        )  # fmt: skip
    probed = json.loads(out.stdout)
    assert probed["sockets"] == BUCKETS, "the kernel did not take the steering program"
    return {sources[source]: index for source, index in probed["index"].items()}


@needs_root
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_sandbox_slots_1_to_16_wait_in_16_sockets_and_slot_17_shares_slot_1s(family):
    by_slot = _slot_sockets(family, range(1, 18))
    assert sorted(by_slot) == list(range(1, 18))  # every connection accepted once
    assert len({by_slot[slot] for slot in range(1, 17)}) == 16
    assert by_slot[17] == by_slot[1]  # the limit the docs state: slots equal modulo 16
