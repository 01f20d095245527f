"""How much of what a connected socket sent its peer has not read yet, asked of the kernel.

Envoy's listener filters (the PROXY protocol one reads our header) close a connection
whose FIN is already there when they look at it, even with the whole header and the
data before it waiting: a FIN must reach Envoy only once it has read the header.  The
relay asks here whether the next hop has read everything sent so far.

- A Unix stream socket: SIOCOUTQ, the memory its unread messages hold (0 once the
  peer has read them all, or closed).
- TCP: our own SIOCOUTQ first (bytes the peer has not acknowledged: a peer whose accept
  queue is full drops them, and its half-open socket reports an empty queue), then the
  peer socket's receive queue (sock_diag), when it lives in this network namespace (a
  loopback next hop); None when it cannot be seen.

A held FIN asks again and again (`PeerUnread`): the sock_diag request is built once,
and one netlink socket serves the process.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

SIOCOUTQ = termios.TIOCOUTQ
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NO_COOKIE = 0xFFFFFFFF
TCP_LISTEN = 10
_NLMSG = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBBxI")  # family, protocol, extensions, pad, states
_QUEUES = struct.Struct("=II")  # rqueue, wqueue: after family..retrans (4), id (48), expires
_QUEUES_AT = _NLMSG.size + 4 + 48 + 4
_STATE_AT = _NLMSG.size + 1  # idiag_state, after idiag_family


class PeerUnread:
    """What a connected socket sent its peer that the peer has not read (`left`)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.request: bytes | None = None  # sock_diag's, for TCP

    def left(self) -> int | None:
        """Bytes (a Unix socket: their buffer memory); None when that cannot be known.
        Raises OSError when the socket is not connected."""
        sock = self.sock
        if sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
            return None
        # (The ioctl costs a fifth of a sock_diag round trip: asked first.)
        left = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
        if left or sock.family == socket.AF_UNIX:
            return left
        if self.request is None:
            # The peer's socket is the one from our peer's address to ours.
            self.request = tcp_diag_request(sock.family, sock.getpeername(), sock.getsockname())
        return tcp_receive_queue(self.request)


def unread(sock: socket.socket) -> int | None:
    """`PeerUnread(sock).left()`, asked once."""
    return PeerUnread(sock).left()


def tcp_diag_request(family: int, local: tuple, remote: tuple) -> bytes:
    """The sock_diag request for this namespace's TCP socket bound to `local`, connected
    to `remote` ((address, port) each)."""

    def address(ip: str) -> bytes:
        return socket.inet_pton(family, ip).ljust(16, b"\0")

    request = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
        + struct.pack("!HH", local[1], remote[1])
        + address(local[0])
        + address(remote[0])
        + struct.pack("=III", 0, NO_COOKIE, NO_COOKIE)
    )
    header = _NLMSG.pack(_NLMSG.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    return header + request


def tcp_receive_queue(request: bytes) -> int | None:
    """Unread bytes of the socket `request` (`tcp_diag_request`) names; None when there is
    no such socket (the kernel then answers with a listener on its address, whose queue
    counts connections), or no answer came."""
    answer = ask_sock_diag(request)
    if (
        answer is None
        or len(answer) < _QUEUES_AT + _QUEUES.size
        or _NLMSG.unpack_from(answer)[1] == NLMSG_ERROR  # not in this namespace (or gone)
        or answer[_STATE_AT] == TCP_LISTEN
    ):
        return None
    return _QUEUES.unpack_from(answer, _QUEUES_AT)[0]


_netlink: socket.socket | None = None


def ask_sock_diag(message: bytes) -> bytes | None:
    """The kernel's answer to a sock_diag netlink message; None when there is none.  It
    answers within the send: the dialer's loop must never wait for one that is not there."""
    global _netlink
    if _netlink is None:
        _netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        _netlink.send(message)
        return _netlink.recv(4096, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:  # (its receive buffer overflowed: a fresh socket next time)
        _forget_netlink()
        return None


def _forget_netlink() -> None:
    """Also in a forked child: its answers would go to whichever process reads first."""
    global _netlink
    if _netlink is not None:
        _netlink.close()
        _netlink = None


os.register_at_fork(after_in_child=_forget_netlink)
