import functools
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk_worker_dialer.tls_sni import (
    MAX_CLIENT_HELLO_BYTES,
    NEED_MORE,
    NO_SNI,
    NOT_TLS,
    TOO_LARGE,
    SniOutcome,
    SniResult,
    parse_client_hello,
)

# --- helpers -----------------------------------------------------------------------------


@functools.cache
def real_hello(server_hostname: str | None, version: ssl.TLSVersion | None = None) -> bytes:
    """The first flight of Python's TLS client: one or more records holding a ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def found(name: str) -> SniResult:
    return SniResult(SniOutcome.FOUND, name)


def u8(n: int) -> bytes:
    return n.to_bytes(1, "big")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def handshake_of(records: bytes) -> bytes:
    """The handshake stream inside a sequence of well-formed records."""
    out, pos = b"", 0
    while pos < len(records):
        length = int.from_bytes(records[pos + 3 : pos + 5], "big")
        out += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


def reframe(handshake: bytes, sizes: list[int], version: bytes = b"\x03\x01") -> bytes:
    """handshake in records of the given fragment sizes (the last one takes the rest)."""
    out, pos = b"", 0
    for size in [*sizes, len(handshake)]:
        fragment = handshake[pos : pos + size]
        if fragment:
            out += b"\x16" + version + u16(len(fragment)) + fragment
        pos += len(fragment)
    return out


def extension(ext_type: int, data: bytes) -> bytes:
    return u16(ext_type) + u16(len(data)) + data


def server_name(*entries: tuple[int, bytes]) -> bytes:
    names = b"".join(u8(t) + u16(len(n)) + n for t, n in entries)
    return extension(0, u16(len(names)) + names)


def sni(name: bytes) -> bytes:
    return server_name((0, name))


def hello_body(
    extensions: bytes | None = b"",
    session_id: bytes = b"\x11" * 32,
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
    version: bytes = b"\x03\x03",
) -> bytes:
    body = version + b"\x22" * 32 + u8(len(session_id)) + session_id
    body += u16(len(suites)) + suites + u8(len(compression)) + compression
    if extensions is not None:
        body += u16(len(extensions)) + extensions
    return body


def client_hello(body: bytes, msg_type: int = 1) -> bytes:
    """One record holding one handshake message."""
    return reframe(u8(msg_type) + u24(len(body)) + body, [])


def synthetic(*extensions: bytes) -> bytes:
    return client_hello(hello_body(b"".join(extensions)))


TLS13 = ssl.TLSVersion.TLSv1_3
TLS12 = ssl.TLSVersion.TLSv1_2
HELLO = real_hello("api.example.com")


# --- examples: real ClientHellos ---------------------------------------------------------


@pytest.mark.parametrize("version", [None, TLS12, TLS13])
def test_a_real_client_hello_yields_its_server_name(version):
    assert parse_client_hello(real_hello("api.example.com", version)) == found("api.example.com")


@pytest.mark.parametrize("version", [None, TLS12, TLS13])
def test_a_real_client_hello_without_server_hostname_has_no_sni(version):
    assert parse_client_hello(real_hello(None, version)) == NO_SNI


def test_the_server_name_is_lower_cased_and_loses_its_trailing_dot():
    assert parse_client_hello(real_hello("API.Example.COM.")) == found("api.example.com")


def test_an_ip_literal_server_hostname_sends_no_sni():
    assert parse_client_hello(real_hello("203.0.113.5")) == NO_SNI


def test_an_idn_server_hostname_arrives_as_punycode():
    assert parse_client_hello(real_hello("bücher.de")) == found("xn--bcher-kva.de")


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_every_proper_prefix_of_a_real_hello_needs_more_bytes(version):
    hello = real_hello("api.example.com", version)
    for cut in range(len(hello)):
        assert parse_client_hello(hello[:cut]) == NEED_MORE, cut


def test_a_hello_re_split_into_one_byte_records_still_yields_its_name():
    hello = reframe(handshake_of(HELLO), [1] * 600)
    assert parse_client_hello(hello) == found("api.example.com")


@pytest.mark.parametrize("sizes", [[4], [1, 3], [40, 40, 40], [100, 1], [3, 2, 500]])
def test_a_hello_fragmented_across_records_is_reassembled(sizes):
    hello = reframe(handshake_of(HELLO), sizes)
    assert parse_client_hello(hello) == found("api.example.com")


def test_a_hello_split_into_two_records_at_every_boundary_yields_its_name():
    handshake = handshake_of(real_hello("api.example.com", TLS12))
    for cut in range(1, len(handshake)):
        two = reframe(handshake, [cut])
        assert parse_client_hello(two) == found("api.example.com"), cut
        assert parse_client_hello(two[:-1]) == NEED_MORE, cut


def test_a_fragmented_hello_fed_byte_by_byte_is_found_exactly_at_its_last_byte():
    hello = reframe(handshake_of(HELLO), [7, 11, 13])
    results = [parse_client_hello(hello[: n + 1]) for n in range(len(hello))]
    assert set(results[:-1]) == {NEED_MORE}
    assert results[-1] == found("api.example.com")


def test_bytes_after_the_hello_do_not_change_the_outcome():
    assert parse_client_hello(HELLO + b"\x17\x03\x03\x00\x05hello") == found("api.example.com")
    assert parse_client_hello(HELLO + b"garbage") == found("api.example.com")


def test_only_the_first_16_kib_are_looked_at():
    assert parse_client_hello(HELLO + b"\x00" * (1 << 20)) == found("api.example.com")


def test_bytearray_and_memoryview_are_accepted():
    assert parse_client_hello(bytearray(HELLO)) == found("api.example.com")
    assert parse_client_hello(memoryview(HELLO)) == found("api.example.com")


# --- examples: synthetic ClientHellos ----------------------------------------------------


def test_a_hello_without_extensions_has_no_sni():
    assert parse_client_hello(client_hello(hello_body(extensions=None))) == NO_SNI


def test_a_hello_with_an_empty_extension_list_has_no_sni():
    assert parse_client_hello(synthetic()) == NO_SNI


def test_server_name_is_found_among_other_extensions():
    hello = synthetic(extension(0x0010, b"\x00\x03\x02h2"), sni(b"x.test"), extension(0x2B, b""))
    assert parse_client_hello(hello) == found("x.test")


def test_a_server_name_list_without_a_host_name_entry_has_no_sni():
    assert parse_client_hello(synthetic(server_name((7, b"opaque")))) == NO_SNI


def test_unknown_name_types_beside_the_host_name_are_skipped():
    hello = synthetic(server_name((7, b"x"), (0, b"a.test"), (9, b"")))
    assert parse_client_hello(hello) == found("a.test")


def test_a_name_with_underscores_and_digits_is_found():
    assert parse_client_hello(synthetic(sni(b"_svc.node-01.example"))) == found(
        "_svc.node-01.example"
    )


def test_an_ssl3_era_legacy_version_is_still_tls():
    hello = client_hello(hello_body(sni(b"a.test"), version=b"\x03\x00"))
    assert parse_client_hello(hello) == found("a.test")


NOT_HOSTNAMES = {
    "empty": b"",
    "only the root dot": b".",
    "an empty label": b"a..b",
    "not ASCII": b"b\xc3\xbccher.de",
    "a NUL byte": b"evil.com\x00.good.com",
    "a space": b"a b.com",
    "a wildcard": b"*.example.com",
    "a label over 63": b"a" * 64 + b".com",
    "over 253 characters": (b"a" * 60 + b".") * 5,
}


@pytest.mark.parametrize("name", NOT_HOSTNAMES.values(), ids=NOT_HOSTNAMES.keys())
def test_a_server_name_that_is_not_a_hostname_is_not_tls(name):
    assert parse_client_hello(synthetic(sni(name))) == NOT_TLS


def test_two_host_names_in_one_server_name_list_are_not_tls():
    assert parse_client_hello(synthetic(server_name((0, b"a.test"), (0, b"b.test")))) == NOT_TLS


def test_two_server_name_extensions_are_not_tls():
    assert parse_client_hello(synthetic(sni(b"a.test"), sni(b"b.test"))) == NOT_TLS


def test_any_repeated_extension_type_is_not_tls():
    assert parse_client_hello(synthetic(extension(0x2B, b""), extension(0x2B, b""))) == NOT_TLS


MALFORMED_BODIES = {
    "session id over 32 bytes": hello_body(session_id=b"\x00" * 33),
    "no cipher suites": hello_body(suites=b""),
    "odd cipher suite bytes": hello_body(suites=b"\x13\x01\x13"),
    "no compression method": hello_body(compression=b""),
    "legacy version major not 3": hello_body(version=b"\x02\x00"),
    "extensions shorter than declared": hello_body(sni(b"a.test"))[:-1],
    "bytes after the extensions": hello_body(sni(b"a.test")) + b"\x00",
    "empty server_name extension": hello_body(extension(0, b"")),
    "empty server name list": hello_body(extension(0, b"\x00\x00")),
    "server name list too long": hello_body(extension(0, b"\x00\x06\x00\x00\x02ab")),
    "bytes after the list": hello_body(extension(0, sni(b"a.test")[4:] + b"\x00")),
    "host name longer than list": hello_body(extension(0, b"\x00\x03\x00\x00\x05")),
    "body ends inside the random": b"\x03\x03" + b"\x00" * 10,
    "empty body": b"",
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_malformed_client_hello_body_is_not_tls(body):
    assert parse_client_hello(client_hello(body)) == NOT_TLS


# --- examples: not TLS -------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"G",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x80\x2e\x01\x03\x01",  # SSLv2-compatible hello
        b"\x15\x03\x03\x00\x02\x02\x28",  # alert record
        b"\x16\x02",  # record version 2.x
        b"\x16\x03\x05",  # record version beyond TLS 1.3
        b"\x16\x03\x01\x00\x00",  # zero-length handshake fragment
        b"\x16\x03\x01\x40\x01",  # record longer than 2^14
        b"\x16\x03\x01\x00\x04\x02",  # ServerHello, not ClientHello
        b"\r\n\r\n\x00\r\nQUIT\n",  # a PROXY header
    ],
)
def test_garbage_is_not_tls_as_soon_as_it_shows(data):
    assert parse_client_hello(data) == NOT_TLS


def test_a_non_handshake_record_inside_a_fragmented_hello_is_not_tls():
    handshake = handshake_of(HELLO)
    interleaved = reframe(handshake[:50], []) + b"\x14\x03\x03\x00\x01\x01"
    interleaved += reframe(handshake[50:], [])
    assert parse_client_hello(interleaved) == NOT_TLS


def test_a_valid_record_prefix_needs_more():
    for prefix in [b"", b"\x16", b"\x16\x03", b"\x16\x03\x01", b"\x16\x03\x01\x02"]:
        assert parse_client_hello(prefix) == NEED_MORE
    assert parse_client_hello(b"\x16\x03\x01\x02\x00\x01\x00\x01") == NEED_MORE


# --- examples: the 16 KiB bound ----------------------------------------------------------


def test_a_hello_declaring_more_than_fits_in_16_kib_is_too_large_at_once():
    assert parse_client_hello(b"\x16\x03\x01\x40\x00\x01\x00\x40\x00") == TOO_LARGE


def test_the_largest_single_record_hello_that_fits_is_read():
    body = hello_body(sni(b"big.test"))
    padding = MAX_CLIENT_HELLO_BYTES - 5 - 4 - len(body) - 4
    hello = client_hello(hello_body(sni(b"big.test") + extension(0x15, b"\x00" * padding)))
    assert len(hello) == MAX_CLIENT_HELLO_BYTES
    assert parse_client_hello(hello) == found("big.test")
    assert parse_client_hello(hello[:-1]) == NEED_MORE


def test_one_byte_more_than_fits_is_too_large():
    body = hello_body(sni(b"big.test"))
    padding = MAX_CLIENT_HELLO_BYTES - 5 - 4 - len(body) - 4 + 1
    hello = client_hello(hello_body(sni(b"big.test") + extension(0x15, b"\x00" * padding)))
    assert parse_client_hello(hello[:9]) == TOO_LARGE


def test_a_hello_whose_record_overhead_passes_16_kib_is_too_large_once_16_kib_arrived():
    handshake = handshake_of(synthetic(sni(b"a.test"), extension(0x15, b"\x00" * 9000)))
    hello = reframe(handshake, [1] * len(handshake))  # six bytes per handshake byte
    assert parse_client_hello(hello[: MAX_CLIENT_HELLO_BYTES - 1]) == NEED_MORE
    assert parse_client_hello(hello[:MAX_CLIENT_HELLO_BYTES]) == TOO_LARGE
    assert parse_client_hello(hello) == TOO_LARGE


# --- properties --------------------------------------------------------------------------

OUTCOMES = set(SniOutcome)
hostnames = st.from_regex(r"[a-z0-9_-]{1,20}(\.[a-z0-9_-]{1,20}){0,4}", fullmatch=True)


def assert_well_formed(result: SniResult) -> None:
    assert result.outcome in OUTCOMES
    assert (result.sni is not None) == (result.outcome is SniOutcome.FOUND)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    assert_well_formed(parse_client_hello(data))


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_random_bytes_behind_a_handshake_record_header_never_raise(data):
    assert_well_formed(parse_client_hello(b"\x16\x03\x01" + data))
    assert_well_formed(parse_client_hello(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc" + data))


@settings(max_examples=300)
@given(st.sampled_from([HELLO, real_hello(None, TLS12)]), st.data())
def test_mutated_real_hellos_never_raise(hello, data):
    mutated = bytearray(hello)
    for _ in range(data.draw(st.integers(1, 8))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    assert_well_formed(parse_client_hello(bytes(mutated[:cut])))


@settings(max_examples=200)
@given(st.lists(st.integers(1, 300), max_size=12))
def test_any_record_fragmentation_of_a_real_hello_gives_the_same_outcome(sizes):
    assert parse_client_hello(reframe(handshake_of(HELLO), sizes)) == found("api.example.com")


@settings(max_examples=300)
@given(hostnames, st.booleans(), st.booleans(), st.lists(st.integers(1, 50), max_size=5))
def test_any_hostname_is_found_normalised(name, upper, dot, sizes):
    sent = (name.upper() if upper else name) + ("." if dot else "")
    hello = reframe(handshake_of(synthetic(sni(sent.encode()))), sizes)
    assert parse_client_hello(hello) == found(name)


@settings(max_examples=100)
@given(hostnames, st.data())
def test_every_prefix_of_a_complete_hello_needs_more(name, data):
    hello = synthetic(extension(0x2B, b"\x02\x03\x04"), sni(name.encode()))
    cut = data.draw(st.integers(0, len(hello) - 1))
    assert parse_client_hello(hello[:cut]) == NEED_MORE
