import asyncio
import itertools
import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk_worker_dialer.socks5 import (
    Command,
    Event,
    Fail,
    Reply,
    Request,
    Send,
    Socks5Handshake,
    decode_udp,
    encode_udp,
    parse_host,
    reply,
)

# --- helpers -----------------------------------------------------------------------------

GREET_USERPASS = b"\x05\x01\x02"
GREET_NO_AUTH = b"\x05\x01\x00"
AUTH_AGENT_A = b"\x01\x07agent-a\x00"  # what curl sends for socks5h://agent-a@...
PREFIX = GREET_USERPASS + AUTH_AGENT_A
ACCEPTED = b"\x05\x02\x01\x00"  # method choice + auth success


def connect_name(name: bytes, port: int = 443, cmd: int = 1) -> bytes:
    return bytes([5, cmd, 0, 3, len(name)]) + name + port.to_bytes(2, "big")


def connect_v4(addr: bytes, port: int = 443, cmd: int = 1) -> bytes:
    return bytes([5, cmd, 0, 1]) + addr + port.to_bytes(2, "big")


def connect_v6(addr: bytes, port: int = 443, cmd: int = 1) -> bytes:
    return bytes([5, cmd, 0, 4]) + addr + port.to_bytes(2, "big")


def run(chunks: list[bytes], **kwargs) -> tuple[bytes, Request | Fail | None, bytes]:
    """Feed chunks; returns (all bytes sent, the terminal event, the tunnel bytes).

    The tunnel bytes are the request's leftover plus every chunk fed after it, which is
    what the shell would relay: it must not depend on how the input was split.
    """
    machine = Socks5Handshake(**kwargs)
    sent, terminal, tail = b"", None, b""
    for chunk in chunks:
        if terminal is not None:
            assert machine.feed(chunk) == []
            if isinstance(terminal, Request):
                tail += chunk  # after a Fail the connection is closed: nothing to relay
            continue
        for event in machine.feed(chunk):
            assert terminal is None, "no event after the terminal one"
            if isinstance(event, Send):
                sent += event.data
            else:
                terminal = event
                if isinstance(event, Request):
                    tail += event.leftover
                    terminal = Request(
                        event.command,
                        event.host,
                        event.port,
                        event.is_name,
                        event.username,
                        password=event.password,
                    )
    return sent, terminal, tail


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def refused_with(code: Reply) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


# --- the handshake, table-driven -----------------------------------------------------------

CASES = {
    "a CONNECT to a hostname after username auth names the host, port and agent": (
        PREFIX + connect_name(b"example.test", 80),
        {},
        ACCEPTED,
        Request(Command.CONNECT, "example.test", 80, True, "agent-a", password=""),
    ),
    "a hostname is lower-cased and loses its trailing dot": (
        PREFIX + connect_name(b"API.Example.TEST."),
        {},
        ACCEPTED,
        Request(Command.CONNECT, "api.example.test", 443, True, "agent-a", password=""),
    ),
    "a CONNECT to an IPv4 address is not a name": (
        PREFIX + connect_v4(bytes([192, 0, 2, 1]), 8080),
        {},
        ACCEPTED,
        Request(Command.CONNECT, "192.0.2.1", 8080, False, "agent-a", password=""),
    ),
    "a CONNECT to an IPv6 address is not a name": (
        PREFIX + connect_v6(bytes.fromhex("20010db8000000000000000000000001")),
        {},
        ACCEPTED,
        Request(Command.CONNECT, "2001:db8::1", 443, False, "agent-a", password=""),
    ),
    "an IPv4-mapped IPv6 address becomes the IPv4 address": (
        PREFIX + connect_v6(bytes.fromhex("00000000000000000000ffffc0000201")),
        {},
        ACCEPTED,
        Request(Command.CONNECT, "192.0.2.1", 443, False, "agent-a", password=""),
    ),
    "a domain-typed IP literal counts as an address, not a name": (
        PREFIX + connect_name(b"192.0.2.7"),
        {},
        ACCEPTED,
        Request(Command.CONNECT, "192.0.2.7", 443, False, "agent-a", password=""),
    ),
    "a domain-typed IPv6 literal counts as an address, not a name": (
        PREFIX + connect_name(b"2001:DB8::9"),
        {},
        ACCEPTED,
        Request(Command.CONNECT, "2001:db8::9", 443, False, "agent-a", password=""),
    ),
    "a UDP ASSOCIATE with 0.0.0.0:0 is a request": (
        PREFIX + connect_v4(bytes(4), 0, cmd=3),
        {},
        ACCEPTED,
        Request(Command.UDP_ASSOCIATE, "0.0.0.0", 0, False, "agent-a", password=""),
    ),
    "username/password is chosen when both it and no-auth are offered": (
        b"\x05\x02\x00\x02" + AUTH_AGENT_A + connect_name(b"example.test"),
        {"allow_no_auth": True},
        ACCEPTED,
        Request(Command.CONNECT, "example.test", 443, True, "agent-a", password=""),
    ),
    "a password is parsed and passed on with the request": (
        GREET_USERPASS + b"\x01\x07agent-a\x06secret" + connect_name(b"example.test"),
        {},
        ACCEPTED,
        Request(Command.CONNECT, "example.test", 443, True, "agent-a", password="secret"),
    ),
    "a known username passes check_user": (
        PREFIX + connect_name(b"example.test"),
        {"check_user": lambda user: user == "agent-a"},
        ACCEPTED,
        Request(Command.CONNECT, "example.test", 443, True, "agent-a", password=""),
    ),
    "no-auth is accepted when allowed and leaves the username unset": (
        GREET_NO_AUTH + connect_name(b"example.test"),
        {"allow_no_auth": True},
        b"\x05\x00",
        Request(Command.CONNECT, "example.test", 443, True, None),
    ),
    "no-auth is refused with 0xFF when not allowed": (
        GREET_NO_AUTH + connect_name(b"example.test"),
        {},
        b"\x05\xff",
        Fail(Reply.NOT_ALLOWED, "no_acceptable_method"),
    ),
    "a client offering only GSSAPI is refused with 0xFF": (
        b"\x05\x01\x01",
        {"allow_no_auth": True},
        b"\x05\xff",
        Fail(Reply.NOT_ALLOWED, "no_acceptable_method"),
    ),
    "a greeting with no methods is refused with 0xFF": (
        b"\x05\x00",
        {"allow_no_auth": True},
        b"\x05\xff",
        Fail(Reply.NOT_ALLOWED, "no_methods"),
    ),
    "a SOCKS4 client gets no reply": (
        b"\x04\x01\x00\x50\xc0\x00\x02\x01\x00",
        {},
        b"",
        Fail(Reply.GENERAL_FAILURE, "not_socks5"),
    ),
    "an HTTP request on the SOCKS port gets no reply": (
        b"GET / HTTP/1.1\r\n\r\n",
        {},
        b"",
        Fail(Reply.GENERAL_FAILURE, "not_socks5"),
    ),
    "an unknown username is refused by check_user with status 1": (
        PREFIX + connect_name(b"example.test"),
        {"check_user": lambda user: False},
        b"\x05\x02\x01\x01",
        Fail(Reply.NOT_ALLOWED, "unknown_user"),
    ),
    "a check_user that raises refuses the username": (
        PREFIX,
        {"check_user": lambda user: 1 / 0},
        b"\x05\x02\x01\x01",
        Fail(Reply.NOT_ALLOWED, "unknown_user"),
    ),
    "an empty username is refused": (
        GREET_USERPASS + b"\x01\x00\x00",
        {},
        b"\x05\x02\x01\x01",
        Fail(Reply.NOT_ALLOWED, "bad_username"),
    ),
    "a username that is not UTF-8 is refused": (
        GREET_USERPASS + b"\x01\x02\xff\xfe\x00",
        {},
        b"\x05\x02\x01\x01",
        Fail(Reply.NOT_ALLOWED, "bad_username"),
    ),
    "a username with a newline is refused": (
        GREET_USERPASS + b"\x01\x03a\nb\x00",
        {},
        b"\x05\x02\x01\x01",
        Fail(Reply.NOT_ALLOWED, "bad_username"),
    ),
    "a sub-negotiation with the wrong version is refused": (
        GREET_USERPASS + b"\x05\x07agent-a\x00",
        {},
        b"\x05\x02\x01\x01",
        Fail(Reply.NOT_ALLOWED, "bad_auth_version"),
    ),
    "BIND is answered with command not supported": (
        PREFIX + connect_v4(bytes(4), 0, cmd=2),
        {},
        ACCEPTED + refused_with(Reply.COMMAND_NOT_SUPPORTED),
        Fail(Reply.COMMAND_NOT_SUPPORTED, "bind_not_supported"),
    ),
    "an unknown command is answered with command not supported": (
        PREFIX + connect_v4(bytes(4), 0, cmd=9),
        {},
        ACCEPTED + refused_with(Reply.COMMAND_NOT_SUPPORTED),
        Fail(Reply.COMMAND_NOT_SUPPORTED, "unknown_command"),
    ),
    "an unknown address type is answered with address type not supported": (
        PREFIX + b"\x05\x01\x00\x02abcd\x01\xbb",
        {},
        ACCEPTED + refused_with(Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        Fail(Reply.ADDRESS_TYPE_NOT_SUPPORTED, "bad_address_type"),
    ),
    "a request with the wrong version is a general failure": (
        PREFIX + b"\x04\x01\x00\x01\xc0\x00\x02\x01\x01\xbb",
        {},
        ACCEPTED + refused_with(Reply.GENERAL_FAILURE),
        Fail(Reply.GENERAL_FAILURE, "bad_version"),
    ),
    "a request with a non-zero reserved byte is a general failure": (
        PREFIX + b"\x05\x01\x01\x01\xc0\x00\x02\x01\x01\xbb",
        {},
        ACCEPTED + refused_with(Reply.GENERAL_FAILURE),
        Fail(Reply.GENERAL_FAILURE, "bad_reserved_byte"),
    ),
    "a CONNECT to port 0 is a general failure": (
        PREFIX + connect_name(b"example.test", 0),
        {},
        ACCEPTED + refused_with(Reply.GENERAL_FAILURE),
        Fail(Reply.GENERAL_FAILURE, "bad_port"),
    ),
    "a zero-length hostname is a general failure": (
        PREFIX + b"\x05\x01\x00\x03\x00\x01\xbb",
        {},
        ACCEPTED + refused_with(Reply.GENERAL_FAILURE),
        Fail(Reply.GENERAL_FAILURE, "bad_hostname"),
    ),
}

BAD_NAMES = [
    b"exa mple.test",
    b"a..b",
    b".",
    b"caf\xc3\xa9.test",
    b"example.test\x00",
    b"127.1",
    b"0x7f000001",
    b"2130706433",
    b"foo.123",
    b"fe80::1%eth0",
    b"a" * 64 + b".test",
    b"a*.test",
]
for _bad in BAD_NAMES:
    CASES[f"the hostname {_bad!r} is refused as a general failure"] = (
        PREFIX + connect_name(_bad),
        {},
        ACCEPTED + refused_with(Reply.GENERAL_FAILURE),
        Fail(Reply.GENERAL_FAILURE, "bad_hostname"),
    )


@pytest.mark.parametrize(("data", "kwargs", "sent", "terminal"), CASES.values(), ids=CASES)
def test_handshake(data, kwargs, sent, terminal):
    assert run([data], **kwargs) == (sent, terminal, b"")


@pytest.mark.parametrize(("data", "kwargs", "sent", "terminal"), CASES.values(), ids=CASES)
def test_handshake_fed_one_byte_at_a_time_gives_the_same_result(data, kwargs, sent, terminal):
    assert run(one_byte_at_a_time(data), **kwargs) == (sent, terminal, b"")


def test_bytes_pipelined_after_the_request_are_returned_as_leftover():
    payload = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"
    events = Socks5Handshake().feed(PREFIX + connect_name(b"example.test", 80) + payload)
    assert events == [
        Send(b"\x05\x02"),
        Send(b"\x01\x00"),
        Request(
            Command.CONNECT, "example.test", 80, True, "agent-a", leftover=payload, password=""
        ),
    ]


def test_pipelined_leftover_is_the_same_however_the_bytes_are_split():
    data = PREFIX + connect_name(b"example.test", 80) + b"hello tunnel"
    expected = (
        ACCEPTED,
        Request(Command.CONNECT, "example.test", 80, True, "agent-a", password=""),
    )
    for split in range(len(data) + 1):
        sent, terminal, tail = run([data[:split], data[split:]])
        assert (sent, terminal, tail) == (*expected, b"hello tunnel")


def test_an_incomplete_handshake_sends_only_what_it_can():
    machine = Socks5Handshake()
    assert machine.feed(GREET_USERPASS + AUTH_AGENT_A[:-1]) == [Send(b"\x05\x02")]
    assert machine.feed(AUTH_AGENT_A[-1:]) == [Send(b"\x01\x00")]
    assert machine.feed(connect_name(b"example.test")[:-1]) == []
    assert not machine.done
    events = machine.feed(connect_name(b"example.test")[-1:])
    assert events == [Request(Command.CONNECT, "example.test", 443, True, "agent-a", password="")]
    assert machine.done and machine.username == "agent-a"


def test_feed_after_the_request_returns_nothing():
    machine = Socks5Handshake()
    machine.feed(PREFIX + connect_name(b"example.test"))
    assert machine.feed(b"more bytes") == []


def test_feed_after_a_failure_returns_nothing():
    machine = Socks5Handshake()
    assert machine.feed(b"\x04") == [Fail(Reply.GENERAL_FAILURE, "not_socks5")]
    assert machine.feed(PREFIX) == []


def test_check_user_is_asked_once_with_the_username():
    asked = []
    Socks5Handshake(check_user=lambda u: asked.append(u) or True).feed(PREFIX)
    assert asked == ["agent-a"]


# --- replies ---------------------------------------------------------------------------------


def test_reply_codes_are_the_rfc_1928_values():
    assert [int(code) for code in Reply] == list(range(9))
    assert Reply.NOT_ALLOWED == 2 and Reply.ADDRESS_TYPE_NOT_SUPPORTED == 8


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((Reply.SUCCEEDED,), b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"),
        ((Reply.NOT_ALLOWED,), b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"),
        ((0, "127.0.0.1", 1080), b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"),
        (
            (Reply.SUCCEEDED, "2001:db8::1", 443),
            b"\x05\x00\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x01\xbb",
        ),
    ],
    ids=["success", "not allowed", "IPv4 bound address", "IPv6 bound address"],
)
def test_reply_bytes(args, expected):
    assert reply(*args) == expected


@pytest.mark.parametrize(
    "args", [(0, "example.test"), (0, "0.0.0.0", 70000), (42,)], ids=["name", "port", "code"]
)
def test_reply_refuses_what_it_cannot_encode(args):
    with pytest.raises(ValueError):
        reply(*args)


# --- UDP ASSOCIATE datagrams -----------------------------------------------------------------


UDP_CASES = {
    "an IPv4 datagram": (
        b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35dns",
        ("192.0.2.1", 53, False, b"dns"),
    ),
    "an IPv6 datagram": (
        b"\x00\x00\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x00\x35q",
        ("2001:db8::1", 53, False, b"q"),
    ),
    "a datagram to a hostname": (
        b"\x00\x00\x00\x03\x0cExample.TEST\x01\xbbquic",
        ("example.test", 443, True, b"quic"),
    ),
    "a datagram with an empty payload": (
        b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35",
        ("192.0.2.1", 53, False, b""),
    ),
    "a fragment is dropped": (b"\x00\x00\x01\x01\xc0\x00\x02\x01\x00\x35dns", None),
    "a truncated address is dropped": (b"\x00\x00\x00\x01\xc0\x00\x02", None),
    "a truncated header is dropped": (b"\x00\x00\x00", None),
    "a datagram to port 0 is dropped": (b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x00x", None),
    "a datagram to an invalid hostname is dropped": (b"\x00\x00\x00\x03\x03a b\x00\x35x", None),
    "a datagram with an unknown address type is dropped": (b"\x00\x00\x00\x02abcd\x00\x35", None),
}


@pytest.mark.parametrize(("datagram", "expected"), UDP_CASES.values(), ids=UDP_CASES)
def test_decode_udp(datagram, expected):
    assert decode_udp(datagram) == expected


def test_encode_udp_bytes():
    assert encode_udp("192.0.2.1", 53, b"ans") == b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35ans"
    assert encode_udp("example.test", 443, b"") == b"\x00\x00\x00\x03\x0cexample.test\x01\xbb"


@given(
    st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
    ),
    st.integers(1, 0xFFFF),
    st.binary(max_size=64),
)
def test_encode_then_decode_udp_round_trips(host, port, payload):
    expected_host, is_name = parse_host(host)
    assert decode_udp(encode_udp(host, port, payload)) == (expected_host, port, is_name, payload)


# --- never raises ----------------------------------------------------------------------------


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([b"", GREET_USERPASS, PREFIX, PREFIX + b"\x05\x01\x00"]),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    allow_no_auth=st.booleans(),
)
def test_any_bytes_in_any_split_never_raise_and_give_the_same_result(
    prefix, data, cuts, allow_no_auth
):
    data = prefix + data
    whole = run([data], allow_no_auth=allow_no_auth)
    assert run(splits(data, cuts), allow_no_auth=allow_no_auth) == whole


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decode_udp_never_raises(datagram):
    decode_udp(datagram)


# --- against the real curl -------------------------------------------------------------------

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


async def serve_one(handshake: Socks5Handshake, on_request):
    """A loopback server that accepts one SOCKS5 client with the codec.

    Returns (events seen, port, a future done when the client is handled, the server).
    on_request(request, reader, writer) plays the dialer after a Request.
    """
    events: list[Event] = []
    done = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not handshake.done:
                data = await reader.read(4096)
                if not data:
                    break
                for event in handshake.feed(data):
                    events.append(event)
                    if isinstance(event, Send):
                        writer.write(event.data)
                    elif isinstance(event, Request):
                        await on_request(event, reader, writer)
            await writer.drain()
        finally:
            writer.close()
            done.set_result(None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return events, port, done, server


async def curl(*args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        CURL,
        "-sS",
        "--max-time",
        "5",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},  # no *_proxy variables
    )
    out, _ = await proc.communicate()
    return proc.returncode, out


def against_curl(proxy_scheme: str, url: str, on_request, handshake=None, user="agent-a@"):
    async def scenario():
        events, port, done, server = await serve_one(handshake or Socks5Handshake(), on_request)
        async with server:
            rc, out = await curl("--proxy", f"{proxy_scheme}://{user}127.0.0.1:{port}", url)
            await asyncio.wait_for(done, 5)
        return events, rc, out

    return asyncio.run(scenario())


async def refuse(request, reader, writer):
    writer.write(reply(Reply.NOT_ALLOWED))


@needs_curl
def test_curl_socks5h_sends_the_hostname_and_the_agent_as_username():
    events, rc, _ = against_curl("socks5h", "http://example.test/", refuse)
    assert events[-1] == Request(Command.CONNECT, "example.test", 80, True, "agent-a", password="")
    assert rc == 97  # curl: the proxy handshake failed (we refused)


@needs_curl
def test_curl_socks5_with_an_ipv4_target_sends_the_address():
    events, _, _ = against_curl("socks5", "http://192.0.2.1:8080/", refuse)
    assert events[-1] == Request(Command.CONNECT, "192.0.2.1", 8080, False, "agent-a", password="")


@needs_curl
def test_curl_socks5_with_an_ipv6_target_sends_the_address():
    events, _, _ = against_curl("socks5", "http://[2001:db8::1]:8443/", refuse)
    assert events[-1] == Request(
        Command.CONNECT, "2001:db8::1", 8443, False, "agent-a", password=""
    )


@needs_curl
def test_curl_accepts_a_success_reply_and_talks_through_the_tunnel():
    async def origin(request, reader, writer):
        # Play the upstream too: answer curl's HTTP request through the "tunnel".
        writer.write(reply(Reply.SUCCEEDED, "127.0.0.1", 4242))
        head = request.leftover
        while b"\r\n\r\n" not in head:
            head += await reader.read(4096)
        assert head.startswith(b"GET / HTTP/1.1\r\n") and b"Host: example.test" in head
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")

    events, rc, out = against_curl("socks5h", "http://example.test/", origin)
    assert (rc, out) == (0, b"hello\n")
    assert events[-1] == Request(Command.CONNECT, "example.test", 80, True, "agent-a", password="")


@needs_curl
def test_curl_without_a_username_is_refused_when_no_auth_is_not_allowed():
    events, rc, _ = against_curl("socks5h", "http://example.test/", refuse, user="")
    assert events == [Send(b"\x05\xff"), Fail(Reply.NOT_ALLOWED, "no_acceptable_method")]
    assert rc == 97


@needs_curl
def test_curl_with_an_unknown_username_is_refused_by_check_user():
    handshake = Socks5Handshake(check_user=lambda user: user == "agent-b")
    events, rc, _ = against_curl("socks5h", "http://example.test/", refuse, handshake)
    assert events[-1] == Fail(Reply.NOT_ALLOWED, "unknown_user")
    assert rc == 97
