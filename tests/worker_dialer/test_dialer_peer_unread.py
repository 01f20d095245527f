"""What a socket's peer has not read yet, on real connected sockets (no mocks)."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest

from clrk_worker_dialer import peer_unread
from clrk_worker_dialer.peer_unread import (
    SOCK_DIAG_BY_FAMILY,
    ask_sock_diag,
    tcp_diag_request,
    tcp_receive_queue,
    unread,
)


def unix_pair(tmp_path: Path) -> tuple[socket.socket, socket.socket, socket.socket]:
    path = str(tmp_path / "hop.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.connect(path)
    return listener, ours, listener.accept()[0]


def tcp_pair(host: str) -> tuple[socket.socket, socket.socket, socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.bind((host, 0))
    except OSError:
        listener.close()
        pytest.skip(f"no {host}")
    listener.listen()
    ours = socket.create_connection(listener.getsockname()[:2])
    return listener, ours, listener.accept()[0]


@pytest.fixture(params=["unix", "127.0.0.1", "::1"])
def pair(request, tmp_path):
    listener, ours, theirs = (
        unix_pair(tmp_path) if request.param == "unix" else tcp_pair(request.param)
    )
    yield ours, theirs
    for sock in (listener, ours, theirs):
        sock.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    return data


def test_unread_is_zero_until_something_is_sent_and_again_once_the_peer_read_it_all(pair):
    ours, theirs = pair
    assert unread(ours) == 0
    ours.sendall(b"h" * 99 + b"ping")
    assert unread(ours) > 0
    assert recv_exactly(theirs, 99) == b"h" * 99
    assert unread(ours) > 0  # the data after the header is still there
    assert recv_exactly(theirs, 4) == b"ping"
    assert unread(ours) == 0


def test_a_peer_that_closed_leaves_nothing_to_wait_for(pair):
    ours, theirs = pair
    ours.sendall(b"never read")
    theirs.close()  # over TCP a reset (it left data unread): ours is not connected
    if ours.family == socket.AF_UNIX:
        assert unread(ours) == 0
    else:
        with pytest.raises(OSError):
            unread(ours)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_no_tcp_socket_with_those_addresses_is_none(host):
    """A peer in another namespace or host cannot be seen: nothing to wait for."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as unused:
        unused.bind((host, 0))  # a port no connected socket has
        port = unused.getsockname()[1]
        assert tcp_receive_queue(tcp_diag_request(family, (host, port), (host, port))) is None


TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE = 19, 20, 2


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_what_the_peer_has_not_even_received_is_unread(host):
    """A peer whose accept queue is full drops what we send, and its half-open socket
    reports an empty queue: our own unacknowledged bytes count.  (Here they are queued
    in repair mode, which sends nothing.)"""
    listener, ours, theirs = tcp_pair(host)
    try:
        try:
            ours.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        except PermissionError:
            pytest.skip("repair mode needs CAP_NET_ADMIN")
        ours.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        ours.send(b"ping")
        peer = tcp_receive_queue(
            tcp_diag_request(ours.family, ours.getpeername(), ours.getsockname())
        )
        assert peer == 0
        assert unread(ours) == 4
    finally:
        for sock in (listener, ours, theirs):
            sock.close()  # (in repair mode: silently)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_listener_on_the_address_is_not_taken_for_the_peer(host):
    """With no connected socket from `local` to `remote`, the kernel answers with the
    listener on `local`, whose queue counts waiting connections, not unread bytes."""
    listener, ours, theirs = tcp_pair(host)
    try:
        with socket.socket(listener.family, socket.SOCK_STREAM) as unused:
            unused.bind((host, 0))  # a port no connection comes from
            request = tcp_diag_request(
                listener.family, listener.getsockname()[:2], unused.getsockname()[:2]
            )
            assert tcp_receive_queue(request) is None
    finally:
        for sock in (listener, ours, theirs):
            sock.close()


@pytest.mark.timeout(10)
def test_a_message_the_kernel_does_not_answer_is_no_answer_without_waiting():
    """(No NLM_F_REQUEST flag: the kernel takes it and answers nothing.)"""
    message = struct.pack("=IHHII", 16, SOCK_DIAG_BY_FAMILY, 0, 1, 0)
    assert ask_sock_diag(message) is None


def test_a_forked_child_asks_on_a_netlink_socket_of_its_own():
    """Else an answer would go to whichever of the two reads first."""
    listener, ours, theirs = tcp_pair("127.0.0.1")
    try:
        assert unread(ours) == 0  # asked on the parent's netlink socket
        parents = peer_unread._netlink
        assert parents is not None
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os._exit(0 if peer_unread._netlink is None and unread(ours) == 0 else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert peer_unread._netlink is parents
    finally:
        for sock in (listener, ours, theirs):
            sock.close()


def test_an_unconnected_socket_raises():
    with socket.socket() as sock, pytest.raises(OSError):
        unread(sock)
