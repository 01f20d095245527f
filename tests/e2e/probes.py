"""Tiny stand-ins for the dialer that prove the interception rules, run inside `gw`.

    python -m tests.e2e.probes tcp --port P     # REDIRECT: prints SO_ORIGINAL_DST per connection
    python -m tests.e2e.probes udp --port P     # TPROXY: prints the original destination per
                                                # datagram and answers from that address

One JSON line per connection or datagram on stdout, after a first "ready" line. The
socket options here are exactly the ones the dialer needs (see the constants).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import select
import socket
import struct
import sys

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h, level SOL_IP
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h, level SOL_IPV6
IP_TRANSPARENT = 19  # level SOL_IP
IPV6_TRANSPARENT = 75  # level SOL_IPV6
IP_RECVORIGDSTADDR = 20  # level SOL_IP; cmsg type IP_ORIGDSTADDR == 20
IPV6_RECVORIGDSTADDR = 74  # level SOL_IPV6; cmsg type IPV6_ORIGDSTADDR == 74


def sockaddr(raw: bytes) -> tuple[str, int]:
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[4:8])), port
    return str(ipaddress.IPv6Address(raw[8:24])), port


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _listeners(port: int, kind: int) -> list[socket.socket]:
    socks = []
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            if family == socket.AF_INET:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        socks.append(sock)
    return socks


def tcp(port: int) -> None:
    socks = _listeners(port, socket.SOCK_STREAM)
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select(socks, [], [])
        for listener in ready:
            conn, peer = listener.accept()
            if conn.family == socket.AF_INET:
                raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            else:
                raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            _emit({"peer": list(peer[:2]), "original_dst": list(sockaddr(raw))})
            conn.sendall(b"redirected\n")
            conn.close()


def udp(port: int) -> None:
    socks = _listeners(port, socket.SOCK_DGRAM)
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select(socks, [], [])
        for sock in ready:
            data, ancdata, _, peer = sock.recvmsg(65536, socket.CMSG_SPACE(28))
            dst = None
            for level, kind, value in ancdata:
                if (level, kind) in ((socket.SOL_IP, 20), (socket.IPPROTO_IPV6, 74)):
                    dst = sockaddr(value)
            _emit({"peer": list(peer[:2]), "original_dst": list(dst) if dst else None})
            if dst is None:
                continue
            # Answer from the address the agent wrote to: a transparent socket may bind a
            # non-local address. SO_REUSEADDR lets it share the port with other flows.
            reply = socket.socket(sock.family, socket.SOCK_DGRAM)
            reply.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sock.family == socket.AF_INET:
                reply.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            else:
                reply.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            reply.bind(dst)
            reply.sendto(b"tproxied:" + data, peer[:2])
            reply.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests.e2e.probes")
    parser.add_argument("mode", choices=["tcp", "udp"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        (tcp if args.mode == "tcp" else udp)(args.port)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
