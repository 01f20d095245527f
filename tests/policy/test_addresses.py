"""Destination addresses (SPEC 4 steps 1 and 2): parsing to (version, int), name
normalisation, the always-blocked ranges and the `within` test that lets an explicit
CIDR open them.

blocked_ranges is checked against an independent reimplementation written with the
ipaddress module (its sixtofour and teredo properties decode the embedded addresses).
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk.api.grammar import normalise_hostname
from clrk.policy.addresses import OwnAddresses, blocked_ranges, normalise_name, parse_ip, within

PROPERTY = settings(max_examples=300, deadline=None)
M32 = 0xFFFFFFFF


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def v6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


# --- parse_ip -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", (4, 0x0A000001)),
        ("0.0.0.0", (4, 0)),
        ("255.255.255.255", (4, M32)),
        ("169.254.169.254", (4, 0xA9FEA9FE)),
        ("::ffff:10.0.0.1", (4, 0x0A000001)),
        ("::FFFF:a00:1", (4, 0x0A000001)),
        ("0:0:0:0:0:ffff:7f00:1", (4, 0x7F000001)),
        ("::ffff:0.0.0.0", (4, 0)),
        ("2001:db8::1", (6, v6("2001:db8::1"))),
        ("2001:DB8::1", (6, v6("2001:db8::1"))),
        ("::", (6, 0)),
        ("::1", (6, 1)),
        ("::10.0.0.1", (6, 0x0A000001)),
        ("64:ff9b::7f00:1", (6, v6("64:ff9b::7f00:1"))),
        ("::fffe:7f00:1", (6, v6("::fffe:7f00:1"))),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", (6, (1 << 128) - 1)),
    ],
)
def test_an_address_is_parsed_and_ipv4_mapped_ipv6_becomes_ipv4(text, expected):
    assert parse_ip(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.0.0",
        "127.1",
        "10.0.0.256",
        "01.2.3.4",
        "0x7f.0.0.1",
        "1.2.3.4/32",
        " 10.0.0.1",
        "10.0.0.1 ",
        "example.com",
        "[::1]",
        "::1::",
        "12345::",
        "2001:db8::1/128",
        "\x00",
        "1.2.3.4\x00",
        "é",
    ],
)
def test_anything_else_is_not_an_address(text):
    with pytest.raises(ValueError):
        parse_ip(text)


def expected_parse(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return 4, int(addr.ipv4_mapped)
    return addr.version, int(addr)


MAPPED = st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))


@PROPERTY
@given(st.one_of(st.ip_addresses(), MAPPED))
def test_parse_ip_agrees_with_the_ipaddress_module(addr):
    assert parse_ip(str(addr)) == expected_parse(addr)
    assert parse_ip(addr.exploded) == expected_parse(addr)
    assert parse_ip(str(addr).upper()) == expected_parse(addr)


@PROPERTY
@given(st.one_of(st.text(), st.text(alphabet="0123456789abcdefABCDEF:.x ", max_size=45)))
def test_parse_ip_raises_only_value_error_and_accepts_only_what_ipaddress_accepts(text):
    try:
        parsed = parse_ip(text)
    except ValueError:
        return
    assert parsed == expected_parse(ipaddress.ip_address(text))


# --- normalise_name -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("api.openai.com", "api.openai.com"),
        ("API.OpenAI.com", "api.openai.com"),
        ("api.openai.com.", "api.openai.com"),
        ("API.OPENAI.COM.", "api.openai.com"),
        ("localhost", "localhost"),
        ("", ""),
        (".", ""),
    ],
)
def test_a_name_is_lower_cased_without_its_trailing_dot(name, normalised):
    assert normalise_name(name) == normalised


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
LABEL = st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM + "-", max_size=8),
    st.sampled_from(_ALNUM),
)
NAME = st.builds(
    lambda labels, last: ".".join([*labels, last]),
    st.lists(LABEL, max_size=3),
    LABEL.filter(lambda label: not label.isdigit()),
)


@PROPERTY
@given(NAME, st.booleans())
def test_normalise_name_folds_a_name_as_the_hostname_grammar_does(name, dot):
    raw = name + ("." if dot else "")
    assert normalise_name(raw) == normalise_hostname(raw)
    assert normalise_name(normalise_name(raw)) == normalise_name(raw)


# --- blocked_ranges -------------------------------------------------------------------

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def r4(cidr: str) -> tuple[int, int, int]:
    net = ipaddress.IPv4Network(cidr)
    return (4, int(net.network_address), net.prefixlen)


def r6(cidr: str) -> tuple[int, int, int]:
    net = ipaddress.IPv6Network(cidr)
    return (6, int(net.network_address), net.prefixlen)


def blocked(text: str) -> tuple[tuple[int, int, int], ...]:
    return blocked_ranges(*parse_ip(text))


@pytest.mark.parametrize(
    ("address", "ranges"),
    [
        ("127.0.0.1", {r4("127.0.0.0/8")}),
        ("127.255.255.254", {r4("127.0.0.0/8")}),
        ("0.0.0.0", {r4("0.0.0.0/8")}),
        ("0.1.2.3", {r4("0.0.0.0/8")}),
        ("169.254.169.254", {r4("169.254.0.0/16")}),
        ("224.0.0.1", {r4("224.0.0.0/4")}),
        ("239.255.255.255", {r4("224.0.0.0/4")}),
        ("255.255.255.255", {r4("255.255.255.255/32")}),
        ("::ffff:127.0.0.1", {r4("127.0.0.0/8")}),
        ("::ffff:169.254.169.254", {r4("169.254.0.0/16")}),
        ("::", {r6("::/128")}),
        ("::1", {r6("::1/128")}),
        ("fe80::1", {r6("fe80::/10")}),
        ("febf:ffff::1", {r6("fe80::/10")}),
        ("ff02::1", {r6("ff00::/8")}),
        ("64:ff9b::7f00:1", {r6("64:ff9b::7f00:0/104")}),
        ("64:ff9b::169.254.169.254", {r6("64:ff9b::a9fe:0/112")}),
        ("64:ff9b::255.255.255.255", {r6("64:ff9b::ffff:ffff/128")}),
        ("2002:7f00:1::", {r6("2002:7f00::/24")}),
        ("2002:a9fe:a9fe:1234::1", {r6("2002:a9fe::/32")}),
        ("2002:e000:1::", {r6("2002:e000::/20")}),
        ("2001:0:7f00:1::1", {r6("2001:0:7f00::/40")}),
        ("2001:0:a9fe:a9fe:8000::1", {r6("2001:0:a9fe::/48")}),
        # The Teredo client is stored inverted: ~127.0.0.1 == 0x80fffffe.
        ("2001:0:808:808::80ff:fffe", {r6("2001::/32")}),
        # No client bits means the client is ~0 == 255.255.255.255.
        ("2001:0:808:808::", {r6("2001::/32")}),
        ("2001:0:7f00:1::80ff:fffe", {r6("2001:0:7f00::/40"), r6("2001::/32")}),
    ],
)
def test_an_always_blocked_address_reports_every_range_that_contains_it(address, ranges):
    assert set(blocked(address)) == ranges


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "10.0.0.1",
        "1.0.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "223.255.255.255",
        "240.0.0.1",
        "255.255.255.254",
        "::2",
        "2001:db8::1",
        "fec0::1",
        "fe7f::1",
        "feff::1",
        "64:ff9b::808:808",
        "64:ff9b:1::7f00:1",
        "2002:808:808::",
        "2003:7f00:1::",
        "2001:0:808:808::f7f7:f7f7",
        "2001:db8:7f00:1::",
        "2001:1:7f00:1::",
        "2000:0:7f00:1::",
        "2001:4860:4860::8888",
    ],
)
def test_an_ordinary_address_is_not_blocked(address):
    assert blocked(address) == ()


@pytest.mark.parametrize(
    ("address", "own", "holds"),
    [
        ("10.0.0.5", ["10.0.0.5"], True),
        ("::ffff:10.0.0.5", ["10.0.0.5"], True),
        ("10.0.0.5", ["::ffff:10.0.0.5"], True),
        ("2001:db8::5", ["2001:db8::5"], True),
        ("64:ff9b::10.0.0.5", ["10.0.0.5"], True),
        ("2002:a00:5::", ["10.0.0.5"], True),
        ("2001:0:a00:5::1", ["10.0.0.5"], True),  # a Teredo server
        ("2001:0:808:808::f5ff:fffa", ["10.0.0.5"], True),  # a Teredo client, inverted
        ("127.3.2.1", ["127.0.0.0/8"], True),
        ("127.3.2.1", ["127.0.0.1"], False),
        ("::ffff:127.9.9.9", ["::ffff:127.0.0.0/104"], True),
        ("fd00::1234", ["fd00::/64"], True),
        ("fd00:0:0:1::1", ["fd00::/64"], False),
        ("203.0.113.5", ["203.0.113.6"], False),
        ("10.0.0.5", ["2001:db8::5"], False),
        ("2001:db8::6", ["0.0.0.0/0"], False),
        ("64:ff9b::808:808", ["0.0.0.0/0"], True),
    ],
)
def test_the_gateways_own_addresses_and_ranges_hold_their_embedded_forms(address, own, holds):
    assert OwnAddresses.of(own).holds(*parse_ip(address)) is holds


def test_own_addresses_refuse_what_does_not_parse_and_list_themselves():
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        OwnAddresses.of(["10.0.0.0/33"])
    with pytest.raises(ValueError, match="nonsense"):
        OwnAddresses.of(["nonsense"])
    own = OwnAddresses.of(["127.0.0.1/8", "192.0.2.7", "::1", "fd00::/64"])
    assert own.networks() == ("192.0.2.7", "127.0.0.0/8", "::1", "fd00::/64")
    assert own.including("198.18.0.1").holds(*parse_ip("198.18.0.1"))


V4_BLOCKED = [
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32")
]
V6_BLOCKED = [ipaddress.IPv6Network(n) for n in ("::/128", "::1/128", "fe80::/10", "ff00::/8")]


def reference_blocked(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    own: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address],
    static: bool = True,
) -> bool:
    """Inside `own`, or (with `static`) inside an always-blocked range, directly or as
    an embedded IPv4 address."""
    v4_static = V4_BLOCKED if static else []
    v6_static = V6_BLOCKED if static else []

    def v4_blocked(a: ipaddress.IPv4Address) -> bool:
        return a in own or any(a in net for net in v4_static)

    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 4:
        return v4_blocked(addr)
    if addr in own or any(addr in net for net in v6_static):
        return True
    embedded: list[ipaddress.IPv4Address] = []
    if addr in NAT64:
        embedded.append(ipaddress.IPv4Address(addr.packed[-4:]))
    if addr.sixtofour is not None:
        embedded.append(addr.sixtofour)
    if addr.teredo is not None:
        embedded.extend(addr.teredo)  # (server, client), the client already un-inverted
    return any(v4_blocked(a) for a in embedded)


def _in_network(network: str):
    net = ipaddress.IPv4Network(network)
    return st.integers(0, net.num_addresses - 1).map(
        lambda i: ipaddress.IPv4Address(int(net.network_address) + i)
    )


# IPv4 addresses that are often blocked, often next to a blocked range, sometimes random.
def uniform(*strategies):
    """Pick a strategy uniformly (st.one_of flattens nested one_ofs and skews the mix)."""
    return st.sampled_from(strategies).flatmap(lambda strategy: strategy)


INTERESTING_V4 = uniform(
    st.ip_addresses(v=4),
    *(_in_network(str(net)) for net in V4_BLOCKED),
    st.sampled_from(
        [
            ipaddress.IPv4Address(a)
            for a in (
                *("1.0.0.0", "126.255.255.255", "128.0.0.0", "169.253.255.255"),
                *("169.255.0.0", "223.255.255.255", "240.0.0.0", "255.255.255.254"),
            )
        ]
    ),
)
RANDOM_BITS = st.integers(0, (1 << 80) - 1)


def _v6(value: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(value)


def _teredo(server: ipaddress.IPv4Address, flags: int, client: ipaddress.IPv4Address):
    return _v6(0x20010000 << 96 | int(server) << 64 | flags << 32 | (~int(client) & M32))


SPECIAL_V6 = uniform(
    INTERESTING_V4.map(lambda a: _v6(int(NAT64.network_address) | int(a))),
    st.builds(lambda a, low: _v6(0x2002 << 112 | int(a) << 80 | low), INTERESTING_V4, RANDOM_BITS),
    st.builds(_teredo, INTERESTING_V4, st.integers(0, M32), st.ip_addresses(v=4)),
    st.builds(_teredo, st.ip_addresses(v=4), st.integers(0, M32), INTERESTING_V4),
    st.sampled_from([ipaddress.ip_address(a) for a in ("::", "::1", "::2", "fe80::1", "ff02::1")]),
    st.builds(lambda low: _v6(0xFE80 << 112 | low), st.integers(0, (1 << 118) - 1)),
    st.builds(lambda low: _v6(0xFF << 120 | low), st.integers(0, (1 << 120) - 1)),
)
# The last few bits of each special prefix (/8, /10, /16, /32, /96), counted from bit 0.
BOUNDARY_BITS = sorted({128 - plen + k for plen in (8, 10, 16, 32, 96) for k in range(4)})
# The same, sometimes with one bit flipped: near misses just outside (or inside) a prefix.
NEAR_SPECIAL_V6 = st.builds(
    lambda addr, bit: addr if bit is None else _v6(int(addr) ^ (1 << bit)),
    SPECIAL_V6,
    uniform(st.none(), st.sampled_from(BOUNDARY_BITS), st.integers(0, 127)),
)

ADDRESSES = uniform(
    st.ip_addresses(),
    INTERESTING_V4,
    INTERESTING_V4.map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")),
    NEAR_SPECIAL_V6,
    NEAR_SPECIAL_V6,
)


@PROPERTY
@given(ADDRESSES, st.lists(ADDRESSES, max_size=3), st.booleans())
def test_blocked_ranges_agree_with_an_independent_ipaddress_check(addr, others, own_self):
    own = frozenset([*others, addr] if own_self else others)
    # Own addresses are normalised like destinations: a mapped own address is IPv4.
    own_norm = frozenset(
        a.ipv4_mapped if a.version == 6 and a.ipv4_mapped is not None else a for a in own
    )

    version, value = parse_ip(str(addr))
    ranges = blocked_ranges(version, value)
    holds = OwnAddresses.of(str(a) for a in own).holds(version, value)

    assert holds == reference_blocked(addr, own_norm, static=False)
    assert bool(ranges) == reference_blocked(addr, frozenset())
    v4_or_v6 = (
        (ipaddress.IPv4Address, ipaddress.IPv4Network)
        if version == 4
        else (
            ipaddress.IPv6Address,
            ipaddress.IPv6Network,
        )
    )
    for rv, net, plen in ranges:
        assert rv == version
        network = v4_or_v6[1]((net, plen))  # strict: a well-formed range without host bits
        assert v4_or_v6[0](value) in network
    if ranges:
        assert within(version, value, 32 if version == 4 else 128, ranges)


@PROPERTY
@given(ADDRESSES)
def test_a_destination_cidr_of_everything_never_opens_a_blocked_address(addr):
    version, value = parse_ip(str(addr))
    ranges = blocked_ranges(version, value)
    if ranges:
        assert not within(version, 0, 0, ranges)


# --- within ---------------------------------------------------------------------------

LOOPBACK = (r4("127.0.0.0/8"),)
METADATA = (r4("169.254.0.0/16"),)


@pytest.mark.parametrize(
    ("cidr", "ranges", "expected"),
    [
        ("127.0.0.0/8", LOOPBACK, True),
        ("127.0.0.1/32", LOOPBACK, True),
        ("127.1.0.0/16", LOOPBACK, True),
        ("126.0.0.0/7", LOOPBACK, False),
        ("0.0.0.0/0", LOOPBACK, False),
        ("10.0.0.0/8", LOOPBACK, False),
        ("169.254.169.254/32", METADATA, True),
        ("169.254.169.254/32", LOOPBACK + METADATA, True),
        ("169.0.0.0/8", METADATA, False),
        ("127.0.0.1/32", (), False),
        ("::1/128", (r6("::1/128"),), True),
        ("::/0", (r6("::1/128"),), False),
        ("::/127", (r6("::1/128"),), False),
        ("2001::/32", (r6("2001::/32"),), True),
        ("2001::/16", (r6("2001::/32"),), False),
        ("64:ff9b::7f00:0/104", (r6("64:ff9b::7f00:0/104"),), True),
        ("64:ff9b::/96", (r6("64:ff9b::7f00:0/104"),), False),
    ],
)
def test_a_cidr_opens_a_blocked_address_only_when_it_lies_inside_a_blocked_range(
    cidr, ranges, expected
):
    net = ipaddress.ip_network(cidr)
    assert within(net.version, int(net.network_address), net.prefixlen, ranges) is expected


def test_a_range_of_the_other_version_never_contains_a_network():
    # 0.0.0.0/8 and ::/8 have the same integer form; the versions keep them apart.
    assert not within(6, 0, 128, (r4("0.0.0.0/8"),))
    assert not within(4, 0, 32, (r6("::/128"),))


def _network(version: int, value: int, plen: int):
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((value, plen), strict=False)


NETWORK = st.one_of(
    st.tuples(st.just(4), st.integers(0, M32), st.integers(0, 32)),
    st.tuples(st.just(6), st.integers(0, (1 << 128) - 1), st.integers(0, 128)),
).map(lambda t: _network(*t))


@PROPERTY
@given(NETWORK, st.lists(NETWORK, max_size=4), st.randoms(use_true_random=False))
def test_within_agrees_with_ipaddress_subnet_of(net, others, rnd):
    # Make containment likely: add some supernets of the tested network.
    supers = [net.supernet(new_prefix=rnd.randint(0, net.prefixlen))] if rnd.random() < 0.6 else []
    nets = others + supers
    ranges = tuple((n.version, int(n.network_address), n.prefixlen) for n in nets)
    expected = any(n.version == net.version and net.subnet_of(n) for n in nets)
    assert within(net.version, int(net.network_address), net.prefixlen, ranges) is expected
