"""Squid as a CONNECT allowlist proxy: the reference issue 15 measures the gateway's L4
path and its denials against, run by the bench itself on the same machine.

Installed as root with apt-get when missing (Debian package `squid`).  Each run gets
its own Squid: one process (`-N`, no daemon, no workers) on a loopback address of the
bench's namespace, its config, logs and pid file in a directory of the bench's work
directory, no cache, and a service name of its own, after which Squid names its shared
memory segments, so two runs share nothing.  It starts through `Topology.start` and is
stopped by its PID; `remove_leftovers()` then deletes any segment a killed Squid left.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bench._netns import Topology
from bench._rig import BenchError, tail, wait_ready

PACKAGE = "squid"
SBIN = "/usr/sbin:/sbin"
POLICY_RC = Path("/usr/sbin/policy-rc.d")
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 20.0
SHM = Path("/dev/shm")
USER = "proxy"  # what Debian's package runs Squid as


def binary() -> str | None:
    return shutil.which("squid", path=f"{os.environ.get('PATH', '')}:{SBIN}")


@contextlib.contextmanager
def _no_service_start() -> Iterator[None]:
    """Debian's postinst starts a system-wide Squid unless policy-rc.d says no; that one
    would outlive the bench, so say no for the install when nothing says it already."""
    if POLICY_RC.exists():
        yield
        return
    POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
    POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC.unlink(missing_ok=True)


def ensure_installed() -> str | None:
    """Install Squid if it is missing: None once it is there, else why it is not."""
    if binary() is not None:
        return None
    if os.geteuid() != 0:
        return "Squid is not installed and installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _no_service_start():
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE],
        ):
            try:
                result = subprocess.run(
                    argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"`{' '.join(argv)}` failed: {exc}"
            if result.returncode != 0:
                return f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr[-300:]}"
    return None if binary() is not None else "apt-get installed no `squid` program"


def config(directory: Path, listen: tuple[str, int], allowed: tuple[str, int]) -> str:
    """CONNECT to the one allowed address and port, everything else 403; an access log
    line per connection (the gateway writes a record per connection too)."""
    return f"""\
http_port {listen[0]}:{listen[1]}
visible_hostname clrk-bench
pid_filename {directory}/squid.pid
cache_log {directory}/cache.log
access_log stdio:{directory}/access.log
logfile_rotate 0
coredump_dir {directory}
cache deny all
cache_mem 0 MB
pinger_enable off
dns_nameservers 127.0.0.1
shutdown_lifetime 0 seconds
acl allowed_dst dst {allowed[0]}/32
acl allowed_port port {allowed[1]}
acl CONNECT method CONNECT
http_access allow CONNECT allowed_dst allowed_port
http_access deny all
"""


class Squid:
    """One Squid in `netns` listening on `listen`; `start()` returns once it accepts."""

    def __init__(
        self,
        top: Topology,
        netns: str,
        work: Path,
        listen: tuple[str, int],
        allowed: tuple[str, int],
    ) -> None:
        self.top, self.netns, self.listen = top, netns, listen
        self.service = f"clrkbench{os.getpid()}"
        self.directory = work / "squid"
        self.directory.mkdir(mode=0o700)
        # Squid drops root for its own user, which must reach and write this directory.
        user = pwd.getpwnam(USER)
        os.chown(self.directory, user.pw_uid, user.pw_gid)
        work.chmod(work.stat().st_mode | 0o111)
        self.conf = self.directory / "squid.conf"
        self.conf.write_text(config(self.directory, listen, allowed))
        self.log = self.directory / "cache.log"
        self.stderr = work / "squid.stderr"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it; `wait_ready()` waits until it accepts (others start meanwhile)."""
        squid = binary()
        if squid is None:
            raise BenchError("Squid is not installed")
        self.proc = self.top.start(
            self.netns, [squid, "-N", "-n", self.service, "-f", str(self.conf)], log=self.stderr
        )

    def wait_ready(self) -> None:
        wait_ready(self.proc, self._accepting, "Squid", self.stderr, timeout=START_TIMEOUT)

    def _accepting(self) -> bool:
        return "Accepting HTTP Socket connections" in tail(self.log, 200)

    def remove_leftovers(self) -> list[str]:
        """The shared memory segments of this run's Squid, once it is stopped."""
        failures = []
        for segment in SHM.glob(f"{self.service}-*"):
            try:
                segment.unlink()
            except OSError as exc:
                failures.append(f"{segment}: {exc}")
        return failures
