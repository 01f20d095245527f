"""Assembles one dialer: policy, listeners (transparent TCP/UDP, DNS, SOCKS5, HTTP
CONNECT), the manifest watcher and the record writer; starts and stops them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from clrk_runtime.logs import fields
from clrk_worker_dialer import registry
from clrk_worker_dialer.config import Address, DialerConfig
from clrk_worker_dialer.dns_forwarder import DnsTcp, Forwarder
from clrk_worker_dialer.fair_accept import FairAcceptor, PendingBudget
from clrk_worker_dialer.listen_backlog import listen_backlog
from clrk_worker_dialer.sni_confirm import SniConfirmer
from clrk_worker_dialer.source_steering import listen_socket, steered_listeners
from clrk_worker_dialer.state import DialerState, PolicyError
from clrk_worker_dialer.tcp_front import admit_transparent
from clrk_worker_dialer.udp_front import UdpFront

log = logging.getLogger("clrk.dialer")

STEERED = ("transparent_tcp", "dns_tcp")
CONTROL_PLANE_FIRST_UPDATE = 10.0  # seconds to wait for a policy before giving up


class Dialer:
    def __init__(self, config: DialerConfig, writer=None) -> None:
        if writer is None:
            from clrk_runtime.records_writer import RecordWriter

            writer = RecordWriter(
                "clrk-dialer",
                otlp_endpoint=config.otlp_endpoint,
                path=config.records_path,
                spool_dir=config.spool_dir,
                spool_max_bytes=config.spool_max_bytes,
            )
        self.config = config
        self.writer = writer
        self.state = DialerState(config, writer)
        self.forwarder = Forwarder(self.state)
        self.confirmer = SniConfirmer(
            self.state, config.sni_confirm_timeout, config.sni_confirm_concurrency
        )
        self.servers: list[FairAcceptor] = []
        self.pending = PendingBudget()  # one bound on what all the listeners hold
        self.udp: UdpFront | None = None
        self.bound: dict[str, list[Address]] = {}
        self._watcher: asyncio.Task | None = None
        self._registry: asyncio.Task | None = None
        self._own: asyncio.Task | None = None
        self.spoof_log = None
        self._stop = asyncio.Event()
        self.backlog = listen_backlog(raise_it=config.raise_somaxconn)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.control_plane:
            first = loop.create_future()
            self._watcher = loop.create_task(self._follow_control_plane(first))
            await asyncio.wait_for(first, CONTROL_PLANE_FIRST_UPDATE)
        else:
            self.state.load()  # an invalid policy at start-up is fatal: nothing to enforce
        state, cfg, confirmer = self.state, self.config, self.confirmer
        if cfg.watch_own_addresses:
            from clrk_runtime.host_addresses import HostAddresses

            # Read before anything is served, then followed: an address added at run
            # time is blocked as soon as the kernel announces it.
            host = HostAddresses()
            state.set_own_addresses(host.current)
            self._own = loop.create_task(host.follow(state.set_own_addresses))
        if cfg.spoof_log_group is not None:
            from clrk_worker_dialer.spoof_log import SpoofLog

            self.spoof_log = SpoofLog(state, cfg.spoof_log_group, cfg.udp_idle_timeout)
            self.spoof_log.start()  # before any sandbox is served: no spoofed flow unrecorded
        if cfg.sandboxes_dir:
            # Read every registered sandbox before serving, so a restarted dialer still
            # knows the agents of sandboxes that kept running; then follow the directory.
            known = registry.sync(Path(cfg.sandboxes_dir), state.identity, {})
            self._registry = loop.create_task(
                registry.follow(cfg.sandboxes_dir, state.identity, known=known)
            )
        for addr in cfg.transparent_tcp:
            await self._serve(
                "transparent_tcp", addr, None, admit=admit_transparent(state, confirmer)
            )
        for addr in cfg.dns:
            await self._serve("dns_tcp", addr, lambda: DnsTcp(state, self.forwarder))
        if cfg.transparent_udp or cfg.dns:
            self.udp = UdpFront(state, self.forwarder)
            for addr in cfg.transparent_udp:
                self.udp.listen(addr[0], addr[1], dns_port=False)
            for addr in cfg.dns:
                self.udp.listen(addr[0], addr[1], dns_port=True)
        if cfg.socks5 is not None or cfg.http_connect is not None:
            from clrk_worker_dialer.explicit import HttpConnectFront, Socks5Front

            if cfg.socks5 is not None:
                await self._serve(
                    "socks5", cfg.socks5, lambda: Socks5Front(state, self.forwarder, confirmer)
                )
            if cfg.http_connect is not None:
                await self._serve(
                    "http_connect",
                    cfg.http_connect,
                    lambda: HttpConnectFront(state, self.forwarder, confirmer),
                )
        if cfg.watch and self._watcher is None:
            self._watcher = loop.create_task(self._watch())
        log.info(
            "dialer ready",
            extra=fields(
                gateway=cfg.gateway, listening=self.bound, held_per_socket=self.pending.share
            ),
        )

    async def _serve(self, kind: str, addr: Address, factory, admit=None) -> None:
        # Where sandboxes' connections arrive (REDIRECT), each agent's wait in a queue
        # of their own; explicit proxies take one listener, as their clients may share
        # an address and their uid could join a group.
        if kind in STEERED:
            socks = steered_listeners(addr, self.backlog)
        else:
            socks = [listen_socket(addr, self.backlog)]
        # Not asyncio's server: it starts a whole burst in one loop iteration, and every
        # other agent waits behind it (fair_accept says how agents take turns instead).
        server = FairAcceptor(socks, factory, admit=admit, budget=self.pending)
        server.start()
        self.servers.append(server)
        self.bound.setdefault(kind, []).append(socks[0].getsockname()[:2])

    async def _watch(self) -> None:
        import watchfiles

        paths = [p for p in self.config.manifests if Path(p).exists()]
        async for _changes in watchfiles.awatch(*paths, debounce=50, step=10):
            try:
                self.state.load()
            except PolicyError as exc:
                log.error(
                    "policy rejected; the last good policy stays in force",
                    extra=fields(errors=exc.errors),
                )

    async def _follow_control_plane(self, first: asyncio.Future) -> None:
        """Apply every policy update of our gateway; reconnect when the stream breaks,
        keeping the last good policy in force meanwhile."""
        import grpc

        from clrk_worker_dialer.policy_client import watch_policy

        target, gateway = self.config.control_plane, self.config.gateway
        while True:
            try:
                auth = self.config.control_plane_auth
                async for update in watch_policy(target, gateway, auth):
                    try:
                        self.state.apply_update(update)
                    except PolicyError as exc:
                        log.error(
                            "policy update rejected; the last good policy stays in force",
                            extra=fields(version=update.version, errors=exc.errors),
                        )
                        if not first.done():
                            first.set_exception(exc)
                        continue
                    if not first.done():
                        first.set_result(None)
            except grpc.aio.AioRpcError as exc:
                log.warning("policy stream broken", extra=fields(error=exc.code().name))
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        for task in (self._watcher, self._registry, self._own):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for server in self.servers:
            server.close()
        if self.udp is not None:
            self.udp.close()
        if self.spoof_log is not None:
            self.spoof_log.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self.state.pipes.close()
        self.writer.shutdown()

    async def run_until_signalled(self, ready_file: str | None = None) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if ready_file:
            Path(ready_file).write_text(repr(self.bound))
        await self._stop.wait()
        log.info("dialer stopping")
        await self.stop()
