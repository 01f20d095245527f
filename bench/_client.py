"""The benchmark's client programs, one per measurement, printing one JSON object.

Stdlib only: it runs inside a namespace as `ip netns exec NS python _client.py MODE ...`.
The same program measures the path through the dialer and the direct path, so the two
differ only in the path.

  deny HOST PORT COUNT             connect() -> reset, one at a time: latencies in µs
  cps HOST PORT SECONDS THREADS    connect / 1-byte echo / close, THREADS at once
  bulk HOST PORT MIB               one connection sends MIB MiB; the sink counts them
  dns HOST PORT COUNT WINDOW       A queries, WINDOW in flight, one UDP socket
  dnslat HOST PORT COUNT           A queries one at a time: round trips in µs
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time

CHUNK = 1 << 20
SETTLE_S = 3.0  # how long to retry the first connection while the path comes up


def _connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _echo_once(host: str, port: int) -> None:
    with _connect(host, port) as sock:
        sock.sendall(b"e")
        if sock.recv(1) != b"e":
            raise RuntimeError("no echo")


def _warm_up(host: str, port: int) -> None:
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            _echo_once(host, port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def deny(host: str, port: int, count: int) -> dict:
    samples, surprises = [], 0
    clock = time.perf_counter_ns
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        try:
            start = clock()
            try:
                # The reset can beat connect()'s own wake-up: it then fails with it.
                sock.connect((host, port))
                data = sock.recv(1)
            except ConnectionResetError:
                data = b""
            end = clock()
        finally:
            sock.close()
        if data:
            surprises += 1  # the connection was not refused
        samples.append((end - start) / 1000)
    return {"samples_us": samples, "not_refused": surprises}


def cps(host: str, port: int, seconds: float, threads: int) -> dict:
    _warm_up(host, port)
    counts = [0] * threads
    errors = [0] * threads
    deadline = time.perf_counter() + seconds

    def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            try:
                _echo_once(host, port)
                counts[i] += 1
            except (OSError, RuntimeError):
                errors[i] += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    return {"connections": sum(counts), "errors": sum(errors), "seconds": elapsed}


def bulk(host: str, port: int, mib: int) -> dict:
    _warm_up(host, port)
    chunk = memoryview(os.urandom(CHUNK))
    total = mib * CHUNK
    with _connect(host, port, timeout=60.0) as sock:
        started = time.perf_counter()
        sock.sendall(b"b" + total.to_bytes(8, "big"))
        for _ in range(mib):
            sock.sendall(chunk)
        answer = b""
        while len(answer) < 8:
            more = sock.recv(8 - len(answer))
            if not more:
                break
            answer += more
        elapsed = time.perf_counter() - started
    counted = int.from_bytes(answer, "big") if len(answer) == 8 else -1
    return {"bytes": total, "counted": counted, "seconds": elapsed}


def _query(qid: int, name: str) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def dns(host: str, port: int, count: int, window: int) -> dict:
    """Keep WINDOW queries in flight; a second without any answer counts the ones in
    flight as lost and refills the window."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    # Warm-up: the first answer proves the whole path is up.
    deadline = time.monotonic() + SETTLE_S
    sock.settimeout(0.2)
    while True:
        sock.send(_query(0, "warm.bench.example"))
        try:
            sock.recv(512)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    sock.settimeout(1.0)
    outstanding: set[int] = set()
    sent = answered = lost = 0

    def send_next() -> None:
        nonlocal sent
        qid = 1 + sent % 65000
        sock.send(_query(qid, f"q{sent}.bench.example"))
        outstanding.add(qid)
        sent += 1

    started = time.perf_counter()
    while sent < count and len(outstanding) < window:
        send_next()
    while outstanding:
        try:
            reply = sock.recv(512)
        except TimeoutError:
            lost += len(outstanding)
            outstanding.clear()
        else:
            qid = int.from_bytes(reply[:2], "big")
            if qid not in outstanding:
                continue  # a late answer to a query already counted lost
            outstanding.discard(qid)
            answered += 1
        while sent < count and len(outstanding) < window:
            send_next()
    elapsed = time.perf_counter() - started
    return {"answered": answered, "lost": lost, "seconds": elapsed}


def dns_latency(host: str, port: int, count: int) -> dict:
    """One query at a time (a new name each): the path's own latency, no queueing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.settimeout(SETTLE_S)
    sock.send(_query(0, "warm.bench.example"))
    sock.recv(512)
    sock.settimeout(1.0)
    samples, lost = [], 0
    clock = time.perf_counter_ns
    for n in range(count):
        qid = 1 + n % 65000
        start = clock()
        sock.send(_query(qid, f"l{n}.bench.example"))
        try:
            while int.from_bytes(sock.recv(512)[:2], "big") != qid:
                pass  # a late answer to an earlier query
        except TimeoutError:
            lost += 1
            continue
        samples.append((clock() - start) / 1000)
    return {"samples_us": samples, "lost": lost}


def main(argv: list[str]) -> None:
    mode, host, port, *rest = argv
    if mode == "deny":
        result = deny(host, int(port), int(rest[0]))
    elif mode == "cps":
        result = cps(host, int(port), float(rest[0]), int(rest[1]))
    elif mode == "bulk":
        result = bulk(host, int(port), int(rest[0]))
    elif mode == "dns":
        result = dns(host, int(port), int(rest[0]), int(rest[1]))
    elif mode == "dnslat":
        result = dns_latency(host, int(port), int(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
