"""`clrk up`'s supervisor: starts the children of `layout.stack` in order, watches their
health, restarts a crashed one with backoff, serves /healthz and /metrics, prints
`clrk ready` once everything is healthy, and on SIGINT/SIGTERM ends every child by PID
(SIGTERM, then SIGKILL).  Children run in their own session so a terminal's Ctrl-C
reaches only the supervisor, which then stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from clrk.nexthops import socket_dir_problem
from clrk_cli.embedded import http_endpoint
from clrk_cli.embedded.layout import (
    ChildSpec,
    Ports,
    StateDir,
    control_plane_address,
    info_document,
    restart_delay,
)
from clrk_cli.embedded.metrics import ChildState, RecordTail, XdsCounts, health_document, render
from clrk_runtime.logs import fields

log = logging.getLogger("clrk_cli.embedded")

START_TIMEOUT = 30.0  # seconds for a child to become healthy before it is restarted
PROBE_INTERVAL = 0.1
HEALTH_INTERVAL = 1.0  # probes of running children (for /healthz)
STABLE_AFTER = 10.0  # a child up this long has its backoff reset
STOP_GRACE = 5.0
READY_LINE = "clrk ready"


def private_directory(path: Path) -> None:
    """Create `path` for Envoy's listener sockets, or accept it only if it is a real
    directory of ours that no one else may write: whoever could replace a socket file
    there would receive the connections the dialer hands on."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)  # a symlink in its place is refused, not followed
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid() or socket_dir_problem(str(path)):
        raise ValueError(
            f"{path} must be a directory owned by this user and writable by no one else"
        )


async def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port), timeout
    )
    try:
        request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        writer.write(request.encode() + b"Connection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(1 << 20), timeout)
        while chunk := await asyncio.wait_for(reader.read(1 << 20), timeout):
            data += chunk
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)
    return (int(status[1]) if len(status) > 1 and status[1].isdigit() else 0), body


async def probe(spec: ChildSpec) -> bool:
    kind, target = spec.probe.kind, spec.probe.target
    try:
        if kind == "file":
            return os.path.exists(target)
        if kind == "tcp":
            host, _, port = target.rpartition(":")
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
            writer.close()
            return True
        if kind == "http":
            status, _ = await http_get(target)
            return status == 200
    except (OSError, TimeoutError, ValueError):
        return False
    return False


@dataclass
class Child:
    spec: ChildSpec
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    healthy: bool = False
    restarts: int = 0
    quick_failures: int = 0
    started: float = 0.0
    became_healthy: asyncio.Event = field(default_factory=asyncio.Event)

    def state(self) -> ChildState:
        alive = self.proc is not None and self.proc.returncode is None
        return ChildState(
            self.spec.name, self.healthy and alive, self.restarts, self.proc.pid if alive else None
        )

    async def start(self) -> None:
        for path in self.spec.remove_before_start:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for path, text in self.spec.files.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()
        self.healthy = False
        log.info("child.started", extra=fields(child=self.spec.name, pid=self.proc.pid))

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self.healthy = False


class Supervisor:
    def __init__(
        self,
        children: Sequence[ChildSpec],
        state: StateDir,
        *,
        gateway: str,
        sockets: Path,
        ports: Ports | None = None,
        netns: str | None = None,
        metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9464),
        out=None,
    ) -> None:
        self.state_dir = state
        self.gateway = gateway
        # Envoy's listener sockets (clrk_cli.up.socket_directory): STATE/run/envoy, or a
        # directory of the system temp directory, which is this run's to remove.
        self.sockets = sockets
        self.ports = ports = ports or Ports()
        self.netns = netns
        self.metrics_listen = metrics_listen
        self.out = out or sys.stdout
        self.children = [Child(spec, state.log(spec.name)) for spec in children]
        self.stopping = asyncio.Event()
        self.ready = False
        self.records = RecordTail(state.records)
        self.xds = XdsCounts()
        self.status_url = f"http://127.0.0.1:{ports.status}/status"

    # --- the HTTP endpoint's sources
    def health(self) -> dict:
        return health_document([c.state() for c in self.children], self.ready)

    def metrics(self) -> bytes:
        return render(self.records.update(), self.xds, [c.state() for c in self.children])

    # --- lifecycle
    async def _until_healthy(self, child: Child) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not self.stopping.is_set():
            if child.proc is None or child.proc.returncode is not None:
                return False
            if await probe(child.spec):
                child.healthy = True
                child.became_healthy.set()
                log.info("child.healthy", extra=fields(child=child.spec.name))
                return True
            await asyncio.sleep(PROBE_INTERVAL)
        return False

    async def _keep(self, child: Child) -> None:
        """Run one child for the supervisor's lifetime."""
        first = True
        while not self.stopping.is_set():
            if not first:
                if time.monotonic() - child.started > STABLE_AFTER:
                    child.quick_failures = 0
                delay = restart_delay(child.quick_failures)
                child.quick_failures += 1
                child.restarts += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    return
            first = False
            await child.start()
            if not await self._until_healthy(child):
                if self.stopping.is_set():
                    return
                log.warning("child.unhealthy", extra=fields(child=child.spec.name))
                await child.stop()
                continue
            await self._watch(child)
            if not self.stopping.is_set():
                log.warning(
                    "child.exited", extra=fields(child=child.spec.name, code=child.proc.returncode)
                )

    async def _watch(self, child: Child) -> None:
        """Until the child exits: refresh its health flag now and then."""
        assert child.proc is not None
        wait = asyncio.ensure_future(child.proc.wait())
        try:
            while not wait.done():
                done, _ = await asyncio.wait({wait}, timeout=HEALTH_INTERVAL)
                if not done:
                    child.healthy = await probe(child.spec)
        finally:
            child.healthy = False
            if not wait.done():
                wait.cancel()

    async def _poll_status(self) -> None:
        """xDS counts for /metrics; the control plane's errors are logged once each, since
        they explain an Envoy that never becomes ready (no snapshot to serve)."""
        reported: list = []
        while True:
            try:
                status, body = await http_get(self.status_url)
                if status == 200:
                    doc = json.loads(body)
                    self.xds.observe(doc)
                    errors = doc.get("errors") if isinstance(doc, dict) else None
                    if errors and errors != reported:
                        log.warning(
                            "control plane rejected the manifests", extra=fields(errors=errors)
                        )
                    reported = errors or []
            except (OSError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(HEALTH_INTERVAL)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        state = self.state_dir
        for path in (state.logs, state.run, state.sandboxes):
            path.mkdir(parents=True, exist_ok=True)
        private_directory(self.sockets)
        server = None
        if self.metrics_listen is not None:
            server = await http_endpoint.serve(*self.metrics_listen, self.health, self.metrics)
        tasks: list[asyncio.Task] = [loop.create_task(self._poll_status())]
        try:
            # Start in order (the dialer needs the control plane), then supervise each.
            for child in self.children:
                tasks.append(loop.create_task(self._keep(child)))
                waiter = loop.create_task(child.became_healthy.wait())
                stopper = loop.create_task(self.stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if self.stopping.is_set():
                    break
            if not self.stopping.is_set():
                self.ready = True
                info = info_document(
                    self.gateway,
                    self.ports,
                    self.netns,
                    os.getpid(),
                    control_plane_address(self.sockets),
                )
                self.state_dir.info.write_text(json.dumps(info))
                print(READY_LINE, file=self.out, flush=True)
            await self.stopping.wait()
        finally:
            self.stopping.set()
            log.info("stopping")
            with contextlib.suppress(FileNotFoundError):
                self.state_dir.info.unlink()
            # Dialer first (no new connections), control plane last.
            for child in reversed(self.children):
                await child.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for child in self.children:
                await child.stop()  # one a _keep task may have started meanwhile
            if not self.sockets.is_relative_to(state.root):
                shutil.rmtree(self.sockets, ignore_errors=True)  # the temp fallback
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 1.0)
        return 0
