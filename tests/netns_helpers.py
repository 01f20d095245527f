"""Namespaces and processes for root tests: a scratch namespace that is removed also on
failure, and what a test checks it left behind (its namespaces, its child processes)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scratch_netns(name: str) -> Iterator[str]:
    """An empty namespace with loopback up, deleted on exit."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def namespaces_with_prefix(prefix: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)}


def child_pids() -> set[int]:
    """PIDs whose parent is this process (read from /proc: no helper process of its own)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == os.getpid():
            out.add(int(stat.parent.name))
    return out


def python_for_anyone() -> str:
    """A Python of this version that any user may run: tests run code as other users
    (nobody, a gateway uid), whom a personal interpreter (say under root's home) locks out."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for directory in ("/usr/local/bin", "/usr/bin"):
        if Path(directory, name).is_file():
            return str(Path(directory, name))
    return sys.executable
