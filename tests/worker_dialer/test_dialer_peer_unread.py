"""What a socket's peer has not read yet, on real connected sockets (no mocks)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from clrk_worker_dialer.peer_unread import tcp_receive_queue, unread


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
        assert tcp_receive_queue(family, (host, port), (host, port)) is None


def test_an_unconnected_socket_raises():
    with socket.socket() as sock, pytest.raises(OSError):
        unread(sock)
