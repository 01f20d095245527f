"""The reload benchmark's prober, run inside the benchmark's namespace.

    python -m bench._reload_probe --socks 127.0.0.1:1080 --user bot --envoy 127.0.0.1:15100

Serves a TCP echo on 0.0.0.0:7 (the namespace routes 192.0.2.0/24 to its loopback, so
every address there answers).  Then, for each JSON line {"ip": ..., "port": ...,
"timeout": ...} on stdin, probes that destination every ~5 ms until both are true and
prints one JSON line with the wall-clock time each first became true:

- dialer: a SOCKS5 CONNECT (RFC 1929 user = the agent) gets reply 0 (allowed);
- envoy: a PROXY v2 header naming the destination, sent straight to Envoy's listener,
  is proxied: "ping" comes back from the echo server;
- path: "ping" sent through the SOCKS5 tunnel comes back (dialer -> Envoy -> echo).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import socketserver
import sys
import threading
import time

from clrk_worker_dialer.proxy_v2 import ProxyHeader, clrk_tlvs, encode

INTERVAL = 0.005
PROBE_TIMEOUT = 0.5


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def socks_probe(proxy: tuple[str, int], user: str, ip: str, port: int) -> tuple[bool, bool]:
    """(the dialer answers the CONNECT with reply 0, "ping" comes back through the
    tunnel: dialer -> Envoy -> echo)."""
    try:
        with socket.create_connection(proxy, timeout=PROBE_TIMEOUT) as s:
            s.sendall(b"\x05\x01\x02")  # username/password only
            if _recv_exact(s, 2) != b"\x05\x02":
                return False
            name = user.encode()
            s.sendall(b"\x01" + bytes([len(name)]) + name + b"\x00")
            if _recv_exact(s, 2) != b"\x01\x00":
                return False
            s.sendall(b"\x05\x01\x00\x01" + ipaddress.IPv4Address(ip).packed + port.to_bytes(2))
            if _recv_exact(s, 10)[:2] != b"\x05\x00":
                return False, False
            s.sendall(b"ping")
            return True, _recv_exact(s, 4) == b"ping"
    except OSError:
        return False, False


def envoy_proxies(envoy: tuple[str, int], agent: tuple[str, str], ip: str, port: int) -> bool:
    """True when Envoy proxies a PROXY-headed connection to ip:port (the echo answers)."""
    tlvs = clrk_tlvs(agent_namespace=agent[0], agent_name=agent[1], connection_id="0" * 32)
    header = encode(ProxyHeader("198.18.0.2", 40000, ip, port, tlvs))
    try:
        with socket.create_connection(envoy, timeout=PROBE_TIMEOUT) as s:
            s.sendall(header + b"ping")
            return _recv_exact(s, 4) == b"ping"
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socks", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--agent", required=True, help="NAMESPACE/NAME for the TLVs")
    parser.add_argument("--envoy", required=True)
    parser.add_argument("--echo-port", type=int, default=7)
    args = parser.parse_args()
    echo = _EchoServer(("0.0.0.0", args.echo_port), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    socks, envoy = _hostport(args.socks), _hostport(args.envoy)
    agent = tuple(args.agent.split("/", 1))
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        ip, port = job["ip"], job["port"]
        deadline = time.monotonic() + job.get("timeout", 10.0)
        found: dict[str, float | None] = {"dialer": None, "envoy": None, "path": None}
        once = job.get("once", False)  # one round: is it open already?
        while (once or time.monotonic() < deadline) and None in found.values():
            if found["path"] is None:
                allowed, echoed = socks_probe(socks, args.user, ip, port)
                now = time.time()
                if allowed and found["dialer"] is None:
                    found["dialer"] = now
                if echoed:
                    found["path"] = now
            if found["envoy"] is None and envoy_proxies(envoy, agent, ip, port):
                found["envoy"] = time.time()
            if once:
                break
            time.sleep(INTERVAL)
        print(json.dumps(found), flush=True)


if __name__ == "__main__":
    main()
