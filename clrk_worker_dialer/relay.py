"""Splicing two asyncio transports: bytes both ways, half-close, and back-pressure (a
side whose peer cannot keep up stops reading until the peer's buffer drains)."""

from __future__ import annotations

import asyncio


class UpstreamSide(asyncio.Protocol):
    """The dialer's connection to the next hop; the agent side owns the relay."""

    def __init__(self, agent_transport: asyncio.Transport) -> None:
        self.agent = agent_transport
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.agent.write(data)

    def eof_received(self) -> bool:
        if self.agent.can_write_eof() and not self.agent.is_closing():
            self.agent.write_eof()
        return True  # keep the other direction open until the agent closes it too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.agent.is_closing():
            self.agent.close()

    def pause_writing(self) -> None:
        self.agent.pause_reading()

    def resume_writing(self) -> None:
        if not self.agent.is_closing():
            self.agent.resume_reading()
