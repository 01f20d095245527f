"""The demo's scripted agent (run by `clrk run` inside a sandbox): tries each destination
the way a compromised agent would, prints one JSON line per attempt.

    python -m clrk_cli.demo.agent NAME:PORT[:tls] ...

Standard library only: the demo runs its source with a Python any user may start, as
the sandboxed agent is no longer root.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys

TIMEOUT = 4.0
EXTRA_CA = "CLRK_DEMO_UPSTREAM_CA_PEM"  # the PEM itself: the agent may read no file of ours


def attempt(host: str, port: int, tls: bool) -> dict:
    out = {"target": f"{host}:{port}", "host": host, "port": port, "tls": tls}
    try:
        ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        return {**out, "ip": None, "outcome": "no DNS answer", "detail": str(exc)}
    out["ip"] = ip
    try:
        with socket.create_connection((ip, port), timeout=TIMEOUT) as sock:
            if tls:
                context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
                if os.environ.get(EXTRA_CA):  # the demo upstreams' CA (TLS passthrough)
                    context.load_verify_locations(cadata=os.environ[EXTRA_CA])
                with context.wrap_socket(sock, server_hostname=host) as tls_sock:
                    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                    tls_sock.sendall(request.encode())
                    status = tls_sock.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
                return {**out, "outcome": "connected", "detail": status}
            sock.sendall(b"ping\n")
            data = sock.recv(64)
            if not data:
                return {**out, "outcome": "refused", "detail": "closed"}
            return {**out, "outcome": "connected", "detail": f"echo {data!r}"}
    except ssl.SSLError as exc:
        return {**out, "outcome": "tls failed", "detail": exc.reason or str(exc)}
    except OSError as exc:
        return {**out, "outcome": "refused", "detail": exc.strerror or str(exc)}


def main(argv: list[str]) -> int:
    for spec in argv:
        host, port, *rest = spec.split(":")
        print(json.dumps(attempt(host, int(port), rest == ["tls"])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
