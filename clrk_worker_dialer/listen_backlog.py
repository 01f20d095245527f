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
WANTED = 65535  # the largest backlog Linux keeps (the queue length is a u16 before 5.4)


def listen_backlog(path: str = SOMAXCONN, wanted: int = WANTED, *, raise_it: bool = True) -> int:
    """Raise somaxconn to `wanted` where allowed; the backlog to listen with."""
    try:
        with open(path) as fh:
            current = int(fh.read())
    except (OSError, ValueError):
        return wanted  # the kernel caps what listen(2) asks for anyway
    if current < wanted and raise_it:
        try:
            with open(path, "w") as fh:
                fh.write(str(wanted))
            current = wanted
        except OSError as exc:
            log.warning(
                "cannot raise net.core.somaxconn from %d to %d (%s): a burst beyond %d "
                "connections waits in the agents' SYN retries",
                current, wanted, exc.strerror, current,
            )  # fmt: skip
    return current
