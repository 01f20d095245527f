"""The control plane's `GET /status`: the pure document and responder, and the real
server in a running ControlPlane (real files, real sockets, real reloads)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from clrk_xds.ads import TypeStatus
from clrk_xds.consistency import LISTENER
from clrk_xds.provider import ProviderStatus
from clrk_xds.server import ControlPlane
from clrk_xds.status_http import MAX_HEAD, respond, status_document

GATEWAY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp-out, protocol: TCP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: web}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{destinationHostnames: [example.com], ports: [{port: PORT}]}]}]
"""

PROVIDER = ProviderStatus(
    "v1", ("a.yaml: document 2: EgressL4Route/web: spec: bad",), True, ("default/gw",)
)


def _split(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_status_document_names_versions_errors_and_nacks():
    doc = status_document(
        PROVIDER,
        {"default/gw": {LISTENER: TypeStatus("v0", "v1", "listener 'x': bad regex")}},
    )
    assert doc["version"] == "v1" and doc["blocked"] is True
    assert doc["errors"] == list(PROVIDER.errors)
    assert doc["gateways"] == ["default/gw"]
    listener = doc["nodes"]["default/gw"]["Listener"]
    assert listener == {
        "type_url": LISTENER,
        "acked_version": "v0",
        "nacked_version": "v1",
        "nack_message": "listener 'x': bad regex",
    }
    json.dumps(doc)  # JSON-able


def test_get_status_returns_the_json_with_its_length():
    code, headers, body = _split(
        respond(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n", lambda: {"a": 1})
    )
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"a": 1}
    code, headers, body = _split(respond(b"HEAD /status?x=1 HTTP/1.0\r\n\r\n", lambda: {"a": 1}))
    assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (b"POST /status HTTP/1.1\r\n\r\n", 405),
        (b"DELETE /status HTTP/1.1\r\n\r\n", 405),
        (b"GET /other HTTP/1.1\r\n\r\n", 404),
        (b"GET /status\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"\r\n\r\n", 400),
    ],
)
def test_anything_else_is_refused_without_calling_the_source(head, code):
    def source():
        raise AssertionError("not asked")

    assert _split(respond(head, source))[0] == code


async def _http(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return out


async def _status(port: int) -> dict:
    code, _, body = _split(await _http(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert code == 200
    return json.loads(body)


async def _until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await predicate():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def test_a_running_control_plane_shows_the_last_good_version_and_every_error(tmp_path):
    manifests = tmp_path / "m.yaml"
    manifests.write_text(GATEWAY.replace("PORT", "443"))

    async def go():
        stop = asyncio.Event()
        listen = f"unix:{tmp_path / 'run' / 'control-plane.socket'}"
        plane = ControlPlane([manifests], listen, status_listen="127.0.0.1:0")
        task = asyncio.create_task(plane.serve(stop))
        try:
            await _until(lambda: asyncio.sleep(0, plane.status_port))
            first = await _status(plane.status_port)
            assert first["version"] and first["errors"] == [] and first["blocked"] is False
            assert first["gateways"] == ["default/gw"]
            assert first["nodes"] == {"default/gw": {}}  # no Envoy connected

            # Two errors in one edit: both are reported, the version in force stays.
            manifests.write_text(
                GATEWAY.replace("PORT", "99999").replace("protocol: TCP", "protocol: SCTP")
            )

            async def rejected():
                doc = await _status(plane.status_port)
                return doc if doc["blocked"] else None

            doc = await _until(rejected)
            assert doc["version"] == first["version"]
            assert len(doc["errors"]) >= 2, doc["errors"]
            assert all(str(manifests) in line for line in doc["errors"])
            assert any("spec.listeners" in line for line in doc["errors"])
            assert any("ports" in line for line in doc["errors"])

            # Bad bytes and an over-long head cost one connection, not the server.
            assert (await _http(plane.status_port, b"\x00\xff garbage\r\n\r\n")).startswith(
                b"HTTP/1.1 400"
            )
            assert await _http(plane.status_port, b"G" * (MAX_HEAD * 2)) == b""

            manifests.write_text(GATEWAY.replace("PORT", "8443"))

            async def fixed():
                doc = await _status(plane.status_port)
                return doc if not doc["blocked"] and doc["version"] != first["version"] else None

            assert (await _until(fixed))["errors"] == []
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(go())
