"""The "internet" servers of the demo and of the end-to-end topology, in one asyncio process.

    python -m clrk_cli.demo.servers --log FILE [--echo H:P]... [--http H:P]... [--tls H:P]...
                                [--udp-echo H:P]... [--cert PEM --key PEM] [--log-requests]

Every accepted connection (and every UDP datagram) appends one JSON line
{"kind", "peer", "local"} to the log, so a test can assert that the upstream saw no
connection at all.  `--log-requests` adds a line {"kind": "request", "local", "head"}
per HTTP request with its request line and headers (what an upstream received, e.g. an
injected credential).  Prints "ready" once every listener is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys

HTTP_BODY = b"hello from the internet\n"


def split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Log:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def write(self, kind: str, peer: tuple, local: tuple, **extra: str) -> None:
        entry = {"kind": kind, "peer": list(peer[:2]), "local": list(local[:2]), **extra}
        self._file.write(json.dumps(entry) + "\n")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _http_handler(log: Log | None):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _http(reader, writer, log)

    return handle


async def _http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: Log | None = None
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if log is not None:
            peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
            log.write("request", peer, local, head=head.decode("latin-1"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(HTTP_BODY), HTTP_BODY)
        )
        await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError):
        pass
    finally:
        writer.close()


def _logged(kind: str, log: Log, handler):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log.write(kind, writer.get_extra_info("peername"), writer.get_extra_info("sockname"))
        await handler(reader, writer)

    return handle


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, log: Log, local: tuple) -> None:
        self.log, self.local = log, local

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.log.write("udp-echo", addr, self.local)
        self.transport.sendto(data, addr)


def _socket(host: str, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    return sock


BACKLOG = 4096  # a burst from a flood test must not overflow an upstream's queue


async def serve(args: argparse.Namespace) -> None:
    log = Log(args.log)
    tls = None
    if args.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
        tls.set_alpn_protocols(["http/1.1"])
    servers = []
    http = _http_handler(log if args.log_requests else None)
    for kind, addresses, handler, context in (
        ("echo", args.echo, _echo, None),
        ("http", args.http, http, None),
        ("tls", args.tls, http, tls),
    ):
        for address in addresses:
            sock = _socket(*split_hostport(address), socket.SOCK_STREAM)
            servers.append(
                await asyncio.start_server(
                    _logged(kind, log, handler), sock=sock, ssl=context, backlog=BACKLOG
                )
            )
    loop = asyncio.get_running_loop()
    for address in args.udp_echo:
        sock = _socket(*split_hostport(address), socket.SOCK_DGRAM)
        await loop.create_datagram_endpoint(
            lambda s=sock: _UdpEcho(log, s.getsockname()), sock=sock
        )
    print("ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clrk_cli.demo.servers")
    parser.add_argument("--log", required=True)
    for option in ("--echo", "--http", "--tls", "--udp-echo"):
        parser.add_argument(option, action="append", default=[])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--log-requests", action="store_true")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
