"""The listen backlog: the kernel's maximum, so a burst of connections waits in the
accept queue instead of overflowing it.  An overflowed queue drops the agent's final
ACK silently: the agent believes the connection established while the dialer never
sees it, so it is neither relayed nor reset nor recorded.

`net.core.somaxconn` caps every listen(2) and is per network namespace; the dialer
raises it in its own namespace where it may (root there), and listens with it.
"""

from __future__ import annotations

import logging

log = logging.getLogger("clrk.dialer")

SOMAXCONN = "/proc/sys/net/core/somaxconn"
SYN_BACKLOG = "/proc/sys/net/ipv4/tcp_max_syn_backlog"  # per namespace too
WANTED = 65535  # the largest backlog Linux keeps (the queue length is a u16 before 5.4)


def _raise(path: str, wanted: int) -> int | None:
    """The knob's value after raising it to `wanted` where allowed; None if unreadable."""
    try:
        with open(path) as fh:
            current = int(fh.read())
    except (OSError, ValueError):
        return None
    if current < wanted:
        try:
            with open(path, "w") as fh:
                fh.write(str(wanted))
            current = wanted
        except OSError as exc:
            log.warning(
                "cannot raise %s from %d to %d (%s): a burst beyond %d connections waits "
                "in the agents' SYN retries",
                path, current, wanted, exc.strerror, current,
            )  # fmt: skip
    return current


def listen_backlog(
    path: str = SOMAXCONN,
    wanted: int = WANTED,
    *,
    raise_it: bool = True,
    syn_backlog: str = SYN_BACKLOG,
) -> int:
    """Raise somaxconn (and the SYN queue's length) to `wanted` where allowed; the
    backlog to listen with."""
    if not raise_it:
        try:
            with open(path) as fh:
                return int(fh.read())
        except (OSError, ValueError):
            return wanted
    # The SYN queue as long as the accept queue: a burst is held, not answered with
    # SYN cookies (which lose the agent's TCP options).
    _raise(syn_backlog, wanted)
    current = _raise(path, wanted)
    return wanted if current is None else current  # the kernel caps listen(2) anyway
