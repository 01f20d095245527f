"""Where the dialer hands an allowed connection: one Envoy listener per gateway listener.

The control plane binds each Envoy listener and the dialer dials it; both derive the
address from this one function so that they can never disagree.  UDP listeners get
no Envoy listener (the dialer relays UDP itself) but keep their slot, so adding a UDP
listener never moves the ports of the others.

With a socket directory, each listener is a Unix socket `DIR/<listener>.sock` instead
of a loopback port.  That is the faster hop (no second TCP stack on the byte path), and
the socket's file mode decides who may hand Envoy a PROXY header, where a loopback port
accepts one from any local process.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

DEFAULT_HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 15100
SOCKET_MODE = 0o660  # Envoy and the dialer may run as different users of one group
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last one a NUL

# (host, port) of a loopback listener, or the path of a Unix socket
NextHop = tuple[str, int] | str


def envoy_listener_addresses(
    listeners: Iterable[tuple[str, str]],
    host: str = DEFAULT_HOST,
    base_port: int = DEFAULT_BASE_PORT,
    socket_dir: str | None = None,
) -> dict[str, NextHop]:
    """(listener name, protocol) in gateway order -> where its Envoy listener is."""
    out: dict[str, NextHop] = {}
    for index, (name, protocol) in enumerate(listeners):
        if protocol == "UDP":
            continue
        if socket_dir is None:
            out[name] = (host, base_port + index)
        else:
            out[name] = listener_socket_path(socket_dir, name)
    return out


LONGEST_LISTENER_NAME = 63  # a DNS label


def check_socket_dir(socket_dir: str) -> None:
    """Refuse, at start-up, a directory whose socket paths might not fit: failing later
    would be a policy update that cannot be applied."""
    listener_socket_path(socket_dir, "x" * LONGEST_LISTENER_NAME)


def socket_dir_problem(socket_dir: str) -> str | None:
    """Why a socket directory is unsafe to use, or None.  Whoever may create files there
    could put a socket in Envoy's place before it binds and receive what the dialer
    hands on, so only its owner may write it (Envoy's user; the dialer needs to search
    it and write the sockets, which are 0660)."""
    try:
        info = os.stat(socket_dir)
    except OSError as exc:
        return f"{socket_dir}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{socket_dir} is not a directory"
    if info.st_mode & 0o022:
        return f"{socket_dir} is writable by others than its owner (mode {info.st_mode & 0o777:o})"
    return None


def listener_socket_path(socket_dir: str, name: str) -> str:
    path = os.path.join(socket_dir, f"{name}.sock")
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise ValueError(
            f"Unix socket path {path!r} is {len(path.encode())} bytes, more than the "
            f"{MAX_SOCKET_PATH} a socket address holds: use a shorter socket directory"
        )
    return path


def describe(hop: NextHop) -> str:
    return hop if isinstance(hop, str) else f"{hop[0]}:{hop[1]}"
