"""Datagrams sent together at the end of a turn of the event loop."""

from __future__ import annotations

import asyncio

from clrk_worker_dialer.send_batch import SendBatch


def test_what_a_turn_adds_is_sent_together_in_order_when_it_ends():
    async def run():
        calls: list[list[int]] = []
        batch = SendBatch(calls.append)
        loop = asyncio.get_running_loop()
        for item in (1, 2, 3):
            batch.add(loop, item)
        during = list(calls)
        await asyncio.sleep(0)
        after_first = list(calls)
        batch.add(loop, 4)
        await asyncio.sleep(0)
        return during, after_first, calls

    assert asyncio.run(run()) == ([], [[1, 2, 3]], [[1, 2, 3], [4]])


def test_nothing_waits_behind_more_than_the_cap_however_long_the_turn():
    async def run():
        calls: list[list[int]] = []
        batch = SendBatch(calls.append)
        loop = asyncio.get_running_loop()
        for item in range(SendBatch.CAP + 3):
            batch.add(loop, item)
        during = [len(call) for call in calls]
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # one call for the rest, not one per turn scheduled
        return during, [len(call) for call in calls]

    assert asyncio.run(run()) == ([SendBatch.CAP], [SendBatch.CAP, 3])


def test_what_is_cleared_is_never_sent():
    async def run():
        calls: list[list[int]] = []
        batch = SendBatch(calls.append)
        batch.add(asyncio.get_running_loop(), 1)
        batch.clear()
        await asyncio.sleep(0)
        return calls

    assert asyncio.run(run()) == []
