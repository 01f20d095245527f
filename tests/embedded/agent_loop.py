"""An agent for the restart tests: every 50 ms, one HTTP GET to an allowed and one to a
denied host; prints one JSON line per attempt until stdin closes.  Run via `clrk run`."""

import json
import socket
import sys
import threading
import time

ALLOWED, DENIED = sys.argv[1], sys.argv[2]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()


def get(host: str) -> str:
    try:
        with socket.create_connection((host, 80), timeout=2) as s:
            s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return "ok" if b" 200 " in data.split(b"\r\n", 1)[0] else "refused"
    except OSError:
        return "refused"


while not stop.is_set():
    for target, kind in ((ALLOWED, "allowed"), (DENIED, "denied")):
        print(json.dumps({"t": time.monotonic(), "kind": kind, "result": get(target)}), flush=True)
    time.sleep(0.05)
