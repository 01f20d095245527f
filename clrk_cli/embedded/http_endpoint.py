"""The loopback HTTP endpoint of `clrk up`: `GET /healthz` (JSON, 503 unless every child is
healthy) and `GET /metrics` (Prometheus text).  `respond` is pure; `serve` is the shell.
Only the request line is read, bounded, so bad bytes cost one closed connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

MAX_HEAD = 8192
READ_TIMEOUT = 5.0
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _response(code: int, reason: str, body: bytes, content_type: str, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


def respond(head: bytes, health: Callable[[], dict], metrics: Callable[[], bytes]) -> bytes:
    parts = head.split(b"\n", 1)[0].strip().split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response(400, "Bad Request", b"bad request\n", "text/plain", False)
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response(405, "Method Not Allowed", b"read-only\n", "text/plain", False)
    head_only = method == b"HEAD"
    if target == b"/healthz":
        doc = health()
        body = json.dumps(doc, sort_keys=True).encode() + b"\n"
        code, reason = (200, "OK") if doc.get("ok") else (503, "Service Unavailable")
        return _response(code, reason, body, "application/json", head_only)
    if target == b"/metrics":
        return _response(200, "OK", metrics(), PROMETHEUS_TYPE, head_only)
    return _response(404, "Not Found", b"try /healthz or /metrics\n", "text/plain", head_only)


async def serve(
    host: str, port: int, health: Callable[[], dict], metrics: Callable[[], bytes]
) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            try:
                answer = respond(head, health, metrics)
            except Exception:  # a failing source must not take the endpoint down
                answer = _response(500, "Internal Server Error", b"error\n", "text/plain", False)
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD)
