"""What the benches that start real processes share: waiting for a child to be ready, the
one-shot client run, and the gateway the end-to-end benches put in front of an upstream
(host namespace gw, one agent sandbox, the dialer, clrk_extproc and Envoy).

Every process starts through `Topology.start`, so `Topology.close()` ends it, also on
failure or Ctrl-C."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench._netns import Topology
from clrk_worker_dialer.redirect_rules import spec_for_index

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0  # seconds for a child process to say it is ready
ENVOY_START_TIMEOUT = 20.0
TCP_PORT, UDP_PORT, DNS_PORT = 15001, 15002, 15053  # the agent sandbox's REDIRECT/TPROXY ports

T = TypeVar("T")


class BenchError(RuntimeError):
    pass


def child_env() -> dict:
    """The environment of a child that imports this repository's packages."""
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(
    proc: subprocess.Popen, ready, what: str, log: Path, timeout: float = READY_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise BenchError(f"{what} exited {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready within {timeout:g}s:\n{tail(log)}")
        time.sleep(0.02)


def line_ready(proc: subprocess.Popen):
    """A readiness check for a child that prints "ready" on its stdout."""

    def ready() -> bool:
        readable, _, _ = select.select([proc.stdout], [], [], 0.05)
        return bool(readable) and proc.stdout.readline().strip() == b"ready"

    return ready


def rotated(paths: Sequence[str], run: int) -> tuple[str, ...]:
    """The paths in a different order each run: none is always the first or the last."""
    paths = tuple(paths)
    k = run % len(paths)
    return paths[k:] + paths[:k]


def run_json(argv: list[str], what: str, timeout: float, env: dict | None = None) -> dict:
    """Run a client program to its end; what it printed, as JSON."""
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if result.returncode != 0:
        raise BenchError(f"{what} failed: {result.stderr.strip()[-800:]}")
    return json.loads(result.stdout)


def start_envoy(config: dict, netns: str):
    from clrk_xds.envoy_process import EnvoyProcess

    return EnvoyProcess(config, netns=netns, log_level="warning", ready_timeout=ENVOY_START_TIMEOUT)


@dataclass
class Gateway:
    """The dialer (transparent TCP, next hop Envoy) and clrk_extproc, started in gw."""

    dialer: subprocess.Popen
    ready_file: Path
    dialer_log: Path
    extproc: subprocess.Popen
    extproc_log: Path

    def wait_ready(self) -> None:
        wait_ready(self.dialer, self.ready_file.exists, "dialer", self.dialer_log)
        # Envoy's access-log batches sent before clrk_extproc listens are lost for good
        # (Envoy counts them flushed), as `clrk up` avoids by starting it before Envoy.
        wait_ready(self.extproc, self._extproc_listening, "clrk_extproc", self.extproc_log)

    def _extproc_listening(self) -> bool:
        # Logged at info, the level start_gateway gives it.
        return b'"extproc.listening"' in self.extproc_log.read_bytes()


class GatewayRig:
    """sandbox a1 (agent) -> dialer -> Envoy -> an upstream on gw's loopback.  The bench's
    subclass builds it; `close()` removes all of it (idempotent)."""

    def __init__(self, top: Topology, work: Path) -> None:
        self.top, self.work, self.envoy = top, work, None
        self.sockets = work / "sockets"  # Envoy's Unix socket listeners (a short path)
        self.sockets.mkdir(mode=0o700, exist_ok=True)

    def add_namespaces(self, upstream_ip: str) -> None:
        """Host namespace gw with the upstream's (documentation) address on its loopback,
        and the agent's sandbox, whose TCP the REDIRECT hands to the dialer's port."""
        top = self.top
        gw = self.gw = top.create_host()
        subprocess.run(["ip", "-n", gw, "addr", "add", f"{upstream_ip}/32", "dev", "lo"],
                       check=True, capture_output=True)  # fmt: skip
        self.agent_sandbox = top.add_sandbox(
            spec_for_index(1, f"{top.prefix}-a1", tcp_port=TCP_PORT, udp_port=UDP_PORT,
                           dns_port=DNS_PORT, host_netns=gw)
        )  # fmt: skip
        self.agent = self.agent_sandbox.name

    def start_gateway(
        self,
        manifest: Path,
        *,
        gateway: str,
        agent: str,
        extproc: tuple[str, int],
        sockets: Path,
        env: dict,
        resolver: tuple[str, int] | None = None,
    ) -> Gateway:
        """clrk_extproc and the dialer, whose next hop is Envoy's Unix socket listener in
        `sockets`, as `clrk up` lays it out; `resolver`: the gateway's DNS resolver."""
        top, work, gw = self.top, self.work, self.gw
        extproc_log = work / "extproc.log"
        extproc_proc = top.start(gw, [
            sys.executable, "-m", "clrk_extproc", "--listen", f"{extproc[0]}:{extproc[1]}",
            "--records", str(work / "envoy-records.jsonl"), "--log-level", "info",
        ], log=extproc_log, env=env)  # fmt: skip
        ready_file, dialer_log = work / "dialer.ready", work / "dialer.log"
        dialer = top.start(gw, [
            sys.executable, "-m", "clrk_worker_dialer", "--no-watch", "-f", str(manifest),
            "--gateway", gateway,
            "--agent-source", f"{self.agent_sandbox.spec.agent_v4}={agent}",
            "--transparent-tcp", f"0.0.0.0:{TCP_PORT}",
            "--next-hop-socket-dir", str(sockets),
            "--records", str(work / "dialer-records.jsonl"), "--ready-file", str(ready_file),
            "--log-level", "warning",
            *(("--resolver", f"{resolver[0]}:{resolver[1]}") if resolver else ()),
        ], log=dialer_log, env=env)  # fmt: skip
        return Gateway(dialer, ready_file, dialer_log, extproc_proc, extproc_log)

    def start_envoy(self, config: dict) -> None:
        self.envoy = start_envoy(config, self.gw)
        self.envoy.start()

    def close(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
            self.envoy = None
        self.top.close()


def in_topology(prefix: str, tmp_prefix: str, run: Callable[[Topology, Path], T]) -> T:
    """`run(topology, work directory)` in a throw-away topology and directory, both
    removed at the end, also on failure."""
    with tempfile.TemporaryDirectory(prefix=tmp_prefix) as tmp:
        top = Topology(prefix)
        try:
            return run(top, Path(tmp))
        finally:
            top.close()
            if top.failures:
                print("cleanup problems: " + "; ".join(top.failures), file=sys.stderr)


def run_rig(
    make_rig: Callable[[Topology, Path], GatewayRig],
    measure: Callable[[GatewayRig, dict], list[dict]],
    params: dict,
    *,
    prefix: str,
    tmp_prefix: str,
) -> list[dict]:
    """Build the rig in a throw-away topology, measure, and remove it all, also on failure."""

    def run(top: Topology, work: Path) -> list[dict]:
        rig = make_rig(top, work)
        try:
            rig.build()
            return measure(rig, params)
        finally:
            rig.close()

    return in_topology(prefix, tmp_prefix, run)
