"""Datagrams sent together at the end of a turn of the event loop, not one by one.

A datagram sent to a process asleep on another CPU wakes it, and that wake-up is paid by
the sender: sent one at a time between the work on the next ones, every datagram woke
its receiver anew.  Sent back to back, the first one wakes it and it finds the rest
waiting.  No datagram waits behind more than CAP others, however long the turn: a turn
the agents fill with work must not hold back everyone's queries and answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class SendBatch(Generic[Item]):
    CAP = 64

    def __init__(self, send_all: Callable[[list[Item]], None]) -> None:
        self._send_all = send_all  # sends the items given, in order
        self._items: list[Item] = []
        self._scheduled = False

    def add(self, loop: asyncio.AbstractEventLoop, item: Item) -> None:
        """Send `item` at the end of this turn of `loop`, or now with the CAP before it."""
        self._items.append(item)
        if len(self._items) >= self.CAP:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._turn_ended)

    def _turn_ended(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        items, self._items = self._items, []
        if items:
            self._send_all(items)

    def clear(self) -> None:
        """Forget what waits: nothing of it is sent."""
        self._items.clear()
