"""random_bytes: each byte fetched from the kernel is handed out once, in any split, also
after a refill and across a fork."""

from __future__ import annotations

import os

from clrk_runtime import random_bytes
from clrk_runtime.random_bytes import RandomBytes


def test_takes_are_disjoint_slices_of_what_the_kernel_gave_refilled_when_short(monkeypatch):
    fetched: list[bytes] = []

    def urandom(n: int) -> bytes:
        fetched.append(bytes(range(len(fetched) * 16, len(fetched) * 16 + n)))
        return fetched[-1]

    monkeypatch.setattr(os, "urandom", urandom)
    pool = RandomBytes(page=16)
    taken = [pool.take(6), pool.take(6), pool.take(6), pool.take(20)]
    assert taken[0] + taken[1] == fetched[0][:12]
    assert taken[2] == fetched[1][:6]  # 4 bytes were left: not enough, never reused
    assert taken[3] == fetched[2] and len(fetched[2]) == 20  # larger than a page


def test_a_forked_child_never_hands_out_its_parents_bytes():
    random_bytes.take(8)  # the shared pool holds a page now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it takes next, to the parent
        os.close(read)
        os.write(write, random_bytes.take(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != random_bytes.take(16)
