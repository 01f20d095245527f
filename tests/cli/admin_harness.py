"""A real control plane core for admin API tests: the file provider watching the
operator's manifests and the applied directory, and the admin servicer on a real
grpc.aio server on a Unix socket, in a thread of its own so that blocking clients (the CLI)
can call it from the test's thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from clrk_runtime import grpc_auth
from clrk_xds.admin import AdminServer, with_applied_dir
from clrk_xds.policy_stream import PolicyHub
from clrk_xds.provider import FileProvider, default_translator
from clrk_xds.snapshot import SnapshotCache

GATEWAY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  defaultPolicy: deny-all
  listeners: [{name: tcp-out, protocol: TCP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: TaskAgent
metadata: {name: coder, labels: {team: a}}
spec:
  egressRefs: [{gatewayRef: gw}]
"""

ROUTE = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: api}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - destinationHostnames: [HOST]
      ports: [{port: 443}]
"""


def route(host: str) -> str:
    return ROUTE.replace("HOST", host)


@dataclass
class Plane:
    root: Path
    records: Path | None = None
    address: str = ""
    provider: FileProvider | None = None
    admin: AdminServer | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    @property
    def ops(self) -> Path:
        return self.root / "ops"

    @property
    def applied(self) -> Path:
        return self.root / "state" / "applied"

    def version(self) -> str | None:
        return self.provider.status().version

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        paths = with_applied_dir([self.ops], self.applied)
        self.provider = FileProvider(
            SnapshotCache(), PolicyHub(), default_translator(), paths=paths, debounce_ms=20
        )
        self.admin = AdminServer(self.provider, self.applied, self.records, poll=0.05)
        # A Unix socket in a private directory, as under `clrk up`.
        self.address = f"unix:{self.root / 'run' / 'control-plane.socket'}"
        server = grpc_auth.server(self.address, None)
        server.add_generic_rpc_handlers((self.admin.handler(),))
        grpc_auth.bind(server, self.address, None)
        await self.provider.reload()
        await server.start()
        watcher = asyncio.create_task(self.provider.run(self._stop))
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(grace=0.2)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def start(self) -> Plane:
        self._thread = threading.Thread(target=self._run, name="admin-plane", daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the control plane did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "the control plane did not stop"


@contextlib.contextmanager
def running_plane(root: Path, records: Path | None = None, operator: str = GATEWAY):
    plane = Plane(root, records)
    plane.ops.mkdir(parents=True, exist_ok=True)
    (plane.ops / "gateway.yaml").write_text(operator)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()
