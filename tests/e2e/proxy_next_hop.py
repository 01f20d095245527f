"""A stand-in for Envoy: accepts the dialer's PROXY v2 connections, logs the header and
splices the connection to the header's destination.

    python -m tests.e2e.proxy_next_hop --listen 127.0.0.1:15100 [--listen ...] --log FILE

Each connection appends one JSON line: {"listen", "src", "dst", "command", "tlvs"} with
TLV values decoded as text and keyed by hex type ("0xe2"), or {"listen", "error"} when
the header is invalid (the connection is then closed without dialing anything).
Prints "ready" once every listener is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from clrk_worker_dialer import proxy_v2

HEADER_TIMEOUT = 5.0


def header_record(listen: str, header: proxy_v2.ProxyHeader) -> dict:
    return {
        "listen": listen,
        "src": [header.source_ip, header.source_port],
        "dst": [header.destination_ip, header.destination_port],
        "command": header.command.name,
        "tlvs": {f"{t:#04x}": v.decode("utf-8", "replace") for t, v in header.tlvs},
    }


async def _read_header(reader: asyncio.StreamReader) -> tuple[proxy_v2.ProxyHeader, bytes]:
    data = b""
    while True:
        decoded = proxy_v2.decode(data)
        if decoded is not None:
            header, used = decoded
            return header, data[used:]
        chunk = await reader.read(65536)
        if not chunk:
            raise proxy_v2.ProxyHeaderError("connection closed inside the header")
        data += chunk


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class NextHop:
    def __init__(self, log_path: str) -> None:
        self._log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives with the process

    def _write(self, record: dict) -> None:
        self._log.write(json.dumps(record) + "\n")

    def handler(self, listen: str):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                header, rest = await asyncio.wait_for(_read_header(reader), HEADER_TIMEOUT)
            except (proxy_v2.ProxyHeaderError, TimeoutError, ConnectionError, ValueError) as e:
                self._write({"listen": listen, "error": f"{type(e).__name__}: {e}"})
                writer.close()
                return
            self._write(header_record(listen, header))
            if header.command != proxy_v2.Command.PROXY or header.destination_ip is None:
                writer.close()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    header.destination_ip, header.destination_port
                )
            except OSError as e:
                self._write({"listen": listen, "error": f"dial: {e}"})
                writer.close()
                return
            up_writer.write(rest)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            writer.close()
            up_writer.close()

        return handle


async def serve(listens: list[str], log_path: str) -> None:
    hop = NextHop(log_path)
    for listen in listens:
        host, _, port = listen.rpartition(":")
        # Envoy's backlog, not asyncio's 100: a flood test relays hundreds at once.
        await asyncio.start_server(hop.handler(listen), host.strip("[]"), int(port), backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests.e2e.proxy_next_hop")
    parser.add_argument("--listen", action="append", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.listen, args.log))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
