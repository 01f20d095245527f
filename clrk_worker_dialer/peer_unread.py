"""How much of what a connected socket sent its peer has not read yet, asked of the kernel.

Envoy's listener filters (the PROXY protocol one reads our header) close a connection
whose FIN is already there when they look at it, even with the whole header and the
data before it waiting: a FIN must reach Envoy only once it has read the header.  The
relay asks here whether the next hop has read everything sent so far.

- A Unix stream socket: SIOCOUTQ, the memory its unread messages hold (0 once the
  peer has read them all, or closed).
- TCP: the peer socket's receive queue (sock_diag), when it lives in this network
  namespace (a loopback next hop); None when it cannot be seen.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios

SIOCOUTQ = termios.TIOCOUTQ
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NO_COOKIE = 0xFFFFFFFF
_NLMSG = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBBxI")  # family, protocol, extensions, pad, states
_QUEUES = struct.Struct("=II")  # rqueue, wqueue: after family..retrans (4), id (48), expires
_QUEUES_AT = _NLMSG.size + 4 + 48 + 4


def unread(sock: socket.socket) -> int | None:
    """Bytes (a Unix socket: their buffer memory) sent on `sock` its peer has not read;
    None when that cannot be known.  Raises OSError when `sock` is not connected."""
    if sock.family == socket.AF_UNIX:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # The peer's socket is the one from our peer's address to ours.
        return tcp_receive_queue(sock.family, sock.getpeername(), sock.getsockname())
    return None


def tcp_receive_queue(family: int, local: tuple, remote: tuple) -> int | None:
    """Unread bytes of this namespace's TCP socket bound to `local`, connected to
    `remote` ((address, port) each); None when there is no such socket."""

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
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as netlink:
        netlink.send(header + request)
        answer = netlink.recv(4096)
    if len(answer) < _QUEUES_AT + _QUEUES.size or _NLMSG.unpack_from(answer)[1] == NLMSG_ERROR:
        return None  # not in this namespace (or gone)
    return _QUEUES.unpack_from(answer, _QUEUES_AT)[0]
