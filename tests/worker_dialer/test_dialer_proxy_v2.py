import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk_worker_dialer.proxy_v2 import (
    FIXED_LENGTH,
    MAX_HEADER_LENGTH,
    SIGNATURE,
    Command,
    ProxyHeader,
    ProxyHeaderError,
    TlvType,
    Transport,
    clrk_tlvs,
    decode,
    encode,
    encode_clrk,
)

ALL_CLRK = clrk_tlvs(
    authority="api.anthropic.com",
    agent_namespace="agents",
    agent_name="summariser",
    route="egress/llm-apis",
    deny_policy="egress/paste-sites",
    connection_id="c-0001",
)


def v4_header(**kwargs) -> ProxyHeader:
    fields = {"tlvs": ALL_CLRK} | kwargs
    return ProxyHeader("10.1.0.7", 40512, "203.0.113.5", 443, **fields)


def v6_header(**kwargs) -> ProxyHeader:
    fields = {"tlvs": ALL_CLRK} | kwargs
    return ProxyHeader("fd00::7", 40512, "2001:db8::5", 443, **fields)


def raw_header(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return SIGNATURE + bytes((ver_cmd, fam)) + size.to_bytes(2, "big") + body


def tlv(t: int, value: bytes) -> bytes:
    return bytes((t,)) + len(value).to_bytes(2, "big") + value


V4_ADDRESSES = bytes(12)


# --- examples: encoding ------------------------------------------------------------------


def test_an_ipv4_header_has_the_standard_layout():
    wire = encode(v4_header(tlvs=()))
    assert wire[:12] == SIGNATURE
    assert wire[12] == 0x21 and wire[13] == 0x11
    assert int.from_bytes(wire[14:16], "big") == 12
    assert wire[16:20] == bytes([10, 1, 0, 7]) and wire[20:24] == bytes([203, 0, 113, 5])
    assert wire[24:28] == (40512).to_bytes(2, "big") + (443).to_bytes(2, "big")
    assert len(wire) == 28


def test_an_ipv6_header_uses_family_0x21_and_36_address_bytes():
    wire = encode(v6_header(tlvs=()))
    assert wire[13] == 0x21
    assert int.from_bytes(wire[14:16], "big") == 36
    assert wire[16:32] == ipaddress.ip_address("fd00::7").packed


def test_tlvs_are_type_then_big_endian_length_then_value():
    wire = encode(v4_header(tlvs=clrk_tlvs(authority="a.example")))
    assert wire[28:] == b"\x02\x00\x09a.example"


def test_a_header_with_every_tlv_round_trips_over_ipv4():
    header = v4_header()
    wire = encode(header)
    assert decode(wire) == (header, len(wire))


def test_a_header_with_every_tlv_round_trips_over_ipv6():
    header = v6_header()
    wire = encode(header)
    assert decode(wire) == (header, len(wire))


def test_the_typed_accessors_read_the_clrk_tlvs():
    decoded, _ = decode(encode(v4_header()))
    assert decoded.authority == "api.anthropic.com"
    assert decoded.agent_namespace == "agents"
    assert decoded.agent_name == "summariser"
    assert decoded.route == "egress/llm-apis"
    assert decoded.deny_policy == "egress/paste-sites"
    assert decoded.connection_id == "c-0001"
    assert decoded.tlv(TlvType.ROUTE) == b"egress/llm-apis"


def test_absent_tlvs_read_as_none():
    header = v4_header(tlvs=clrk_tlvs(agent_name="a"))
    assert header.authority is None and header.deny_policy is None
    assert header.tlv(0x99) is None


def test_clrk_tlvs_keeps_a_fixed_order_and_omits_absent_and_empty_values():
    tlvs = clrk_tlvs(connection_id="c", authority="", route="ns/r", agent_namespace=None)
    assert tlvs == ((0xE3, b"ns/r"), (0xE5, b"c"))


def test_empty_tlv_values_are_omitted_on_encode():
    header = v4_header(tlvs=((0x02, b""), (0xE2, b"agent"), (0xE5, b"")))
    wire = encode(header)
    assert wire[28:] == tlv(0xE2, b"agent")
    assert header.tlvs == ((0xE2, b"agent"),)


def test_foreign_tlv_types_are_carried_through():
    header = v4_header(tlvs=((0x04, b"\x00\x00"), (0x30, b"x"), (0x04, b"\x00")))
    assert decode(encode(header))[0].tlvs == header.tlvs


def test_a_udp_header_round_trips_with_transport_dgram():
    header = v4_header(transport=Transport.DGRAM)
    wire = encode(header)
    assert wire[13] == 0x12
    assert decode(wire)[0] == header


def test_a_local_header_without_addresses_is_family_unspec():
    header = ProxyHeader(None, 0, None, 0, command=Command.LOCAL)
    wire = encode(header)
    assert wire == SIGNATURE + b"\x20\x00\x00\x00"
    assert decode(wire) == (header, 16)


def test_a_local_header_with_addresses_round_trips():
    header = v6_header(command=Command.LOCAL)
    wire = encode(header)
    assert wire[12] == 0x20
    assert decode(wire)[0] == header


@pytest.mark.parametrize(
    ("src", "dst"),
    [("10.0.0.1", "2001:db8::1"), ("2001:db8::1", "10.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1")],
)
def test_encode_rejects_mixed_address_families(src, dst):
    with pytest.raises(ProxyHeaderError, match="mixed"):
        encode(ProxyHeader(src, 1, dst, 2))


@pytest.mark.parametrize(("sport", "dport"), [(-1, 443), (65536, 443), (1, -5), (1, 70000)])
def test_encode_rejects_out_of_range_ports(sport, dport):
    with pytest.raises(ProxyHeaderError, match="port"):
        encode(ProxyHeader("10.0.0.1", sport, "10.0.0.2", dport))


def test_ports_zero_and_65535_are_representable():
    header = ProxyHeader("10.0.0.1", 0, "10.0.0.2", 65535)
    assert decode(encode(header))[0] == header


@pytest.mark.parametrize("bad", ["example.com", "10.0.0.256", ""])
def test_encode_rejects_a_non_ip_address(bad):
    with pytest.raises(ProxyHeaderError, match="not an IP"):
        encode(ProxyHeader(bad, 1, "10.0.0.2", 2))


def test_a_proxy_header_needs_both_addresses():
    with pytest.raises(ProxyHeaderError):
        encode(ProxyHeader(None, 0, None, 0))
    with pytest.raises(ProxyHeaderError, match="both"):
        encode(ProxyHeader("10.0.0.1", 1, None, 0, command=Command.LOCAL))


def test_encode_rejects_a_repeated_clrk_tlv():
    with pytest.raises(ProxyHeaderError, match="twice"):
        encode(v4_header(tlvs=((0xE3, b"ns/a"), (0xE3, b"ns/b"))))


def test_encode_rejects_a_tlv_type_that_does_not_fit_a_byte():
    with pytest.raises(ProxyHeaderError, match="byte"):
        encode(v4_header(tlvs=((256, b"x"),)))


def test_encode_rejects_an_unknown_command_or_transport():
    with pytest.raises(ProxyHeaderError):
        encode(v4_header(command=2))
    with pytest.raises(ProxyHeaderError):
        encode(v4_header(transport=3))


def test_encode_rejects_a_tlv_value_longer_than_65535():
    with pytest.raises(ProxyHeaderError, match="65535"):
        encode(v4_header(tlvs=((0xE5, b"x" * 65536),)))


def test_the_largest_header_that_fits_the_length_field_encodes_and_decodes():
    value = b"v" * (0xFFFF - 12 - 3)
    header = v4_header(tlvs=((0xE5, value),))
    wire = encode(header)
    assert len(wire) == MAX_HEADER_LENGTH
    assert decode(wire) == (header, MAX_HEADER_LENGTH)


def test_encode_rejects_a_header_one_byte_beyond_the_length_field():
    value = b"v" * (0xFFFF - 12 - 3 + 1)
    with pytest.raises(ProxyHeaderError, match="length field"):
        encode(v4_header(tlvs=((0xE5, value),)))


def test_encode_rejects_many_tlvs_whose_sum_exceeds_the_length_field():
    tlvs = ((0xE4, b"x" * 40000), (0xE5, b"x" * 40000))
    with pytest.raises(ProxyHeaderError, match="length field"):
        encode(v6_header(tlvs=tlvs))


def test_proxy_header_error_is_a_value_error():
    assert issubclass(ProxyHeaderError, ValueError)


# --- examples: decoding ------------------------------------------------------------------


def test_decode_reports_the_bytes_consumed_and_leaves_the_payload():
    wire = encode(v4_header())
    header, consumed = decode(wire + b"GET / HTTP/1.1\r\n")
    assert consumed == len(wire)
    assert header == v4_header()


def test_every_proper_prefix_of_a_header_needs_more_bytes():
    wire = encode(v6_header())
    for cut in range(len(wire)):
        assert decode(wire[:cut]) is None, cut


def test_a_header_fed_byte_by_byte_decodes_exactly_once_complete():
    wire = encode(v4_header())
    buffer = b""
    results = []
    for byte in wire:
        buffer += bytes((byte,))
        results.append(decode(buffer))
    assert results[:-1] == [None] * (len(wire) - 1)
    assert results[-1] == (v4_header(), len(wire))


def test_decode_accepts_bytearray_and_memoryview():
    wire = encode(v4_header())
    assert decode(bytearray(wire)) == decode(memoryview(wire)) == (v4_header(), len(wire))


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"\r\n\r\n\x00\r\nQUIX\n",
        b"\x00",
    ],
)
def test_a_wrong_signature_is_rejected_as_soon_as_it_differs(data):
    with pytest.raises(ProxyHeaderError, match="signature"):
        decode(data)


def test_the_empty_input_needs_more_bytes():
    assert decode(b"") is None


@pytest.mark.parametrize("ver_cmd", [0x11, 0x31, 0x22, 0x2F])
def test_a_wrong_version_or_command_is_rejected_before_the_rest_arrives(ver_cmd):
    with pytest.raises(ProxyHeaderError):
        decode(SIGNATURE + bytes((ver_cmd,)))


@pytest.mark.parametrize("fam", [0x00, 0x13, 0x31, 0x32, 0x10, 0x41, 0xFF])
def test_an_unsupported_family_is_rejected_for_proxy(fam):
    with pytest.raises(ProxyHeaderError, match="family"):
        decode(SIGNATURE + bytes((0x21, fam)))


@pytest.mark.parametrize(("fam", "minimum"), [(0x11, 12), (0x21, 36), (0x12, 12), (0x22, 36)])
def test_a_length_too_short_for_the_addresses_is_rejected(fam, minimum):
    with pytest.raises(ProxyHeaderError, match="too short"):
        decode(raw_header(0x21, fam, b"", length=minimum - 1))


def test_a_tlv_running_past_the_end_is_rejected():
    with pytest.raises(ProxyHeaderError, match="past the end"):
        decode(raw_header(0x21, 0x11, V4_ADDRESSES + b"\x02\x00\x05abc"))


def test_a_truncated_tlv_header_is_rejected():
    with pytest.raises(ProxyHeaderError, match="truncated"):
        decode(raw_header(0x21, 0x11, V4_ADDRESSES + b"\x02\x00"))


def test_a_repeated_clrk_tlv_is_rejected():
    body = V4_ADDRESSES + tlv(0x02, b"a.example") + tlv(0x02, b"b.example")
    with pytest.raises(ProxyHeaderError, match="twice"):
        decode(raw_header(0x21, 0x11, body))


def test_a_decoded_empty_tlv_reads_as_absent():
    header, _ = decode(raw_header(0x21, 0x11, V4_ADDRESSES + tlv(0x02, b"") + tlv(0xE2, b"a")))
    assert header.authority is None
    assert header.tlvs == ((0xE2, b"a"),)


def test_a_local_header_with_unspec_family_may_carry_tlvs():
    header, consumed = decode(raw_header(0x20, 0x00, tlv(0xE5, b"hc")))
    assert header.command == Command.LOCAL and header.source_ip is None
    assert header.connection_id == "hc" and consumed == 16 + 5


def test_decode_never_reads_beyond_the_declared_length():
    wire = raw_header(0x21, 0x11, V4_ADDRESSES, length=12) + b"\xff\xff\xff"
    assert decode(wire)[1] == 28


def test_a_non_utf8_tlv_value_reads_back_without_raising():
    header, _ = decode(raw_header(0x21, 0x11, V4_ADDRESSES + tlv(0xE2, b"\xff\xfe")))
    assert header.agent_name == b"\xff\xfe".decode("utf-8", "surrogateescape")
    assert clrk_tlvs(agent_name=header.agent_name) == ((0xE2, b"\xff\xfe"),)


# --- properties --------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 0xFFFF)
text_values = st.one_of(st.none(), st.text(max_size=80))
tlv_lists = st.lists(
    st.tuples(st.integers(0, 0xFF).filter(lambda t: t not in set(TlvType)), st.binary(max_size=64)),
    max_size=6,
)


@st.composite
def headers(draw) -> ProxyHeader:
    ip = ipv4 if draw(st.booleans()) else ipv6
    clrk = clrk_tlvs(
        authority=draw(text_values),
        agent_namespace=draw(text_values),
        agent_name=draw(text_values),
        route=draw(text_values),
        deny_policy=draw(text_values),
        connection_id=draw(text_values),
    )
    return ProxyHeader(
        draw(ip),
        draw(ports),
        draw(ip),
        draw(ports),
        clrk + tuple(draw(tlv_lists)),
        draw(st.sampled_from(Command)),
        draw(st.sampled_from(Transport)),
    )


@settings(max_examples=300)
@given(headers(), st.binary(max_size=32))
def test_every_encodable_header_round_trips_and_leaves_trailing_bytes(header, trailer):
    wire = encode(header)
    assert decode(wire + trailer) == (header, len(wire))


@settings(max_examples=100)
@given(headers(), st.data())
def test_any_split_of_an_encoded_header_needs_more_until_complete(header, data):
    wire = encode(header)
    cut = data.draw(st.integers(0, len(wire) - 1))
    assert decode(wire[:cut]) is None


@settings(max_examples=300)
@given(headers())
def test_the_typed_accessors_agree_with_the_raw_tlvs(header):
    decoded, _ = decode(encode(header))
    for accessor, tlv_type in [
        ("authority", TlvType.AUTHORITY),
        ("agent_namespace", TlvType.AGENT_NAMESPACE),
        ("agent_name", TlvType.AGENT_NAME),
        ("route", TlvType.ROUTE),
        ("deny_policy", TlvType.DENY_POLICY),
        ("connection_id", TlvType.CONNECTION_ID),
    ]:
        raw = decoded.tlv(tlv_type)
        expected = None if raw is None else raw.decode("utf-8", "surrogateescape")
        assert getattr(decoded, accessor) == expected


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_proxy_header_error(data):
    try:
        result = decode(data)
    except ProxyHeaderError:
        return
    if result is not None:
        assert FIXED_LENGTH <= result[1] <= len(data)


@settings(max_examples=500)
@given(st.integers(0, 0xFF), st.integers(0, 0xFF), st.binary(max_size=120), st.integers(0, 200))
def test_random_bodies_behind_a_valid_signature_only_raise_proxy_header_error(
    ver_cmd, fam, body, length
):
    data = raw_header(ver_cmd, fam, body, length=length)
    try:
        result = decode(data)
    except ProxyHeaderError:
        return
    if result is None:
        assert len(data) < FIXED_LENGTH + length
    else:
        header, consumed = result
        assert consumed == FIXED_LENGTH + length
        # What decodes re-encodes to an equivalent header.
        assert decode(encode(header))[0] == header


@settings(max_examples=300)
@given(headers(), st.data())
def test_mutated_headers_only_raise_proxy_header_error(header, data):
    wire = bytearray(encode(header))
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 0xFF))
    with contextlib.suppress(ProxyHeaderError):
        decode(bytes(wire))


# --- the dialer's header, built from its cached TLVs -------------------------------------

texts = st.none() | st.sampled_from(["", "api.example.com", "agents"]) | st.text(max_size=12)
ips = st.sampled_from(["10.1.0.7", "203.0.113.5", "fd00::7", "2001:db8::5", "::ffff:10.0.0.1"])


def encoded_or_error(encoding):
    try:
        return encoding()
    except ProxyHeaderError:
        return ProxyHeaderError


@settings(max_examples=300)
@given(
    src=ips,
    dst=ips,
    ports=st.tuples(st.integers(-1, 0x10000), st.integers(-1, 0x10000)),
    values=st.tuples(texts, texts, texts, texts, texts, texts),
    long_value=st.integers(0, 5),
)
def test_the_dialers_header_is_the_generic_encoding_byte_for_byte(
    src, dst, ports, values, long_value
):
    """Same bytes for every connection of an agent on a route, or the same refusal,
    whether its TLVs came from the cache or not (asked twice: the second from it)."""
    values = list(values)
    if long_value < len(values):  # now and then a value beyond what a TLV holds
        values[long_value] = (values[long_value] or "") + "x" * 0x10000
    names = ("authority", "agent_namespace", "agent_name", "route", "deny_policy")
    fields = dict(zip(names, values, strict=False)) | {"connection_id": values[5]}
    generic = encoded_or_error(
        lambda: encode(ProxyHeader(src, ports[0], dst, ports[1], clrk_tlvs(**fields)))
    )
    for _ in range(2):
        assert encoded_or_error(lambda: encode_clrk(src, ports[0], dst, ports[1], **fields)) == (
            generic
        )


@pytest.mark.parametrize("extra", [0, 1], ids=["fits", "one-beyond"])
def test_the_dialers_header_refuses_a_body_beyond_the_length_field_as_encode_does(extra):
    # v4 addresses (12) + the authority's TLV (3 + its length) + the id's (3 + 16)
    fields = {"authority": "a" * (0xFFFF - 34 + extra), "connection_id": "c" * 16}
    generic = encoded_or_error(
        lambda: encode(ProxyHeader("10.1.0.7", 1, "203.0.113.5", 2, clrk_tlvs(**fields)))
    )
    assert (generic is ProxyHeaderError) == bool(extra)
    assert encoded_or_error(lambda: encode_clrk("10.1.0.7", 1, "203.0.113.5", 2, **fields)) == (
        generic
    )
