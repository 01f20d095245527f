"""A read-only status page of the control plane: `GET /status` -> JSON, on loopback.

It says which manifest set is in force, what is wrong with the latest read of the files
(one line per error: file, document, kind/name, field, message) and, per gateway, which
versions its Envoy acknowledged or rejected (with Envoy's message).

Pure core (`status_document`, `respond`) and a thin asyncio shell (`serve_status`).  The
request parser reads only the request line, refuses anything but GET/HEAD of known
paths, and bounds what it reads, so bad bytes cost one closed connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping

from clrk_xds.ads import TypeStatus
from clrk_xds.provider import ProviderStatus

MAX_HEAD = 8192  # bytes of request head read before giving up
READ_TIMEOUT = 5.0

StatusSource = Callable[[], dict]


def _type_short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def status_document(provider: ProviderStatus, ads: Mapping[str, Mapping[str, TypeStatus]]) -> dict:
    """The JSON-able status: provider state and per-node ADS ACK/NACK state."""
    nodes = {}
    for node in sorted(ads):
        nodes[node] = {
            _type_short(type_url): {
                "type_url": type_url,
                "acked_version": st.acked_version,
                "nacked_version": st.nacked_version,
                "nack_message": st.nack_message,
            }
            for type_url, st in sorted(ads[node].items())
        }
    return {
        "version": provider.version,
        "blocked": provider.blocked,
        "errors": list(provider.errors),
        "gateways": list(provider.gateways),
        "nodes": nodes,
    }


def _response(code: int, reason: str, body: bytes, content_type: str, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {code} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


def respond(request_head: bytes, source: StatusSource) -> bytes:
    """The whole HTTP response to one request head (request line + headers)."""
    line = request_head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response(400, "Bad Request", b"bad request\n", "text/plain", False)
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response(405, "Method Not Allowed", b"read-only\n", "text/plain", False)
    head_only = method == b"HEAD"
    if target in (b"/status", b"/status/"):
        body = json.dumps(source(), indent=2, sort_keys=True).encode() + b"\n"
        return _response(200, "OK", body, "application/json", head_only)
    return _response(404, "Not Found", b"try /status\n", "text/plain", head_only)


async def _handle(
    source: StatusSource, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        writer.write(respond(head, source))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
        pass  # a client that never sends a full head just gets closed
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def serve_status(listen: str, source: StatusSource) -> asyncio.Server:
    """Start serving on `host:port` (port 0 picks one); the caller closes the server."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(source, reader, writer)

    return await asyncio.start_server(handle, host, int(port), limit=MAX_HEAD)
