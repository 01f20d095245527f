"""The L7 benchmark's access-log sink that drops every entry: Envoy's cost of its HTTP gRPC
access log without any record-server work behind it.

    python bench/_discard_sink.py HOST:PORT COUNT_FILE

Accepts `StreamAccessLogs` streams, reads each message as raw bytes, counts the HTTP
entries in it (a walk over two levels of protobuf tags, no parse) and drops it.  The
count goes to COUNT_FILE (replaced at most every 50 ms while it changes), so the bench
can check that the entries really arrived.  Prints "ready" once listening.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "envoy.service.accesslog.v3.AccessLogService"
HTTP_LOGS = 2  # StreamAccessLogsMessage.http_logs (HTTPAccessLogEntries)
LOG_ENTRY = 1  # HTTPAccessLogEntries.log_entry
WRITE_EVERY = 0.05  # seconds


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int):
    """(field number, value start, value end) of each length-delimited field; other
    wire types are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        kind = key & 7
        if kind == 0:
            _, pos = _varint(buf, pos)
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        elif kind == 2:
            size, pos = _varint(buf, pos)
            yield key >> 3, pos, pos + size
            pos += size
        else:
            raise ValueError(f"wire type {kind}")


def http_entries(message: bytes) -> int:
    """How many HTTP access-log entries a StreamAccessLogsMessage carries."""
    return sum(
        1
        for number, start, end in _fields(message, 0, len(message))
        if number == HTTP_LOGS
        for inner, _s, _e in _fields(message, start, end)
        if inner == LOG_ENTRY
    )


class Sink:
    def __init__(self, count_file: str) -> None:
        self.count_file, self.count, self.lock = count_file, 0, threading.Lock()
        self.changed = threading.Event()

    def stream(self, messages, _context) -> bytes:
        for message in messages:
            entries = http_entries(message)
            with self.lock:
                self.count += entries
            self.changed.set()
        return b""  # StreamAccessLogsResponse: empty

    def write_counts(self) -> None:
        while True:
            self.changed.wait()
            self.changed.clear()
            with self.lock:
                count = self.count
            temporary = f"{self.count_file}.tmp"
            with open(temporary, "w") as f:
                f.write(f"{count}\n")
            os.replace(temporary, self.count_file)
            threading.Event().wait(WRITE_EVERY)


def main() -> None:
    address, count_file = sys.argv[1], sys.argv[2]
    sink = Sink(count_file)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.stream_unary_rpc_method_handler(sink.stream)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"StreamAccessLogs": handler})]
    )
    if not server.add_insecure_port(address):
        raise SystemExit(f"cannot listen on {address}")
    server.start()
    threading.Thread(target=sink.write_counts, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
