"""Namespaces and processes for root tests: a scratch namespace that is removed also on
failure, and what a test checks it left behind (its namespaces, its child processes)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
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


@contextlib.contextmanager
def readable_by_agents(*files: Path) -> Iterator[list[str]]:
    """Copies of `files` that any user may read, for an agent under `clrk run` (not
    root, so pytest's private temp directories are closed to it); removed on exit."""
    directory = Path(tempfile.mkdtemp(prefix="clrk-test-agent-"))
    try:
        directory.chmod(0o755)
        copies = []
        for file in files:
            copy = directory / Path(file).name
            shutil.copyfile(file, copy)
            copy.chmod(0o644)
            copies.append(str(copy))
        yield copies
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def agent_script(path: Path, *args: str) -> list[str]:
    """argv that runs a standard-library-only script as an unprivileged agent: an
    interpreter other users may start, the source inline (the checkout may be private)."""
    from clrk_cli.embedded.agent_user import agent_python

    return [agent_python(), "-I", "-c", Path(path).read_text(), *args]


def python_for_anyone() -> str:
    """A Python of this version that any user may run: tests run code as other users
    (nobody, a gateway uid), whom a personal interpreter (say under root's home) locks out."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for directory in ("/usr/local/bin", "/usr/bin"):
        if Path(directory, name).is_file():
            return str(Path(directory, name))
    return sys.executable
