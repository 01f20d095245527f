"""clrk_cli.embedded.http_endpoint.respond: the /healthz and /metrics answers, and bad requests."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from clrk_cli.embedded.http_endpoint import respond


def health_ok():
    return {"ok": True, "children": {}}


def metrics():
    return b"clrk_x 1\n"


def split(answer: bytes) -> tuple[str, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


def test_healthz_and_metrics():
    status, body = split(respond(b"GET /healthz HTTP/1.1\r\n\r\n", health_ok, metrics))
    assert status == "HTTP/1.1 200 OK" and json.loads(body)["ok"] is True
    status, body = split(respond(b"GET /healthz HTTP/1.1\r\n\r\n", lambda: {"ok": False}, metrics))
    assert status.startswith("HTTP/1.1 503")
    status, body = split(respond(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", health_ok, metrics))
    assert status == "HTTP/1.1 200 OK" and body == b"clrk_x 1\n"
    assert respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", health_ok, metrics).endswith(b"\r\n\r\n")


def test_other_requests():
    assert split(respond(b"POST /metrics HTTP/1.1\r\n\r\n", health_ok, metrics))[0].endswith(
        "405 Method Not Allowed"
    )
    assert split(respond(b"GET /nope HTTP/1.1\r\n\r\n", health_ok, metrics))[0].endswith(
        "404 Not Found"
    )
    assert split(respond(b"\x00\xff\r\n\r\n", health_ok, metrics))[0].endswith("400 Bad Request")


@given(st.binary(max_size=200))
def test_any_bytes_get_an_http_answer(head):
    assert respond(head, health_ok, metrics).startswith(b"HTTP/1.1 ")
