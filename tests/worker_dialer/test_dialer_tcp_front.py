"""tcp_front.admit_transparent: every connection it refuses is reset after exactly one
record, also one it could not decide (not redirected, or deciding failed); an allowed
one that needs none of its bytes is spliced to its next hop there, without a transport."""

from __future__ import annotations

import socket

import pytest

from clrk.nexthops import listener_socket_path
from clrk.records.schema import (
    AGENT_NAME,
    CLIENT_ADDRESS,
    DENY_REASON,
    DIAL_DENIED,
    PEER_ADDRESS,
    PEER_PORT,
)
from clrk.wire import TlvType
from clrk_worker_dialer import proxy_v2, tcp_front
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
            result = admit_transparent(state, None)(conn, listener.getsockname()[1])
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


@pytest.fixture
def unix_state(tmp_path, monkeypatch) -> DialerState:
    """The policy with Envoy's listeners on Unix sockets in tmp_path, and every
    connection REDIRECTed to an address the `db` route allows."""
    manifests = tmp_path / "policy.yaml"
    manifests.write_text(POLICY_YAML)
    config = DialerConfig(
        manifests=[str(manifests)],
        gateway="default/gw",
        sources={"127.0.0.1": "agent-a"},
        next_hop_socket_dir=str(tmp_path),
    )
    state = DialerState(config, Records())
    state.load()
    monkeypatch.setattr(tcp_front, "original_destination", lambda conn: ("203.0.113.5", 5432))
    return state


def test_an_allowed_connection_is_spliced_to_its_unix_next_hop_header_first(unix_state, tmp_path):
    import asyncio

    async def run():
        loop = asyncio.get_running_loop()
        with (
            socket.socket(socket.AF_UNIX) as envoy,
            socket.create_server(("127.0.0.1", 0)) as listener,
        ):
            envoy.bind(listener_socket_path(str(tmp_path), "tcp"))
            envoy.listen()
            envoy.setblocking(False)
            client = socket.create_connection(listener.getsockname())
            conn, _peer = listener.accept()
            conn.setblocking(False)
            port = listener.getsockname()[1]
            assert admit_transparent(unix_state, None)(conn, port) is None  # no transport
            upstream, _ = await loop.sock_accept(envoy)
            client.sendall(b"hi")
            got = b""
            while (parsed := proxy_v2.decode(got)) is None or len(got) < parsed[1] + 2:
                got += await loop.sock_recv(upstream, 100)
            await loop.sock_sendall(upstream, b"yo")
            reply = await loop.run_in_executor(None, client.recv, 2)
            client.close()
            upstream.close()
            return parsed, got, reply

    (header, size), got, reply = asyncio.run(run())
    assert (header.destination_ip, header.destination_port) == ("203.0.113.5", 5432)
    assert dict(header.tlvs)[TlvType.ROUTE] == b"default/db"
    assert got[size:] == b"hi" and reply == b"yo"


def test_an_allowed_connection_whose_next_hop_is_not_listening_is_reset(unix_state):
    result, seen, _agent, _dialer = _admit(unix_state)
    assert result is None and seen == b"reset"
