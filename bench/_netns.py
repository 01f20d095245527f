"""A throw-away topology for benchmarks that need root: a host namespace, agent sandboxes
in it, and the processes started inside them.

Everything is remembered as it is made and removed newest first by `close()`, which
also runs on failure and on KeyboardInterrupt (use the Topology as a context manager).
Processes are ended by their own PID, never by name.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from clrk_worker_dialer.redirect_rules import SandboxSpec
from clrk_worker_dialer.sandbox import Sandbox, create_sandbox

STOP_TIMEOUT = 3.0


def needs_root() -> str | None:
    """Why this cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    return None


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=15, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr}")


class Topology:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.host = f"{prefix}-gw"
        self._namespaces: list[str] = []
        self._sandboxes: list[Sandbox] = []
        self._processes: list[tuple[subprocess.Popen, IO | None]] = []
        self.failures: list[str] = []

    def create_host(self) -> str:
        _run(("ip", "netns", "add", self.host))
        self._namespaces.append(self.host)
        _run(("ip", "-n", self.host, "link", "set", "lo", "up"))
        return self.host

    def add_sandbox(self, spec: SandboxSpec) -> Sandbox:
        sandbox = create_sandbox(spec)  # all or nothing
        self._sandboxes.append(sandbox)
        return sandbox

    def start(
        self, netns: str, argv: Sequence[str], log: Path | None = None, **popen
    ) -> subprocess.Popen:
        """Start argv inside netns; `ip netns exec` execs it, so the PID is the program's."""
        out = log.open("wb") if log is not None else None
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv],
                stdout=popen.pop("stdout", out or subprocess.DEVNULL),
                stderr=popen.pop("stderr", out or subprocess.DEVNULL),
                **popen,
            )
        except BaseException:
            if out is not None:
                out.close()
            raise
        self._processes.append((proc, out))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)

    def close(self) -> None:
        """Remove everything, newest first; keep going past failures (collected)."""
        while self._processes:
            proc, out = self._processes.pop()
            try:
                self.stop(proc)
            except Exception as exc:  # the rest must still be removed
                self.failures.append(f"process {proc.pid}: {exc}")
            if proc.stdout is not None and proc.stdout is not out:
                with contextlib.suppress(OSError):
                    proc.stdout.close()
            if out is not None:
                out.close()
        while self._sandboxes:
            self.failures += self._sandboxes.pop().teardown()
        while self._namespaces:
            name = self._namespaces.pop()
            try:
                _run(("ip", "netns", "del", name))
            except RuntimeError as exc:
                self.failures.append(str(exc))

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
