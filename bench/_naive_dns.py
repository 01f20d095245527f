"""The DNS benchmark's naive baseline: the dialer's data path for a query with nothing
of its own work in it. It takes TPROXYed queries on the same kind of socket, forwards
each to the resolver under a new ID over one connected socket, and sends the answer
back from the address the agent asked. There is no parsing, no policy, no snooping,
no per-agent share and no timeouts: a lost query is simply forgotten.

It sends each datagram the moment it has it, as the naive way is; the dialer sends a
turn of its loop's datagrams together, so the resolver and the agent are woken once for
them. The dialer's rate against it shows what its own work costs beside a plain relay.

Run as `ip netns exec NS python _naive_dns.py HOST:PORT RESOLVER:PORT`. It prints
`ready` once it listens and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

from clrk_worker_dialer.sockopts import (
    enable_orig_dst,
    original_destination_cmsg,
    spoofed_reply_socket,
    tproxy_udp_socket,
)

CMSG_SPACE = socket.CMSG_SPACE(28)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class NaiveRelay:
    def __init__(self, loop: asyncio.AbstractEventLoop, listen, resolver) -> None:
        self.loop = loop
        self.inbound = tproxy_udp_socket(*listen)
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.setblocking(False)
        self.upstream.connect(resolver)
        self.replies: dict[tuple[str, int], socket.socket] = {}
        self.pending: dict[int, tuple[bytes, tuple[str, int], tuple[str, int]]] = {}
        self.next_id = 0
        loop.add_reader(self.inbound.fileno(), self.on_query, self.inbound)
        loop.add_reader(self.upstream.fileno(), self.on_answer)

    def on_query(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, ancdata, _flags, src = sock.recvmsg(65535, CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            dst = original_destination_cmsg(ancdata)
            if dst is None or len(data) < 12:
                continue
            ident = self.next_id = (self.next_id + 1) & 0xFFFF
            self.pending[ident] = (data[:2], src, dst)
            self.upstream.send(ident.to_bytes(2, "big") + data[2:])

    def on_answer(self) -> None:
        for _ in range(64):
            try:
                answer = self.upstream.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            waiting = self.pending.pop(int.from_bytes(answer[:2], "big"), None)
            if waiting is None:
                continue
            agent_id, src, dst = waiting
            reply = self.replies.get(dst)
            if reply is None:
                # TPROXY hands the agent's next queries to this socket (it is bound to
                # their destination), as it does the dialer's: it is read like the other.
                reply = self.replies[dst] = spoofed_reply_socket(*dst)
                enable_orig_dst(reply)
                self.loop.add_reader(reply.fileno(), self.on_query, reply)
            reply.sendto(agent_id + answer[2:], src)


def main(listen: str, resolver: str) -> None:
    loop = asyncio.new_event_loop()
    NaiveRelay(loop, _address(listen), _address(resolver))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print("ready", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
