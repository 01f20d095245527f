"""The demo's network: a host namespace (where `clrk up` runs) and an "internet"
namespace (dnsmasq + servers on documentation addresses), joined by a veth pair.  IP
forwarding stays off everywhere.  Every namespace, /etc/netns file and process it
starts is removed on close (a context manager), by name and by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from clrk.records.query import FlatRecord, iter_records
from clrk_cli.demo.netlab import (
    BuiltOnEnter,
    dnsmasq_args,
    make_certificates,
    sweep_stale,
    zone_names,
)
from clrk_cli.embedded.processes import stop_process

READY_TIMEOUT = 90.0
STOP_GRACE = 10.0
NETNS_ETC = Path("/etc/netns")
STALE = re.compile(r"^clrk-demo-p(\d+)-")
UPLINK = ("198.19.0.1", "198.19.0.2")  # host, internet (/30)
DNS_SERVER = "198.51.100.53"
ROUTES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
# The stand-ins: the API the policy allows, a database it allows, and what it must not reach.
ZONE = {
    "api.anthropic.com": {"A": ["203.0.113.10"], "ttl": 60},
    "pg.prod.internal": {"A": ["198.51.100.20"], "ttl": 60},
    "pastebin.com": {"A": ["192.0.2.66"], "ttl": 60},
    "evil.example": {"A": ["192.0.2.67"], "ttl": 60},
}
TLS_HOSTS = ("203.0.113.10", "192.0.2.66", "192.0.2.67")
POSTGRES = "198.51.100.20:5432"


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}`: {result.stderr.strip()}")


class World(BuiltOnEnter):
    def __init__(self, workdir: Path, *, log_requests: bool = False) -> None:
        self.workdir = workdir
        self.log_requests = log_requests  # the servers log each request's headers
        run = f"p{os.getpid()}"
        self.host = f"clrk-demo-{run}-host"
        self.inet = f"clrk-demo-{run}-inet"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []

    def _build(self) -> None:
        sweep_stale(STALE)  # what a killed demo left: its namespaces and processes
        host, inet = self.host, self.inet
        for name in (host, inet):
            _run(["ip", "netns", "add", name])
            self._namespaces.append(name)
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        _run(
            [
                "ip",
                "-n",
                host,
                "link",
                "add",
                "up0",
                "type",
                "veth",
                "peer",
                "name",
                "down0",
                "netns",
                inet,
            ]
        )
        _run(["ip", "-n", host, "addr", "add", f"{UPLINK[0]}/30", "dev", "up0"])
        _run(["ip", "-n", inet, "addr", "add", f"{UPLINK[1]}/30", "dev", "down0"])
        for address in (*TLS_HOSTS, POSTGRES.split(":")[0], DNS_SERVER):
            _run(["ip", "-n", inet, "addr", "add", f"{address}/32", "dev", "lo"])
        _run(["ip", "-n", host, "link", "set", "up0", "up"])
        _run(["ip", "-n", inet, "link", "set", "down0", "up"])
        for net in ROUTES:
            _run(["ip", "-n", host, "route", "add", net, "via", UPLINK[1]])
        # The dialer forwards DNS to the resolvers of the namespace it runs in.
        etc = NETNS_ETC / host
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {DNS_SERVER}\n")
        certs = make_certificates(self.workdir, zone_names(ZONE), list(TLS_HOSTS))
        self.certs = certs
        args = [
            "--log",
            str(self.workdir / "servers.jsonl"),
            "--cert",
            str(certs["cert"]),
            "--key",
            str(certs["key"]),
            "--echo",
            POSTGRES,
        ]
        for address in TLS_HOSTS:
            args += ["--tls", f"{address}:443", "--http", f"{address}:80"]
        if self.log_requests:
            args.append("--log-requests")
        servers = self._start(
            self.inet,
            [sys.executable, "-m", "clrk_cli.demo.servers", *args],
            stdout=subprocess.PIPE,
        )
        dns_log = str(self.workdir / "dnsmasq.log")
        self._start(self.inet, dnsmasq_args(ZONE, DNS_SERVER, dns_log))
        if not self.wait_line(servers, "ready", 20):
            raise RuntimeError("the demo servers did not start")

    def _start(
        self, netns: str, argv: Sequence[str], *, stdout=subprocess.DEVNULL, log: Path | None = None
    ) -> subprocess.Popen:
        out = open(log, "ab") if log else None  # noqa: SIM115 - the child keeps its copy
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=out or subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops them in order
            )
        finally:
            if out:
                out.close()
        self._procs.append(proc)
        return proc

    def start_in_host(self, argv: Sequence[str], log: Path) -> subprocess.Popen:
        return self._start(self.host, argv, stdout=subprocess.PIPE, log=log)

    @staticmethod
    def wait_line(proc: subprocess.Popen, line: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                return False
            got = proc.stdout.readline()
            if not got:
                return False
            if got.strip() == line:
                return True
        return False

    @staticmethod
    def records(path: Path) -> list[FlatRecord]:
        return list(iter_records(str(path))) if path.exists() else []

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc, STOP_GRACE)
            if proc.stdout:
                proc.stdout.close()
        self._procs.clear()
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        self._namespaces.clear()
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only when empty
