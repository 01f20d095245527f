"""Linux socket options of transparent interception, and pure parsers of what they return.

TCP arrives through `REDIRECT`: the original destination is `SO_ORIGINAL_DST`
(`IP6T_SO_ORIGINAL_DST` for IPv6), a sockaddr.  UDP arrives through `TPROXY`: an
`IP_TRANSPARENT` socket with `IP_RECVORIGDSTADDR` gets the original destination as
ancillary data, and replies go out from an `IP_TRANSPARENT` socket bound to that address
so the agent sees the answer come from where it sent the datagram.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_RECVORIGDSTADDR = 20
IP_ORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = 74
IPV6_ORIGDSTADDR = 74
CMSG_SPACE = socket.CMSG_SPACE(28)


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """A struct sockaddr_in / sockaddr_in6 as the kernel returns it, or None."""
    if len(raw) < 8:
        return None
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return socket.inet_ntoa(raw[4:8]), port  # as str(IPv4Address), a tenth of the time
    if family == socket.AF_INET6 and len(raw) >= 24:
        address = ipaddress.IPv6Address(raw[8:24])
        if address.ipv4_mapped:
            return str(address.ipv4_mapped), port
        return str(address), port
    return None


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The destination a REDIRECTed TCP connection was sent to."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None  # not redirected (a direct connection to the dialer's port)
    return parse_sockaddr(raw)


def original_destination_cmsg(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """The original destination of a TPROXY datagram from recvmsg's ancillary data."""
    for level, kind, data in ancdata:
        if (level, kind) in (
            (socket.SOL_IP, IP_ORIGDSTADDR),
            (socket.IPPROTO_IPV6, IPV6_ORIGDSTADDR),
        ):
            return parse_sockaddr(data)
    return None


def set_transparent(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


def tproxy_udp_socket(host: str, port: int) -> socket.socket:
    """The receiving end of a TPROXY rule: transparent, reporting original destinations."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        set_transparent(sock)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def spoofed_reply_socket(src_ip: str, src_port: int) -> socket.socket:
    """A socket that sends from (src_ip, src_port), an address that is not ours."""
    family = socket.AF_INET6 if ":" in src_ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        set_transparent(sock)
        sock.bind((src_ip, src_port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_LINGER_NONE = struct.pack("ii", 1, 0)  # l_onoff 1, l_linger 0


def reset_on_close(sock: socket.socket) -> None:
    """SO_LINGER 0: closing sends a TCP RST (SPEC 5.3) instead of a graceful FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NONE)


def enable_orig_dst(sock: socket.socket) -> None:
    """Report the original destination of datagrams this socket receives."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
