"""A real dnsmasq on a free loopback port, answering a zone: the resolver of the dialer
tests that need one without network namespaces (no root)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.e2e.topology import dnsmasq_args


@contextlib.contextmanager
def loopback_dnsmasq(
    zone: Mapping[str, Mapping[str, Any]], log_dir: Path
) -> Iterator[tuple[str, int]]:
    """(address, port) of dnsmasq serving `zone` until the block ends."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = dnsmasq_args(zone, "127.0.0.1", str(log_dir / "dnsmasq.log"))
    proc = subprocess.Popen(
        [a if a != "--port=53" else f"--port={port}" for a in argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(5)
