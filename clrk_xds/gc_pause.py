"""The cyclic garbage collector held off while a policy set is loaded and translated.

A 10,000-route set makes a few million objects that all stay alive until the snapshot is
built, and the collector walked them again and again as they grew: a third of a cold
start (load + compile + translate + check: 17 -> 11 s here).  Reference counting still
frees what a build drops; what a cycle holds waits for the collector, which runs as soon
as the last pause ends.  Pauses nest and may overlap between threads (a reload and an
admin API preflight): the collector runs again when none is open.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_open = 0
_was_enabled = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    global _open, _was_enabled
    with _lock:
        if _open == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if _open == 0 and _was_enabled:
                gc.enable()
