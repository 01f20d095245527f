"""The L7 benchmark's client: HTTPS requests over keep-alive connections, one JSON line.

    python bench/_l7_client.py HOST PORT NAME CAFILE SECONDS CONNECTIONS

Stdlib only (it runs inside the agent's namespace).  Opens CONNECTIONS TLS connections
to HOST:PORT with SNI and Host NAME, trusting only CAFILE, and sends one warm-up request
on each (the handshakes and the gateway's first upstream connection are not measured).
Then every connection, each in its own thread, sends GET requests one after the other
for SECONDS and times each from the first byte written to the last byte of the answer
read (perf_counter).  Prints requests, seconds, errors and the latencies in µs.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time

SETTLE_S = 5.0  # how long to retry the first connection while the path comes up
TIMEOUT_S = 5.0


class Connection:
    def __init__(self, host: str, port: int, name: str, context: ssl.SSLContext) -> None:
        sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(sock, server_hostname=name)
        self.request = f"GET /bench HTTP/1.1\r\nHost: {name}\r\nUser-Agent: clrk-bench\r\n\r\n"
        self.request_bytes = self.request.encode()
        self.buffer = b""

    def get(self) -> bytes:
        """One request, its whole answer read (Content-Length framing); the body."""
        self.sock.sendall(self.request_bytes)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._recv()
        head, buffer = buffer[:end], buffer[end + 4 :]
        status = head[: head.find(b"\r\n")]
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"answer {status!r}")
        length = None
        for line in head.split(b"\r\n")[1:]:
            field, _, value = line.partition(b":")
            if field.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError("answer without Content-Length")
        while len(buffer) < length:
            buffer += self._recv()
        self.buffer = buffer[length:]
        return buffer[:length]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed by the other end")
        return chunk

    def close(self) -> None:
        self.sock.close()


def _open(host: str, port: int, name: str, context: ssl.SSLContext) -> Connection:
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            conn = Connection(host, port, name, context)
            conn.get()
            return conn
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def run(host: str, port: int, name: str, cafile: str, seconds: float, count: int) -> dict:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    conns = [_open(host, port, name, context) for _ in range(count)]
    latencies: list[list[int]] = [[] for _ in conns]
    errors: list[str] = []
    start = threading.Barrier(count + 1)
    ends = [0.0] * count
    clock = time.perf_counter_ns

    def worker(i: int) -> None:
        samples, conn = latencies[i], conns[i]
        start.wait()
        deadline = time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                t0 = clock()
                conn.get()
                samples.append((clock() - t0) // 1000)
        except Exception as exc:  # reported, and fails the bench
            errors.append(f"{type(exc).__name__}: {exc}")
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    for conn in conns:
        conn.close()
    samples = sorted(s for per in latencies for s in per)
    return {
        "requests": len(samples),
        "seconds": max(ends) - began,
        "connections": count,
        "errors": errors,
        "latency_us": samples,
    }


if __name__ == "__main__":
    host, port, name, cafile, seconds, count = sys.argv[1:7]
    print(json.dumps(run(host, int(port), name, cafile, float(seconds), int(count))))
