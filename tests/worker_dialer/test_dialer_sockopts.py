"""Parsers of what the kernel returns for transparent interception."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from clrk_worker_dialer.sockopts import (
    IP_ORIGDSTADDR,
    IPV6_ORIGDSTADDR,
    original_destination,
    original_destination_cmsg,
    parse_sockaddr,
)


def sockaddr_in(ip: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + socket.inet_aton(ip)
        + bytes(8)
    )


def sockaddr_in6(ip: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, ip)
        + bytes(4)
    )


def test_ipv4_and_ipv6_sockaddrs_parse():
    assert parse_sockaddr(sockaddr_in("192.0.2.10", 443)) == ("192.0.2.10", 443)
    assert parse_sockaddr(sockaddr_in6("2001:db8::1", 53)) == ("2001:db8::1", 53)
    assert parse_sockaddr(sockaddr_in6("::ffff:192.0.2.1", 80)) == ("192.0.2.1", 80)


def test_short_or_foreign_sockaddrs_are_none():
    assert parse_sockaddr(b"") is None
    assert parse_sockaddr(struct.pack("=H", socket.AF_UNIX) + bytes(20)) is None


def test_the_original_destination_is_found_among_other_ancillary_data():
    anc = [
        (socket.SOL_SOCKET, 29, b"x" * 8),
        (socket.SOL_IP, IP_ORIGDSTADDR, sockaddr_in("198.51.100.53", 53)),
    ]
    assert original_destination_cmsg(anc) == ("198.51.100.53", 53)
    anc6 = [(socket.IPPROTO_IPV6, IPV6_ORIGDSTADDR, sockaddr_in6("2001:db8::53", 53))]
    assert original_destination_cmsg(anc6) == ("2001:db8::53", 53)
    assert original_destination_cmsg([]) is None


def test_a_connection_that_was_not_redirected_reports_its_own_address_or_nothing():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            conn, _ = server.accept()
            with conn:
                # No conntrack NAT: the kernel either refuses or returns the local address.
                assert original_destination(conn) in (None, conn.getsockname())


@given(st.binary(max_size=64))
def test_parse_sockaddr_never_raises(raw):
    parse_sockaddr(raw)
