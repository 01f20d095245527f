"""Listeners that keep agents' connections apart in the kernel: a SO_REUSEPORT group of
listening sockets, and a classic BPF program the kernel runs on each connection to
choose the socket by the source address.  Each agent's connections then wait in the
accept queue of its own socket, so a flood from one fills that queue, never the one
every other agent's connections wait in (`fair_accept` takes them in turns from there).

Sandbox links are /30s whose agent side is always .2 (and /64s whose agent is always
::2), so the program keys on the bits that differ between sandboxes: the IPv4 source
without its last two bits, the IPv6 source's second and last 32 bits together.  Where
the kernel refuses SO_REUSEPORT or the program, one listener serves all, as before.

The guarantee is per socket, not per agent: sandbox slot N (198.18.0.0/15 + 4N,
fd63:6c72:6b00:N::/64) lands in socket N mod 16 in IPv4 and (N xor 2) mod 16 in IPv6,
so slots 1 and 17 share a socket and its queue, and a flood holds up only the agents
of its own socket: no one else with up to 16 sandboxes.  Sources that are not sandbox
links (`--agent-source` addresses, a pod network) are spread by the same bits: addresses
within one /30 always share, and so do any two whose IPv4 >> 2 are equal modulo 16.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import struct

from clrk_runtime.logs import fields

log = logging.getLogger("clrk.dialer")

BUCKETS = 16
SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h
SKF_NET_OFF = -0x100000  # linux/filter.h: offsets from the network header
_UNSUPPORTED = (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP)  # no SO_REUSEPORT here
# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
LD_W_ABS, TAX, XOR_X, RSH_K, MOD_K, RET_A = 0x20, 0x07, 0xAC, 0x74, 0x94, 0x16


def _load_net(offset: int) -> tuple[int, int, int, int]:
    return (LD_W_ABS, 0, 0, (SKF_NET_OFF + offset) & 0xFFFFFFFF)


def steering_program(family: int, buckets: int) -> list[tuple[int, int, int, int]]:
    """The instructions (code, jt, jf, k): the socket index from the source address."""
    if family == socket.AF_INET6:
        # saddr at offset 8 of the IPv6 header; words 1 and 3 of it.
        key = [_load_net(12), (TAX, 0, 0, 0), _load_net(20), (XOR_X, 0, 0, 0)]
    else:
        key = [_load_net(12), (RSH_K, 0, 0, 2)]  # saddr at offset 12 of the IPv4 header
    return [*key, (MOD_K, 0, 0, buckets), (RET_A, 0, 0, 0)]


def _attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code)  # the kernel copies it during the call
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def listen_socket(
    addr: tuple[str, int], backlog: int | None, *, reuseport: bool = False
) -> socket.socket:
    """A non-blocking TCP listener on addr (IPv6 only for an IPv6 address); bound only,
    not listening, without a backlog.  Its connections come with Nagle off (Linux
    copies TCP_NODELAY to what a listener accepts), as a relay or transport wants them:
    a setsockopt(2) once here rather than on each."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        if backlog is not None:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def steered_listeners(
    addr: tuple[str, int], backlog: int, buckets: int = BUCKETS
) -> list[socket.socket]:
    """`buckets` listeners on addr in one group, connections steered by source; a single
    listener where the kernel does not take the program."""
    # A plain bind first, never listening: an address something already listens on
    # fails as it always did, instead of this group joining another of the same user's
    # (port 0: the free port it got is the group's).
    with listen_socket(addr, None) as probe:
        port = probe.getsockname()[1]
    socks: list[socket.socket] = []
    try:
        for _ in range(buckets):
            socks.append(listen_socket((addr[0], port), backlog, reuseport=True))
        _attach(socks[0], steering_program(socks[0].family, buckets))
        return socks
    except OSError as exc:
        for sock in socks:
            sock.close()
        # A kernel without SO_REUSEPORT (or its program) serves all from one listener;
        # anything else (the port taken meanwhile) fails as for any listener.
        if len(socks) < buckets and exc.errno not in _UNSUPPORTED:
            raise
        log.warning(
            "cannot steer connections by source; one listener serves all agents",
            extra=fields(address=list(addr), error=str(exc)),
        )
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return [listen_socket(addr, backlog)]
