"""Random bytes for ids (connection, trace and span ids), taken from the kernel's CSPRNG
a page at a time: one getrandom(2) per ~170 records rather than one or two for each,
which a denial paid for before its reset.

The bytes are os.urandom's, only fetched ahead; each is handed out once.  A forked child
drops what its parent fetched, so the two never hand out the same ids.
"""

from __future__ import annotations

import os
import threading

_PAGE = 4096


class RandomBytes:
    def __init__(self, page: int = _PAGE) -> None:
        self._page = page
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        """`n` bytes (at most a page) no other caller gets."""
        with self._lock:
            at = self._at
            if at + n > len(self._buffer):
                self._buffer, at = os.urandom(max(self._page, n)), 0
            self._at = at + n
            return self._buffer[at : at + n]

    def drop(self) -> None:
        """In a forked child: forget the parent's bytes.  A new lock, not the old one: a
        thread of the parent may have held it at the fork, and it never lets go here."""
        self._lock = threading.Lock()
        self._buffer, self._at = b"", 0


_shared = RandomBytes()
os.register_at_fork(after_in_child=_shared.drop)
take = _shared.take
