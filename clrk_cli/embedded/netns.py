"""Which named network namespace this process runs in (`ip netns identify`)."""

from __future__ import annotations

import os
import subprocess


def current_netns(pid: int | None = None) -> str | None:
    """The name under /run/netns of pid's namespace; None for an unnamed one (the root
    namespace, usually)."""
    try:
        out = subprocess.run(
            ["ip", "netns", "identify", str(pid or os.getpid())],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = out.stdout.split()
    return names[0] if out.returncode == 0 and names else None
