"""The real dialer (`python -m clrk_worker_dialer`) as a process in gw, for e2e tests."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from clrk.records.query import iter_records, select
from tests.e2e.topology import (
    DIALER_DNS_PORT,
    DIALER_TCP_PORT,
    DIALER_UDP_PORT,
    Topology,
    TopologyError,
    python_module,
)

READY_TIMEOUT = 10.0


class DialerProcess:
    def __init__(
        self,
        topology: Topology,
        manifests: Path,
        *,
        gateway: str,
        sources: dict[str, str],
        extra: Sequence[str] = (),
        name: str = "dialer",
    ) -> None:
        self.topology = topology
        self.records_path = topology.workdir / f"{name}-records.jsonl"
        self.ready = topology.workdir / f"{name}.ready"
        self.ready.unlink(missing_ok=True)
        argv = [
            "-f", str(manifests), "--gateway", gateway,
            "--transparent-tcp", f"0.0.0.0:{DIALER_TCP_PORT}",
            "--transparent-tcp", f"[::]:{DIALER_TCP_PORT}",
            "--transparent-udp", f"0.0.0.0:{DIALER_UDP_PORT}",
            "--transparent-udp", f"[::]:{DIALER_UDP_PORT}",
            "--dns", f"0.0.0.0:{DIALER_DNS_PORT}", "--dns", f"[::]:{DIALER_DNS_PORT}",
            "--records", str(self.records_path), "--ready-file", str(self.ready),
            *extra,
        ]  # fmt: skip
        for ip, ref in sources.items():
            argv += ["--agent-source", f"{ip}={ref}"]
        self.proc = topology.start_in_gw(python_module("clrk_worker_dialer", *argv))
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise TopologyError(f"the dialer did not start: {log}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.topology.processes.stderr_text(self.proc)

    def stop(self) -> None:
        self.topology.processes.stop(self.proc)

    def records(
        self, name: str, where: dict[str, str], wait: float = 3.0, since_ns: int = 0
    ) -> list[dict]:
        """Records (spans and logs) of `name` whose attributes equal `where`; waits until
        at least one span and one log are there (the writer batches), then a little more
        so that a duplicate would show."""

        def read() -> list[dict]:
            if not self.records_path.exists():
                return []
            found = select(iter_records(str(self.records_path)), where, name=name)
            return [r for r in found if (r["time"] or 0) >= since_ns]

        deadline = time.monotonic() + wait
        found = read()
        while time.monotonic() < deadline:
            if {r["signal"] for r in found} == {"span", "log"}:
                time.sleep(0.3)
                return read()
            time.sleep(0.05)
            found = read()
        return found

    def wait_for_log(self, text: str, since: int = 0, wait: float = 5.0) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if text in self.log()[since:]:
                return True
            time.sleep(0.02)
        return False
