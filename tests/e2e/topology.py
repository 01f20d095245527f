"""The SPEC 10 end-to-end topology: real namespaces, real servers, real clients.

    agent sandbox(es) --veth--> gw (dialer, next hop / Envoy) --veth--> internet
                                                                     (dnsmasq, servers)

`gw` reaches the documentation ranges through its uplink; IP forwarding is off in every
namespace, so an agent reaches nothing unless something in `gw` carries its traffic.
Namespace names carry the creating PID (`clrk-e2e-p<pid>-...`) so concurrent runs never
collide and `sweep_stale_namespaces` can remove what a crashed run left.  Every process
is started through `Processes`, tracked by PID and ended on close.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clrk_cli.demo.netlab import (
    BuiltOnEnter,
    dnsmasq_args,
    make_certificates,
    sweep_stale,
    zone_names,
)
from clrk_cli.embedded.processes import stop_process
from clrk_worker_dialer.redirect_rules import spec_for_index
from clrk_worker_dialer.sandbox import Sandbox, create_sandbox

REPO = Path(__file__).resolve().parents[2]
RUN = f"p{os.getpid()}"
NETNS_PREFIX = "clrk-"
_STALE = re.compile(r"^clrk-[a-z0-9]+-p(\d+)-")
NETNS_ETC = Path("/etc/netns")

# The "internet": documentation-range hosts on the internet namespace's loopback.
HOSTS_V4 = ("192.0.2.10", "192.0.2.11", "192.0.2.12", "203.0.113.5", "203.0.113.6")
HOSTS_V6 = ("2001:db8:1::10", "2001:db8:1::11")
DNS_SERVER = "198.51.100.53"
INTERNET_ROUTES_V4 = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
INTERNET_ROUTES_V6 = ("2001:db8:1::/64",)
UPLINK = {"gw_v4": "198.19.0.1", "inet_v4": "198.19.0.2",
          "gw_v6": "2001:db8:fffe::1", "inet_v6": "2001:db8:fffe::2"}  # fmt: skip

ECHO_PORT = 7  # TCP and UDP echo on every internet host
HTTP_PORT = 80
TLS_PORT = 443

# The dialer's ports in gw (what the sandbox rules redirect to).
DIALER_TCP_PORT = 15001
DIALER_UDP_PORT = 15002
DIALER_DNS_PORT = 15053

# name -> {"A": [...], "AAAA": [...], "CNAME": target, "ttl": seconds}; "*.x" = x and below.
DEFAULT_ZONE: dict[str, dict[str, Any]] = {
    "example.test": {"A": ["192.0.2.10"], "AAAA": ["2001:db8:1::10"], "ttl": 300},
    "other.test": {"A": ["192.0.2.11"], "ttl": 60},
    "third.test": {"A": ["192.0.2.12"], "ttl": 60},
    "api.example.test": {"A": ["203.0.113.5"], "AAAA": ["2001:db8:1::11"], "ttl": 30},
    "www.example.test": {"CNAME": "example.test", "ttl": 120},
    "*.wild.test": {"A": ["203.0.113.6"]},
}

# Runs in an agent: COUNT connections to HOST PORT (an echo server) that each send "ping"
# and half-close at once, as `printf ping | nc -N` does, then read to EOF.  Prints how
# many did not get "ping" back and the first few of what they got instead.
HALF_CLOSING_ECHO_CLIENT = textwrap.dedent("""
    import json, socket, sys
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    failed = []
    for i in range(count):
        with socket.create_connection((host, port), timeout=5) as s:
            got = b""
            try:
                s.sendall(b"ping")
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    got += chunk
            except OSError as exc:
                got = repr(exc).encode()
        if got != b"ping":
            failed.append(got.decode(errors="replace"))
    print(json.dumps({"failed": len(failed), "first": failed[:3]}))
""")

PROCESS_READY_TIMEOUT = 5.0
STOP_GRACE = 2.0


class TopologyError(RuntimeError):
    pass


def run(argv: Sequence[str], timeout: float = 15.0, check: bool = True) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise TopologyError(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr}")
    return result.stdout


def netns_exec(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# --- pure helpers -------------------------------------------------------------------------


def parse_dns_log(text: str) -> list[tuple[str, str, str]]:
    """(qtype, name, client) of every query line in a dnsmasq log."""
    out = []
    for match in re.finditer(r"query\[(\w+)\] (\S+) from (\S+)", text):
        out.append((match.group(1), match.group(2), match.group(3)))
    return out


def normalise_tables_save(text: str) -> set[str]:
    """Rules and user chains of iptables-save output; nf_tables keeps emptied tables and
    counters change, neither of which is a leak."""
    return {
        line
        for line in text.splitlines()
        if line.startswith(("-A", "-I")) or (line.startswith(":") and line.split()[1] == "-")
    }


def children_of(pid: int) -> set[str]:
    """'pid comm' of every live or zombie child process of pid, from /proc."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.add(f"{entry} {comm}")
    return out


# --- machine state for the leak check --------------------------------------------------------


def snapshot(run_id: str = RUN) -> dict[str, set[str]]:
    """What a test could leak: our namespaces, root-namespace links and rules, children."""
    netns = {line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line}
    etc = {p.name for p in NETNS_ETC.iterdir()} if NETNS_ETC.is_dir() else set()
    links = {
        line.split(":")[1].strip().split("@")[0]
        for line in run(["ip", "-o", "link", "show"]).splitlines()
        if line
    }
    return {
        "netns": {n for n in netns if f"-{run_id}-" in n},
        "etc_netns": {n for n in etc if f"-{run_id}-" in n},
        "root_links": links,
        "root_iptables": normalise_tables_save(run(["iptables-save"])),
        "root_ip6tables": normalise_tables_save(run(["ip6tables-save"])),
        "children": children_of(os.getpid()),
    }


def leaks(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    return {key: sorted(after[key] - before[key]) for key in after if after[key] - before[key]}


def sweep_stale_namespaces() -> list[str]:
    """Delete namespaces (with their processes and /etc/netns files) of runs whose PID
    is gone."""
    return sweep_stale(_STALE)


# --- processes ---------------------------------------------------------------------------


class Processes:
    """Every process the harness starts, ended by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self._procs: list[subprocess.Popen] = []
        self._log_dir = log_dir
        self._started = 0
        self.stderr_paths: dict[int, Path] = {}

    def start(
        self,
        argv: Sequence[str],
        *,
        ready: str | None = None,
        stdout: Any = subprocess.PIPE,
        stderr: Any = None,
        stdin: Any = subprocess.DEVNULL,
    ) -> subprocess.Popen:
        """Start argv; with `ready`, wait until it prints that line (or fail).

        stderr goes to a file in the log directory unless given: a pipe nobody reads
        would block a chatty process once it fills.
        """
        self._started += 1
        path = None
        if stderr is None and self._log_dir is not None:
            program = argv[4] if list(argv[:3]) == ["ip", "netns", "exec"] else argv[0]
            path = self._log_dir / f"proc-{self._started}-{Path(program).name}.stderr"
            stderr = path.open("w")
        try:
            proc = subprocess.Popen(
                list(argv), stdout=stdout, stderr=stderr or subprocess.DEVNULL, stdin=stdin,
                cwd=REPO, text=True,
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        finally:
            if path is not None:
                stderr.close()  # the child holds its own copy
        if path is not None:
            self.stderr_paths[proc.pid] = path
        self._procs.append(proc)
        if ready is not None:
            self.wait_ready(proc, ready)
        return proc

    def stderr_text(self, proc: subprocess.Popen) -> str:
        path = self.stderr_paths.get(proc.pid)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def wait_ready(self, proc: subprocess.Popen, ready: str) -> None:
        line = read_line(proc, PROCESS_READY_TIMEOUT)
        if line is None or line.strip() != ready:
            self.stop(proc)
            raise TopologyError(
                f"{proc.args} did not become ready: {line!r} {self.stderr_text(proc)}"
            )

    def stop(self, proc: subprocess.Popen) -> None:
        stop_process(proc, STOP_GRACE)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self._procs)):
            self.stop(proc)


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    """The first truthy result of `predicate()`, polled; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def sources(index: int, ref: str) -> dict[str, str]:
    """The dialer's agent sources for the sandbox of `index`: both its addresses -> ref."""
    spec = spec_for_index(index, "x", tcp_port=1, udp_port=2, dns_port=3)
    return {spec.agent_v4: ref, spec.agent_v6: ref}


def read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """One line of proc's stdout, or None when nothing arrives in time."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    return proc.stdout.readline() or None


def read_json_line(proc: subprocess.Popen, timeout: float = 5.0) -> dict | None:
    line = read_line(proc, timeout)
    return None if line is None else json.loads(line)


@dataclass
class JsonLog:
    """A JSON-lines log a server appends to; mark() then entries(since=mark)."""

    path: Path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def entries(self, since: int = 0) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            f.seek(since)
            return [json.loads(line) for line in f if line.strip()]


@dataclass
class DnsLog:
    path: Path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def queries(self, since: int = 0) -> list[tuple[str, str, str]]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            f.seek(since)
            return parse_dns_log(f.read())


# --- certificates ------------------------------------------------------------------------


# --- agents ------------------------------------------------------------------------------


@dataclass
class Agent:
    """An agent sandbox behind `gw`; run() executes unmodified clients inside it."""

    sandbox: Sandbox
    processes: Processes = field(default_factory=Processes)
    closed: bool = False

    @property
    def name(self) -> str:
        return self.sandbox.name

    @property
    def address_v4(self) -> str:
        return self.sandbox.spec.agent_v4

    @property
    def address_v6(self) -> str:
        return self.sandbox.spec.agent_v6

    def argv(self, argv: Sequence[str]) -> list[str]:
        return self.sandbox.exec_argv(argv)

    def run(
        self, argv: Sequence[str], timeout: float = 10.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the sandbox to completion (killed, and TimeoutExpired, on timeout)."""
        return subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, input=input,
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def start(self, argv: Sequence[str], ready: str | None = None) -> subprocess.Popen:
        """A long-running process in the sandbox, ended with the topology."""
        return self.processes.start(self.argv(argv), ready=ready)

    def close(self) -> list[str]:
        if self.closed:
            return []
        self.closed = True
        self.processes.stop_all()
        failures = self.sandbox.teardown()
        shutil.rmtree(NETNS_ETC / self.name, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only when no other namespace has files there
        return failures


# --- the topology ------------------------------------------------------------------------


class Topology(BuiltOnEnter):
    """gw + internet + servers; agents on demand. A context manager; close() is idempotent."""

    def __init__(self, workdir: Path, zone: Mapping[str, Mapping[str, Any]] = DEFAULT_ZONE):
        self.workdir = Path(workdir)
        self.zone = dict(zone)
        self.gw = f"clrk-e2e-{RUN}-gw"
        self.inet = f"clrk-e2e-{RUN}-inet"
        self.processes = Processes(self.workdir)
        self.agents: list[Agent] = []
        self._namespaces: list[str] = []
        self._dnsmasq: subprocess.Popen | None = None
        self._next_agent = 1
        self.server_log = JsonLog(self.workdir / "servers.jsonl")
        self.dns_log = DnsLog(self.workdir / "dnsmasq.log")
        self.certs: dict[str, Path] = {}

    # lifecycle
    def _add_netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        sweep_stale_namespaces()
        self.workdir.mkdir(parents=True, exist_ok=True)
        gw, inet = self.gw, self.inet
        self._add_netns(gw)
        self._add_netns(inet)
        run(["ip", "-n", gw, "link", "add", "up0", "type", "veth", "peer", "name", "down0",
             "netns", inet])  # fmt: skip
        run(["ip", "-n", gw, "addr", "add", f"{UPLINK['gw_v4']}/30", "dev", "up0"])
        run(["ip", "-n", gw, "-6", "addr", "add", f"{UPLINK['gw_v6']}/64", "dev", "up0", "nodad"])
        run(["ip", "-n", inet, "addr", "add", f"{UPLINK['inet_v4']}/30", "dev", "down0"])
        run(["ip", "-n", inet, "-6", "addr", "add", f"{UPLINK['inet_v6']}/64", "dev", "down0",
             "nodad"])  # fmt: skip
        for address in (*HOSTS_V4, DNS_SERVER):
            run(["ip", "-n", inet, "addr", "add", f"{address}/32", "dev", "lo"])
        for address in HOSTS_V6:
            run(["ip", "-n", inet, "-6", "addr", "add", f"{address}/128", "dev", "lo"])
        run(["ip", "-n", gw, "link", "set", "up0", "up"])
        run(["ip", "-n", inet, "link", "set", "down0", "up"])
        for net in INTERNET_ROUTES_V4:
            run(["ip", "-n", gw, "route", "add", net, "via", UPLINK["inet_v4"]])
        for net in INTERNET_ROUTES_V6:
            run(["ip", "-n", gw, "-6", "route", "add", net, "via", UPLINK["inet_v6"]])
        for ns in (gw, inet):
            self.assert_no_forwarding(ns)
        names = zone_names(self.zone)
        self.certs = make_certificates(self.workdir, names, [*HOSTS_V4, *HOSTS_V6])
        servers = self._start_servers()
        self.restart_dns(self.zone)
        self.processes.wait_ready(servers, "ready")

    def close(self) -> None:
        failures: list[str] = []
        self.processes.stop_all()
        for agent in reversed(self.agents):
            failures += agent.close()
        self.agents.clear()
        for name in reversed(self._namespaces):
            result = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
            if result.returncode != 0:
                failures.append(f"ip netns del {name}: {result.stderr.strip()}")
        self._namespaces.clear()
        if failures:
            raise TopologyError("teardown: " + "; ".join(failures))

    # namespaces
    @staticmethod
    def assert_no_forwarding(netns: str) -> None:
        # /proc/sys/net shows the namespace of the reader; cat avoids needing procps.
        out = run(netns_exec(netns, ["cat", "/proc/sys/net/ipv4/ip_forward",
                                     "/proc/sys/net/ipv6/conf/all/forwarding"]))  # fmt: skip
        if out.split() != ["0", "0"]:
            raise TopologyError(f"IP forwarding is on in {netns}: {out!r}")

    def gw_argv(self, argv: Sequence[str]) -> list[str]:
        return netns_exec(self.gw, argv)

    def inet_argv(self, argv: Sequence[str]) -> list[str]:
        return netns_exec(self.inet, argv)

    def run_in_gw(
        self, argv: Sequence[str], timeout: float = 10.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.gw_argv(argv), capture_output=True, text=True, timeout=timeout, input=input,
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def start_in_gw(self, argv: Sequence[str], ready: str | None = None) -> subprocess.Popen:
        """A process in gw (the dialer, Envoy), ended with the topology."""
        return self.processes.start(self.gw_argv(argv), ready=ready)

    # servers
    def _start_servers(self) -> subprocess.Popen:
        args = ["--log", str(self.server_log.path), "--cert", str(self.certs["cert"]),
                "--key", str(self.certs["key"])]  # fmt: skip
        for host in (*HOSTS_V4, *HOSTS_V6):
            hp = f"[{host}]" if ":" in host else host
            args += ["--echo", f"{hp}:{ECHO_PORT}", "--udp-echo", f"{hp}:{ECHO_PORT}",
                     "--http", f"{hp}:{HTTP_PORT}", "--tls", f"{hp}:{TLS_PORT}"]  # fmt: skip
        # Started without waiting: dnsmasq comes up while Python imports.
        return self.processes.start(self.inet_argv(python_module("tests.e2e.servers", *args)))

    def restart_dns(self, zone: Mapping[str, Mapping[str, Any]]) -> None:
        """(Re)start dnsmasq with this zone; the query log keeps growing (use mark())."""
        if self._dnsmasq is not None:
            self.processes.stop(self._dnsmasq)
        self.zone = dict(zone)
        argv = dnsmasq_args(self.zone, DNS_SERVER, str(self.dns_log.path))
        self._dnsmasq = self.processes.start(self.inet_argv(argv), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + PROCESS_READY_TIMEOUT
        while time.monotonic() < deadline:
            listening = run(self.inet_argv(["ss", "-Hltnu", "sport", "=", ":53"]))
            if listening.count(DNS_SERVER) >= 2:  # UDP and TCP
                return
            if self._dnsmasq.poll() is not None:
                break
            time.sleep(0.02)
        raise TopologyError(f"dnsmasq did not start: {self.processes.stderr_text(self._dnsmasq)}")

    def start_next_hop(self, listens: Sequence[str], log: Path | None = None):
        """The PROXY v2 stand-in for Envoy in gw; returns (process, its JsonLog)."""
        log = log or self.workdir / f"next-hop-{self.processes._started}.jsonl"
        args = ["--log", str(log)]
        for listen in listens:
            args += ["--listen", listen]
        proc = self.start_in_gw(python_module("tests.e2e.proxy_next_hop", *args), ready="ready")
        return proc, JsonLog(log)

    # agents
    def add_agent(self, index: int | None = None) -> Agent:
        """A new agent sandbox whose traffic is redirected to the dialer's ports in gw."""
        index = index if index is not None else self._next_agent
        self._next_agent = max(self._next_agent, index) + 1
        spec = spec_for_index(
            index, f"clrk-e2e-{RUN}-a{index}", tcp_port=DIALER_TCP_PORT,
            udp_port=DIALER_UDP_PORT, dns_port=DIALER_DNS_PORT, host_netns=self.gw,
        )  # fmt: skip
        etc = NETNS_ETC / spec.name
        etc.mkdir(parents=True, exist_ok=True)
        # Any resolver address works (all DNS is intercepted); a fixed one keeps the
        # agent's view independent of the machine's resolv.conf (maybe a loopback stub).
        (etc / "resolv.conf").write_text(f"nameserver {DNS_SERVER}\noptions timeout:1 attempts:1\n")
        try:
            sandbox = create_sandbox(spec)
        except BaseException:
            shutil.rmtree(etc, ignore_errors=True)
            raise
        agent = Agent(sandbox, Processes(self.workdir))
        self.agents.append(agent)
        return agent

    def remove_agent(self, agent: Agent) -> None:
        failures = agent.close()
        if agent in self.agents:
            self.agents.remove(agent)
        if failures:
            raise TopologyError("agent teardown: " + "; ".join(failures))
