"""The L7 benchmark's HTTPS upstream: HTTP/1.1 with keep-alive over TLS, one small answer.

    python bench/_l7_upstream.py HOST:PORT CERT KEY

Stdlib only, asyncio: it has to stay out of the way of what is measured, and a threaded
`http.server` spends more per request than the paths in front of it.  Every request
(GET; a body, if any, is skipped by its Content-Length) gets the same 200 with a
Content-Length, so the connection stays open.  Prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys

BODY = b"hello from the bench upstream\n" * 2
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
)
MAX_HEAD = 64 * 1024


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class Server(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""
        self.skip = 0  # body bytes of the current request still to discard

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        out = []
        close = False
        while True:
            if self.skip:
                taken = min(self.skip, len(buffer))
                buffer, self.skip = buffer[taken:], self.skip - taken
                if self.skip:
                    break
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buffer = buffer[:end], buffer[end + 4 :]
            try:
                self.skip = _content_length(head)
            except ValueError:
                close = True
                break
            out.append(RESPONSE)
            if b"connection: close" in head.lower():
                close = True
                break
        self.buffer = buffer
        if out:
            self.transport.write(b"".join(out))
        if close or len(buffer) > MAX_HEAD:
            self.transport.close()


async def serve(address: str, cert: str, key: str) -> None:
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        Server, host, int(port), ssl=context, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(serve(*sys.argv[1:4]))
