"""The benchmark's stand-in for Envoy: a TCP server that accepts an optional PROXY v2
header, then serves one command per connection.

- `e...`: echo every byte (the command byte included) until the client closes.
- `b` LENGTH (8 bytes, big-endian) DATA: bulk: count DATA's bytes until LENGTH (or EOF),
  answer the count as 8 big-endian bytes.  No half-close: Squid's CONNECT tunnel closes
  both ways on the client's FIN, so the end is announced up front.

Stdlib only, so it runs as `ip netns exec NS python _sink.py HOST:PORT|/PATH...` (a path
is a Unix socket, like an Envoy listener under --envoy-socket-dir); it prints `ready`
once every address listens and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED = 16  # signature, version/command, family, 2-byte length
BUFFER = 1 << 20


class Sink(asyncio.BufferedProtocol):
    """Reads into one preallocated buffer (no per-read allocation on the bulk path)."""

    def __init__(self) -> None:
        self.buffer = bytearray(BUFFER)
        self.view = memoryview(self.buffer)
        self.head = b""  # bytes before the mode is known (a PROXY header, the command)
        self.mode: bytes | None = None
        self.count = 0  # bulk: the bytes after the command, LENGTH included
        self.length = b""  # bulk: LENGTH as far as it came
        self.answered = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.mode == b"b":
            self._count(self.view[:nbytes])
            return
        if self.mode == b"e":
            self.transport.write(bytes(self.view[:nbytes]))
            return
        self.head += bytes(self.view[:nbytes])
        self._parse_head()

    def _parse_head(self) -> None:
        head = self.head
        if head[:1] == b"\r":  # a PROXY v2 header: skip it whole
            if len(head) < FIXED:
                return
            if head[:12] != SIGNATURE:
                self.transport.abort()
                return
            total = FIXED + int.from_bytes(head[14:16], "big")
            if len(head) < total:
                return
            head = head[total:]
        if not head:
            self.head = b""
            return
        self.mode, self.head = head[:1], b""
        if self.mode == b"b":
            self._count(head[1:])
        elif self.mode == b"e":
            self.transport.write(head)
        else:
            self.transport.abort()

    def _count(self, data) -> None:
        if len(self.length) < 8:
            self.length += bytes(data[: 8 - len(self.length)])
        self.count += len(data)
        if len(self.length) == 8 and self.count >= 8 + int.from_bytes(self.length, "big"):
            self._answer()

    def _answer(self) -> None:
        if not self.answered:
            self.answered = True
            self.transport.write(max(0, self.count - 8).to_bytes(8, "big"))

    def eof_received(self) -> bool:
        if self.mode == b"b":
            self._answer()
        self.transport.close()
        return True


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(addresses: list[str]) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_unix_server(Sink, a, backlog=1024)
        if a.startswith("/")
        else await loop.create_server(Sink, *_address(a), reuse_address=True, backlog=1024)
        for a in addresses
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))
