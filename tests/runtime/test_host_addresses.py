"""The namespace's own addresses over rtnetlink: the messages parsed from bytes, and a
real namespace whose address added or removed at run time is reported (root)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import struct
import subprocess
import uuid

import pytest

from clrk_runtime import host_addresses
from clrk_runtime.host_addresses import (
    IFA_ADDRESS,
    IFA_LOCAL,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWADDR,
    HostAddresses,
    parse_messages,
)
from tests.netns_helpers import scratch_netns


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body


def newaddr(family: int, *attrs: bytes) -> bytes:
    return message(RTM_NEWADDR, struct.pack("=BBBBI", family, 24, 0, 0, 2) + b"".join(attrs))


def test_the_local_address_counts_and_a_point_to_point_peer_does_not():
    data = newaddr(
        socket.AF_INET,
        attr(IFA_ADDRESS, socket.inet_aton("203.0.113.9")),  # the peer
        attr(IFA_LOCAL, socket.inet_aton("198.51.100.1")),
    )
    assert parse_messages(data) == (["198.51.100.1"], False)


def test_ipv6_addresses_come_as_ifa_address_alone_and_done_ends_the_dump():
    data = newaddr(socket.AF_INET6, attr(IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "fd00::7")))
    data += message(NLMSG_DONE, struct.pack("=i", 0))
    assert parse_messages(data) == (["fd00::7"], True)


def test_a_netlink_error_is_raised_and_truncated_or_foreign_bytes_are_ignored():
    with pytest.raises(OSError):
        parse_messages(message(NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16))
    assert parse_messages(newaddr(socket.AF_INET, attr(IFA_LOCAL, b"\1\2"))) == ([], False)
    assert parse_messages(b"\xff" * 7) == ([], False)
    assert parse_messages(message(99, b"junk")) == ([], False)


CLONE_NEWNET = 0x40000000
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")


def in_netns(name: str) -> None:
    """setns(2) for this thread (os.setns is Python 3.12+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


@needs_root
def test_an_address_added_or_removed_at_run_time_is_reported():
    """In a thread of its own that enters the scratch namespace (setns is per thread),
    so the test process's namespace is never touched."""
    name = f"clrk-hostaddr-{uuid.uuid4().hex[:6]}"
    with scratch_netns(name):
        ip = ["ip", "-n", name]
        subprocess.run([*ip, "link", "add", "d0", "type", "veth", "peer", "name", "d1"], check=True)
        subprocess.run([*ip, "link", "set", "d0", "up"], check=True)
        subprocess.run([*ip, "addr", "add", "203.0.113.5/24", "dev", "d0"], check=True)

        async def follow() -> list[tuple[str, ...]]:
            host = HostAddresses(["192.0.2.99"])
            seen = [host.current]
            changed = asyncio.Event()

            def report(now: tuple[str, ...]) -> None:
                seen.append(now)
                changed.set()

            async def until(holds) -> None:
                while not holds(set(host.current)):
                    changed.clear()
                    await asyncio.wait_for(changed.wait(), 10)

            task = asyncio.create_task(host.follow(report))
            await asyncio.sleep(0.2)  # subscribed
            subprocess.run([*ip, "addr", "add", "198.18.7.1/30", "dev", "d0"], check=True)
            await until(lambda now: "198.18.7.1" in now)
            subprocess.run([*ip, "addr", "add", "fd00:77::1/64", "dev", "d0", "nodad"], check=True)
            await until(lambda now: "fd00:77::1" in now)
            subprocess.run([*ip, "addr", "del", "203.0.113.5/24", "dev", "d0"], check=True)
            await until(lambda now: "203.0.113.5" not in now)
            task.cancel()
            return seen

        def run() -> list[tuple[str, ...]]:
            in_netns(name)
            return asyncio.run(follow())

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            seen = pool.submit(run).result(timeout=60)
    assert set(seen[0]) == {"127.0.0.1", "::1", "192.0.2.99", "203.0.113.5"}
    last = set(seen[-1])
    assert {"198.18.7.1", "fd00:77::1", "192.0.2.99"} <= last
    assert "203.0.113.5" not in last
    assert host_addresses.dump()  # this namespace still has its own
