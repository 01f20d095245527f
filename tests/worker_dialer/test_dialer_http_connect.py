import asyncio
import base64
import itertools
import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk_worker_dialer.http_connect import (
    INCOMPLETE,
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    ConnectRequest,
    ConnectRequestParser,
    Incomplete,
    Rejected,
    established,
    refused,
    rejection,
)
from clrk_worker_dialer.tls_sni import SniOutcome, SniResult, parse_client_hello

# --- helpers -----------------------------------------------------------------------------


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def head(request_line: str, *headers: str) -> bytes:
    return ("\r\n".join([request_line, *headers]) + "\r\n\r\n").encode("latin-1")


CURL_HEAD = head(
    "CONNECT example.test:443 HTTP/1.1",
    "Host: example.test:443",
    "Proxy-Authorization: Basic YWdlbnQtYTo=",  # curl's agent-a: for http://agent-a@proxy
    "User-Agent: curl/7.88.1",
    "Proxy-Connection: Keep-Alive",
)


def run(chunks: list[bytes]):
    """Feed chunks; returns (the final result, the tunnel bytes: leftover + later chunks)."""
    parser = ConnectRequestParser()
    result, tail = INCOMPLETE, b""
    for chunk in chunks:
        if isinstance(result, Incomplete):
            result = parser.feed(chunk)
            if isinstance(result, ConnectRequest):
                tail = result.leftover
        else:
            assert parser.feed(chunk) is result, "a final result never changes"
            tail += chunk
    if isinstance(result, ConnectRequest):
        result = ConnectRequest(
            result.host, result.port, result.is_name, result.username, password=result.password
        )
        return result, tail
    return result, b""


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


# --- parsing, table-driven -------------------------------------------------------------------

CASES = {
    "curl's CONNECT names the host, port and agent": (
        CURL_HEAD,
        ConnectRequest("example.test", 443, True, "agent-a", password=""),
    ),
    "a request without Proxy-Authorization has no username": (
        head("CONNECT example.test:443 HTTP/1.1", "Host: example.test:443"),
        ConnectRequest("example.test", 443, True, None),
    ),
    "HTTP/1.0 is accepted": (
        head("CONNECT example.test:443 HTTP/1.0"),
        ConnectRequest("example.test", 443, True, None),
    ),
    "a hostname is lower-cased and loses its trailing dot": (
        head("CONNECT API.Example.TEST.:8443 HTTP/1.1"),
        ConnectRequest("api.example.test", 8443, True, None),
    ),
    "an IPv4 target is not a name": (
        head("CONNECT 192.0.2.1:443 HTTP/1.1"),
        ConnectRequest("192.0.2.1", 443, False, None),
    ),
    "a bracketed IPv6 target is not a name": (
        head("CONNECT [2001:DB8::1]:443 HTTP/1.1"),
        ConnectRequest("2001:db8::1", 443, False, None),
    ),
    "an IPv4-mapped IPv6 target becomes the IPv4 address": (
        head("CONNECT [::ffff:192.0.2.1]:443 HTTP/1.1"),
        ConnectRequest("192.0.2.1", 443, False, None),
    ),
    "the password is everything after the first colon": (
        head("CONNECT example.test:443 HTTP/1.1", "Proxy-Authorization: " + basic("agent-a:pw:x")),
        ConnectRequest("example.test", 443, True, "agent-a", password="pw:x"),
    ),
    "the header name and the Basic scheme are case-insensitive": (
        head("CONNECT example.test:443 HTTP/1.1", "proxy-authorization: basic YWdlbnQtYTo="),
        ConnectRequest("example.test", 443, True, "agent-a", password=""),
    ),
    "bare LF line ends are accepted": (
        b"CONNECT example.test:443 HTTP/1.1\nProxy-Authorization: Basic YWdlbnQtYTo=\n\n",
        ConnectRequest("example.test", 443, True, "agent-a", password=""),
    ),
    "exactly the maximum number of header lines is accepted": (
        head("CONNECT example.test:443 HTTP/1.1", *[f"X-{i}: y" for i in range(MAX_HEADER_LINES)]),
        ConnectRequest("example.test", 443, True, None),
    ),
    "GET is not allowed": (
        head("GET http://example.test/ HTTP/1.1"),
        Rejected(405, "only CONNECT is supported"),
    ),
    "methods are case-sensitive": (
        head("connect example.test:443 HTTP/1.1"),
        Rejected(405, "only CONNECT is supported"),
    ),
    "a target without a port is malformed": (
        head("CONNECT example.test HTTP/1.1"),
        Rejected(400, "missing or invalid port"),
    ),
    "an empty request line is malformed": (b"\r\n\r\n", Rejected(400, "malformed request line")),
    "a request line with two spaces is malformed": (
        head("CONNECT  example.test:443 HTTP/1.1"),
        Rejected(400, "malformed request line"),
    ),
    "HTTP/2.0 is malformed here": (
        head("CONNECT example.test:443 HTTP/2.0"),
        Rejected(400, "malformed request line"),
    ),
    "a TLS ClientHello on the proxy port is malformed": (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        Rejected(400, "malformed request line"),
    ),
    "an unbracketed IPv6 target is refused": (
        head("CONNECT 2001:db8::1:443 HTTP/1.1"),
        Rejected(400, "invalid host"),
    ),
    "a bracketed name is refused": (
        head("CONNECT [example.test]:443 HTTP/1.1"),
        Rejected(400, "invalid IPv6 literal"),
    ),
    "a scoped IPv6 literal is refused": (
        head("CONNECT [fe80::1%eth0]:443 HTTP/1.1"),
        Rejected(400, "invalid IPv6 literal"),
    ),
    "a userinfo in the target is refused": (
        head("CONNECT user@example.test:443 HTTP/1.1"),
        Rejected(400, "invalid host"),
    ),
    "an empty host is refused": (head("CONNECT :443 HTTP/1.1"), Rejected(400, "invalid host")),
    "a numeric name a resolver could read as an address is refused": (
        head("CONNECT 127.1:443 HTTP/1.1"),
        Rejected(400, "invalid host"),
    ),
    "a non-ASCII name is refused": (
        "CONNECT café.test:443 HTTP/1.1\r\n\r\n".encode(),
        Rejected(400, "invalid host"),
    ),
    "obsolete line folding is refused": (
        head("CONNECT example.test:443 HTTP/1.1", "X-A: b", " folded"),
        Rejected(400, "obsolete header line folding"),
    ),
    "a header line without a colon is refused": (
        head("CONNECT example.test:443 HTTP/1.1", "nonsense"),
        Rejected(400, "malformed header line"),
    ),
    "whitespace before a header colon is refused": (
        head("CONNECT example.test:443 HTTP/1.1", "Proxy-Authorization : Basic YWdlbnQtYTo="),
        Rejected(400, "malformed header line"),
    ),
    "two Proxy-Authorization headers are refused": (
        head(
            "CONNECT example.test:443 HTTP/1.1",
            "Proxy-Authorization: " + basic("agent-a:"),
            "Proxy-Authorization: " + basic("agent-b:"),
        ),
        Rejected(400, "more than one Proxy-Authorization header"),
    ),
    "Basic credentials that are not base64 are refused": (
        head("CONNECT example.test:443 HTTP/1.1", "Proxy-Authorization: Basic !!!"),
        Rejected(400, "malformed Basic credentials"),
    ),
    "Basic credentials without a colon are refused": (
        head("CONNECT example.test:443 HTTP/1.1", "Proxy-Authorization: " + basic("agent-a")),
        Rejected(400, "malformed Basic credentials"),
    ),
    "Basic credentials that are not UTF-8 are refused": (
        head("CONNECT example.test:443 HTTP/1.1", "Proxy-Authorization: Basic //46"),
        Rejected(400, "malformed Basic credentials"),
    ),
    "an empty username asks for authentication": (
        head("CONNECT example.test:443 HTTP/1.1", "Proxy-Authorization: " + basic(":pw")),
        Rejected(407, "invalid proxy username"),
    ),
    "a username with a control character asks for authentication": (
        head("CONNECT example.test:443 HTTP/1.1", "Proxy-Authorization: " + basic("a\tb:")),
        Rejected(407, "invalid proxy username"),
    ),
    "a scheme other than Basic asks for authentication": (
        head("CONNECT example.test:443 HTTP/1.1", "Proxy-Authorization: Bearer abc"),
        Rejected(407, "only Basic proxy authentication is supported"),
    ),
    "one header line too many is refused": (
        head(
            "CONNECT example.test:443 HTTP/1.1",
            *[f"X-{i}: y" for i in range(MAX_HEADER_LINES + 1)],
        ),
        Rejected(431, "too many header lines"),
    ),
}

for _port in ["0", "65536", "99999", "-1", "+443", " 443", "0x1bb", "", "443a", "٤٤٣"]:
    CASES[f"the port {_port!r} is refused"] = (
        f"CONNECT example.test:{_port} HTTP/1.1\r\n\r\n".encode(),
        Rejected(400, "missing or invalid port")
        if " " not in _port
        else Rejected(400, "malformed request line"),
    )


@pytest.mark.parametrize(("data", "expected"), CASES.values(), ids=CASES)
def test_parse(data, expected):
    assert run([data]) == (expected, b"")


@pytest.mark.parametrize(("data", "expected"), CASES.values(), ids=CASES)
def test_parse_fed_one_byte_at_a_time_gives_the_same_result(data, expected):
    assert run(one_byte_at_a_time(data)) == (expected, b"")


def test_bytes_after_the_head_are_returned_as_leftover():
    result = ConnectRequestParser().feed(CURL_HEAD + b"\x16\x03\x01 tls")
    assert result == ConnectRequest(
        "example.test", 443, True, "agent-a", leftover=b"\x16\x03\x01 tls", password=""
    )


def test_leftover_is_the_same_however_the_bytes_are_split():
    data = CURL_HEAD + b"tunnel bytes\r\n\r\n"
    for split in range(len(data) + 1):
        assert run([data[:split], data[split:]]) == (
            ConnectRequest("example.test", 443, True, "agent-a", password=""),
            b"tunnel bytes\r\n\r\n",
        )


def test_an_unfinished_head_is_incomplete():
    parser = ConnectRequestParser()
    assert parser.feed(CURL_HEAD[:-2]) == INCOMPLETE
    assert parser.feed(CURL_HEAD[-2:-1]) == INCOMPLETE
    assert isinstance(parser.feed(CURL_HEAD[-1:]), ConnectRequest)


def test_a_head_that_does_not_end_within_16_kib_is_refused():
    parser = ConnectRequestParser()
    filler = b"CONNECT example.test:443 HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES - 100)
    assert parser.feed(filler) == INCOMPLETE
    assert parser.feed(b"a" * 200) == Rejected(431, "request head too large")
    assert parser.feed(b"\r\n\r\n") == Rejected(431, "request head too large")


def test_a_head_of_exactly_16_kib_is_accepted():
    line = "CONNECT example.test:443 HTTP/1.1\r\nX: "
    data = (line + "a" * (MAX_HEAD_BYTES - len(line))).encode() + b"\r\n\r\n"
    assert isinstance(ConnectRequestParser().feed(data), ConnectRequest)
    assert ConnectRequestParser().feed(b"a" + data) == Rejected(431, "request head too large")


def test_the_head_bound_is_configurable():
    parser = ConnectRequestParser(max_head_bytes=32, max_header_lines=1)
    assert parser.feed(CURL_HEAD) == Rejected(431, "request head too large")
    parser = ConnectRequestParser(max_header_lines=1)
    assert parser.feed(CURL_HEAD) == Rejected(431, "too many header lines")


# --- responses -------------------------------------------------------------------------------


def test_established_bytes():
    assert established() == b"HTTP/1.1 200 Connection established\r\n\r\n"


def test_a_policy_refusal_carries_the_deny_reason_and_closes():
    assert refused(403, "denied by policy", "policy") == (
        b"HTTP/1.1 403 Forbidden\r\n"
        b"x-clrk-deny-reason: policy\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 17\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"denied by policy\n"
    )


def test_a_407_challenges_for_basic_proxy_authentication():
    assert refused(407, "proxy username required") == (
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="clrk"\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 24\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"proxy username required\n"
    )


def test_an_upstream_failure_is_a_502():
    assert refused(502, "upstream connect failed").startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


def test_an_unknown_status_still_has_a_reason_phrase():
    assert refused(599, "x").startswith(b"HTTP/1.1 599 Error\r\n")


def test_reasons_cannot_inject_header_lines():
    response = refused(403, "a\r\nSet-Cookie: x", "policy\r\nX-Evil: 1")
    head_part, _, body = response.partition(b"\r\n\r\n")
    assert b"X-Evil" not in head_part.split(b"\r\n")[2]
    assert b"\r\nX-Evil" not in head_part and b"x-clrk-deny-reason: policy??X-Evil: 1" in head_part
    assert body == b"a??Set-Cookie: x\n"
    assert b"Content-Length: 17" in head_part


def test_rejection_answers_a_rejected_request():
    rejected = ConnectRequestParser().feed(head("GET / HTTP/1.1"))
    assert rejection(rejected).startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert rejection(rejected).endswith(b"\r\n\r\nonly CONNECT is supported\n")


# --- never raises ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(
        [b"", b"CONNECT ", b"CONNECT example.test:443 HTTP/1.1\r\n", CURL_HEAD[:-2]]
    ),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_any_bytes_in_any_split_never_raise_and_give_the_same_result(prefix, data, cuts):
    data = prefix + data
    assert run(splits(data, cuts)) == run([data])


@settings(max_examples=200, deadline=None)
@given(
    target=st.text(max_size=40),
    auth=st.text(max_size=40),
    cuts=st.lists(st.integers(0, 200), max_size=4),
)
def test_any_target_and_credentials_never_raise(target, auth, cuts):
    data = f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode(
        "utf-8", "surrogatepass"
    )
    assert run(splits(data, cuts)) == run([data])


# --- against the real curl -------------------------------------------------------------------

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def against_curl(url: str, on_request, *, user: str = "agent-a@", tls: bool = False):
    """Accept one curl on loopback with the parser; on_request(result, reader, writer)
    plays the dialer. Returns (parse result, curl's exit code, curl's stdout)."""

    async def scenario():
        results = []
        done = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            try:
                parser, result = ConnectRequestParser(), INCOMPLETE
                while isinstance(result, Incomplete):
                    data = await reader.read(4096)
                    if not data:
                        break
                    result = parser.feed(data)
                results.append(result)
                await on_request(result, reader, writer)
                await writer.drain()
            finally:
                writer.close()
                done.set_result(None)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            proc = await asyncio.create_subprocess_exec(
                CURL,
                "-sS",
                "--max-time",
                "5",
                "-p",
                "--proxy",
                f"http://{user}127.0.0.1:{port}",
                url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},  # no *_proxy variables
            )
            out, _ = await proc.communicate()
            await asyncio.wait_for(done, 5)
        return results[0], proc.returncode, out

    return asyncio.run(scenario())


async def deny(result, reader, writer):
    writer.write(refused(403, "denied by policy", "policy"))


@needs_curl
def test_curl_connect_names_the_host_and_the_agent_and_sees_the_refusal():
    result, rc, _ = against_curl("https://example.test/", deny)
    assert result == ConnectRequest("example.test", 443, True, "agent-a", password="")
    assert rc == 56  # curl: CONNECT tunnel failed, response 403


@needs_curl
def test_curl_connect_to_an_ipv6_target_sends_a_bracketed_literal():
    result, _, _ = against_curl("https://[2001:db8::1]:8443/", deny)
    assert result == ConnectRequest("2001:db8::1", 8443, False, "agent-a", password="")


@needs_curl
def test_curl_without_a_username_sends_none_and_sees_the_407():
    async def challenge(result, reader, writer):
        writer.write(refused(407, "proxy username required"))

    result, rc, _ = against_curl("https://example.test/", challenge, user="")
    assert result == ConnectRequest("example.test", 443, True, None)
    assert rc == 56


@needs_curl
def test_curl_accepts_the_established_reply_and_talks_through_the_tunnel():
    async def origin(result, reader, writer):
        # Play the upstream too: answer curl's HTTP request through the "tunnel".
        writer.write(established())
        request = result.leftover
        while b"\r\n\r\n" not in request:
            request += await reader.read(4096)
        assert request.startswith(b"GET / HTTP/1.1\r\n") and b"Host: example.test:8080" in request
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")

    result, rc, out = against_curl("http://example.test:8080/", origin)
    assert (rc, out) == (0, b"hello\n")
    assert result == ConnectRequest("example.test", 8080, True, "agent-a", password="")


@needs_curl
def test_curl_starts_tls_with_the_same_name_after_established():
    hellos = []

    async def read_hello(result, reader, writer):
        writer.write(established())
        data = result.leftover
        while (sni := parse_client_hello(data)).outcome is SniOutcome.NEED_MORE:
            chunk = await reader.read(4096)
            if not chunk:
                break
            data += chunk
        hellos.append(sni)

    result, rc, _ = against_curl("https://example.test/", read_hello)
    assert result == ConnectRequest("example.test", 443, True, "agent-a", password="")
    assert hellos == [SniResult(SniOutcome.FOUND, "example.test")]
    assert rc == 35  # curl: TLS handshake failed (we closed)
