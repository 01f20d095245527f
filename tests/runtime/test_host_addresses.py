"""The namespace's own destinations over rtnetlink: the messages parsed from bytes, and
a real namespace whose addresses and local routes, added or removed at run time, are
reported (root)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import struct
import subprocess
import uuid

import pytest

from clrk_runtime import host_addresses, netlink
from clrk_runtime.host_addresses import (
    RTA_DST,
    RTA_TABLE,
    RTM_NEWROUTE,
    RTN_BROADCAST,
    RTN_LOCAL,
    RTN_UNICAST,
    HostAddresses,
    parse_messages,
)
from tests.netns_helpers import scratch_netns

NLMSG_DONE, NLMSG_ERROR = netlink.NLMSG_DONE, netlink.NLMSG_ERROR
attr = netlink.attribute


def message(kind: int, body: bytes) -> bytes:
    return netlink.message(kind, 2, 1, body)


def route(family: int, dst: str, plen: int, rtype: int = RTN_LOCAL, table: int = 255) -> bytes:
    header = struct.pack("=BBBBBBBBI", family, plen, 0, 0, min(table, 252), 2, 254, rtype, 0)
    raw = socket.inet_pton(family, dst)
    return message(
        RTM_NEWROUTE, header + attr(RTA_TABLE, struct.pack("=I", table)) + attr(RTA_DST, raw)
    )


def test_the_local_tables_local_and_broadcast_routes_count_as_own():
    data = route(socket.AF_INET, "198.51.100.1", 32)
    data += route(socket.AF_INET, "127.0.0.0", 8)  # loopback's whole prefix is local
    data += route(socket.AF_INET, "198.51.100.255", 32, RTN_BROADCAST)
    data += route(socket.AF_INET6, "fd00::7", 128)
    data += message(NLMSG_DONE, struct.pack("=i", 0))
    assert parse_messages(data) == (
        ["198.51.100.1", "127.0.0.0/8", "198.51.100.255", "fd00::7"],
        True,
    )


def test_routes_of_other_tables_or_types_do_not_count():
    data = route(socket.AF_INET, "10.0.0.0", 8, RTN_UNICAST)
    data += route(socket.AF_INET, "10.0.0.1", 32, RTN_LOCAL, table=254)  # main
    data += route(socket.AF_INET, "10.0.0.2", 32, RTN_LOCAL, table=1000)  # RTA_TABLE only
    assert parse_messages(data) == ([], False)


def test_a_netlink_error_is_raised_and_truncated_or_foreign_bytes_are_ignored():
    with pytest.raises(OSError):
        parse_messages(message(NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16))
    header = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 255, 2, 254, RTN_LOCAL, 0)
    short = message(RTM_NEWROUTE, header + attr(RTA_DST, b"\1\2"))
    assert parse_messages(short) == ([], False)
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
            # AnyIP: a whole prefix made local without any address.
            subprocess.run([*ip, "route", "add", "local", "10.9.0.0/16", "dev", "lo"], check=True)
            await until(lambda now: "10.9.0.0/16" in now)
            task.cancel()
            return seen

        def run() -> list[tuple[str, ...]]:
            in_netns(name)
            return asyncio.run(follow())

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            seen = pool.submit(run).result(timeout=60)
    # Loopback's whole prefix, each address, the subnet's broadcast; static ones too.
    assert {"127.0.0.0/8", "127.0.0.1", "::1", "192.0.2.99", "203.0.113.5"} <= set(seen[0])
    last = set(seen[-1])
    assert {"198.18.7.1", "fd00:77::1", "192.0.2.99", "10.9.0.0/16"} <= last
    assert "203.0.113.5" not in last
    assert host_addresses.dump()  # this namespace still has its own


def test_a_failed_read_is_retried_and_following_goes_on(monkeypatch):
    """EMFILE while reading (a flood holds the descriptors) must not end the following:
    the list would stay stale and a new address of the gateway open."""
    answers = iter([("192.0.2.1",), OSError(24, "Too many open files"), ("192.0.2.2",)])

    def dump():
        answer = next(answers, ("192.0.2.2",))
        if isinstance(answer, OSError):
            raise answer
        return answer

    monkeypatch.setattr(host_addresses, "dump", dump)
    monkeypatch.setattr(host_addresses, "RETRY", 0.01)

    async def follow() -> tuple[str, ...]:
        host = HostAddresses()
        changed = asyncio.Event()
        task = asyncio.create_task(host.follow(lambda now: changed.set()))
        try:
            await asyncio.wait_for(changed.wait(), 10)
        finally:
            task.cancel()
        return host.current

    assert asyncio.run(follow()) == ("192.0.2.2",)
