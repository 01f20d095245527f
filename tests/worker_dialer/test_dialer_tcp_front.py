"""tcp_front.admit_transparent: every connection it refuses is reset after exactly one
record, also one it could not decide (not redirected, or deciding failed)."""

from __future__ import annotations

import socket

import pytest

from clrk.records.schema import (
    AGENT_NAME,
    CLIENT_ADDRESS,
    DENY_REASON,
    DIAL_DENIED,
    PEER_ADDRESS,
    PEER_PORT,
)
from clrk_worker_dialer.config import DialerConfig
from clrk_worker_dialer.state import DialerState
from clrk_worker_dialer.tcp_front import admit_transparent
from tests.worker_dialer.dialer_policy import POLICY_YAML, Records


@pytest.fixture
def state(tmp_path) -> DialerState:
    manifests = tmp_path / "policy.yaml"
    manifests.write_text(POLICY_YAML)
    config = DialerConfig(
        manifests=[str(manifests)], gateway="default/gw", sources={"127.0.0.1": "agent-a"}
    )
    state = DialerState(config, Records())
    state.load()
    return state


def _admit(state: DialerState) -> tuple[object, bytes, tuple[str, int], tuple[str, int]]:
    """One loopback connection through admit: what admit returned, what the agent then
    read (b"reset" for an RST), the agent's address and the dialer's."""
    import asyncio

    async def run():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            conn, _peer = listener.accept()
            result = admit_transparent(state, None)(conn)
            client.settimeout(5)
            try:
                seen = client.recv(1)
            except ConnectionResetError:
                seen = b"reset"
            finally:
                addresses = client.getsockname(), listener.getsockname()
                client.close()
            return result, seen, *addresses

    return asyncio.run(run())


def test_a_connection_not_redirected_is_reset_with_one_blocked_address_record(state):
    # Loopback has no NAT: no SO_ORIGINAL_DST, as for a connection sent to the dialer's
    # own address.
    result, seen, client, dialer = _admit(state)
    assert (result, seen) == (None, b"reset")
    [record] = state.writer.emitted
    assert record.name == DIAL_DENIED
    assert record.attributes[DENY_REASON] == "blocked_address"
    assert record.attributes[CLIENT_ADDRESS] == f"{client[0]}:{client[1]}"
    assert (record.attributes[PEER_ADDRESS], record.attributes[PEER_PORT]) == dialer


def test_a_failure_while_deciding_resets_with_one_record_naming_the_agent(state, monkeypatch):
    monkeypatch.setattr(
        "clrk_worker_dialer.tcp_front.original_destination", lambda _sock: ("203.0.113.5", 5432)
    )

    def broken(*_args):
        raise RuntimeError("a bug in deciding")

    monkeypatch.setattr("clrk_worker_dialer.tcp_front._start_session", broken)
    result, seen, _client, _dialer = _admit(state)
    assert (result, seen) == (None, b"reset")
    [record] = state.writer.emitted
    assert record.attributes[DENY_REASON] == "blocked_address"
    assert record.attributes[AGENT_NAME] == "agent-a"
    assert (record.attributes[PEER_ADDRESS], record.attributes[PEER_PORT]) == ("203.0.113.5", 5432)


def test_a_refusal_is_recorded_once_even_when_resetting_fails_after_it(state, monkeypatch):
    monkeypatch.setattr(
        "clrk_worker_dialer.tcp_front.original_destination", lambda _sock: ("169.254.169.254", 80)
    )
    real_reset = __import__("clrk_worker_dialer.tcp_front", fromlist=["_reset_now"])._reset_now
    calls = []

    def reset_failing_once(conn):
        calls.append(conn)
        if len(calls) == 1:
            raise RuntimeError("after the record")
        real_reset(conn)

    monkeypatch.setattr("clrk_worker_dialer.tcp_front._reset_now", reset_failing_once)
    result, seen, _client, _dialer = _admit(state)
    assert (result, seen) == (None, b"reset")
    assert [r.attributes[DENY_REASON] for r in state.writer.emitted] == ["blocked_address"]
