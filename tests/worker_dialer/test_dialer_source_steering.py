"""source_steering: a listener group where the kernel puts each source's connections in
one socket's accept queue (read back by accepting from each socket); an address in use
fails as for any listener."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from clrk_worker_dialer import source_steering
from clrk_worker_dialer.source_steering import BUCKETS, steered_listeners


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
