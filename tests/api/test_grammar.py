"""The scalar grammars of the API (SPEC 3, Validation): hostnames, CIDRs, names, labels,
durations and resolver addresses.

Example tables first, then properties checked against independent references (the
Gateway API hostname regex, the ipaddress module, the Kubernetes name rules).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clrk.api.grammar import (
    check_dns_label,
    check_label_key,
    check_label_value,
    check_object_name,
    is_ip_literal,
    normalise_hostname,
    parse_cidr,
    parse_duration,
    parse_host_port,
)

PROPERTY = settings(max_examples=200, deadline=None)

# Gateway API's Hostname pattern, applied with fullmatch (no `$`-before-newline leeway).
GATEWAY_API_HOSTNAME = re.compile(
    r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
K8S_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")

NAME_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
NAME_254 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])
assert (len(NAME_253), len(NAME_254)) == (253, 254)


def error_of(fn, *args) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args)
    return str(info.value)


# --- hostnames ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("api.anthropic.com", "api.anthropic.com"),
        ("*.azure.openai.com", "*.azure.openai.com"),
        ("*.com", "*.com"),
        ("localhost", "localhost"),
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("*.Example.COM.", "*.example.com"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("1password.com", "1password.com"),
        ("123.example.com", "123.example.com"),
        ("a-b.c--d.com", "a-b.c--d.com"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (NAME_253, NAME_253),
        (NAME_253 + ".", NAME_253),
        ("*." + "a" * 63 + ".com", "*." + "a" * 63 + ".com"),
    ],
)
def test_a_valid_hostname_is_accepted_folded_and_without_its_trailing_dot(raw, normalised):
    assert normalise_hostname(raw) == normalised


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("*", "a wildcard needs at least one label after '*.'"),
        ("*.", "a wildcard needs at least one label after '*.'"),
        ("*..", "a wildcard needs at least one label after '*.'"),
        ("a.*.b", "'*' is only allowed as the whole first label"),
        ("*x.com", "'*' is only allowed as the whole first label"),
        ("ex*ample.com", "'*' is only allowed as the whole first label"),
        ("**.com", "'*' is only allowed as the whole first label"),
        ("*.*.com", "'*' is only allowed as the whole first label"),
        ("example.*", "'*' is only allowed as the whole first label"),
        ("10.0.0.1", "IP literal; put addresses in destinationCIDRs"),
        ("2001:db8::1", "IP literal; put addresses in destinationCIDRs"),
        ("[2001:db8::1]", "IP literal; put addresses in destinationCIDRs"),
        ("[::1]", "IP literal; put addresses in destinationCIDRs"),
        ("::ffff:10.0.0.1", "IP literal; put addresses in destinationCIDRs"),
        ("2001:DB8::1", "IP literal; put addresses in destinationCIDRs"),
        ("10.0.0.1.", "IP literal; put addresses in destinationCIDRs"),
        ("127.1", "looks like an IP address"),
        ("10.0.1", "looks like an IP address"),
        ("0177.0.0.01", "looks like an IP address"),
        ("2130706433", "looks like an IP address"),
        ("example.123", "looks like an IP address"),
        ("", "must not be empty"),
        (".", "must not be empty"),
        ("a..com", "has an empty label"),
        (".a.com", "has an empty label"),
        ("a.com..", "has an empty label"),
        ("a" * 64 + ".com", "has a label of 64 characters; at most 63"),
        (NAME_254, "is 254 characters long; at most 253"),
        ("-a.com", "label '-a' must be lower-case letters, digits and '-'"),
        ("a-.com", "label 'a-' must be lower-case letters, digits and '-'"),
        ("a_b.com", "label 'a_b' must be lower-case letters, digits and '-'"),
        ("a b.com", "label 'a b' must be lower-case letters, digits and '-'"),
        ("example.com:443", "must be lower-case letters, digits and '-'"),
        ("https://example.com", "must be lower-case letters, digits and '-'"),
        (" example.com", "surrounding whitespace"),
        ("example.com\n", "surrounding whitespace"),
        ("bücher.de", 'use its punycode form "xn--bcher-kva.de"'),
        ("BÜCHER.DE.", 'use its punycode form "xn--bcher-kva.de"'),
        ("*.münchen.de", 'use its punycode form "*.xn--mnchen-3ya.de"'),
        ("例え.jp", 'use its punycode form "xn--r8jz45g.jp"'),
        (None, "must be a string, not NoneType"),
        (443, "must be a string, not int"),
        (["a.com"], "must be a string, not list"),
    ],
)
def test_an_invalid_hostname_is_rejected_with_a_message_naming_the_fix(raw, message):
    assert message in error_of(normalise_hostname, raw)


@pytest.mark.parametrize(
    "raw",
    [
        "0x7f000001",
        "127.0.0.0x1",
        "0x7f.0x1",
        "0X7F.1",
        "127.1",
        "0177.0.0.01",
        "10.1",
    ],
)
def test_an_ipv4_shorthand_that_inet_aton_resolves_is_not_a_hostname(raw):
    socket.inet_aton(raw)  # the premise: a libc resolver treats it as an address
    with pytest.raises(ValueError):
        normalise_hostname(raw)


@pytest.mark.parametrize("raw", ["a\n.com", "a.b\n.com", "*.a\n.com", "a\n"])
def test_a_newline_inside_a_hostname_is_rejected(raw):
    # `$` in a pattern applied with re.match would let a label end in '\n'.
    with pytest.raises(ValueError):
        normalise_hostname(raw)


_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
LABEL = st.one_of(
    st.sampled_from(_ALNUM),
    st.builds(
        lambda first, middle, last: first + middle + last,
        st.sampled_from(_ALNUM),
        st.text(alphabet=_ALNUM + "-", max_size=10),
        st.sampled_from(_ALNUM),
    ),
)
HOSTNAME = st.builds(
    lambda wildcard, labels, last: ("*." if wildcard else "") + ".".join([*labels, last]),
    st.booleans(),
    st.lists(LABEL, max_size=4),
    LABEL.filter(lambda label: not label.isdigit()),
)
# Text that often lands near the grammar's edges.
HOSTNAME_ISH = st.text(alphabet="abxZ09-*._ :[]/é\t\nK", max_size=24)


@PROPERTY
@given(HOSTNAME, st.booleans())
def test_a_generated_hostname_survives_upper_case_and_a_trailing_dot(name, dot):
    assert normalise_hostname(name.upper() + ("." if dot else "")) == name


@PROPERTY
@given(st.one_of(st.text(), HOSTNAME_ISH, HOSTNAME))
def test_normalise_hostname_raises_only_value_error_and_is_idempotent(raw):
    try:
        name = normalise_hostname(raw)
    except ValueError:
        return
    assert normalise_hostname(name) == name


@PROPERTY
@given(st.one_of(HOSTNAME_ISH, HOSTNAME, HOSTNAME.map(str.upper)))
def test_every_accepted_hostname_fits_the_gateway_api_grammar(raw):
    try:
        name = normalise_hostname(raw)
    except ValueError:
        return
    assert GATEWAY_API_HOSTNAME.fullmatch(name)
    assert len(name) <= 253
    assert all(len(label) <= 63 for label in name.split("."))
    assert not name.endswith(".")
    assert "*" not in name[1:]


@PROPERTY
@given(st.ip_addresses())
def test_no_ip_literal_is_a_hostname_bracketed_or_not(addr):
    for text in (str(addr), f"[{addr}]", addr.exploded):
        assert "IP" in error_of(normalise_hostname, text)


@PROPERTY
@given(st.lists(st.integers(0, 255), min_size=1, max_size=4))
def test_dotted_decimal_forms_are_never_hostnames(octets):
    with pytest.raises(ValueError):
        normalise_hostname(".".join(map(str, octets)))


def _inet_aton_reads_an_address(name: str) -> bool:
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True


@PROPERTY
@given(
    st.one_of(
        st.text(alphabet="0123456789abcfx.", max_size=20),
        st.lists(
            st.one_of(
                st.integers(0, 2**32).map(str),
                st.integers(0, 2**32).map(hex),
                st.integers(0, 2**32).map(oct).map(lambda o: "0" + o[2:]),
            ),
            min_size=1,
            max_size=4,
        ).map(".".join),
    )
)
def test_no_accepted_hostname_is_an_address_to_inet_aton(raw):
    try:
        name = normalise_hostname(raw)
    except ValueError:
        return
    assert not _inet_aton_reads_an_address(name)


# --- CIDRs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "network"),
    [
        ("10.20.0.0/16", "10.20.0.0/16"),
        ("203.0.113.5/32", "203.0.113.5/32"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::/0", "::/0"),
        ("::1/128", "::1/128"),
        ("64:ff9b::/96", "64:ff9b::/96"),
    ],
)
def test_a_valid_cidr_is_parsed_to_its_network(raw, network):
    assert parse_cidr(raw) == ipaddress.ip_network(network)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("10.0.0.1/8", "has host bits set; the network is '10.0.0.0/8'"),
        ("203.0.113.5/24", "has host bits set; the network is '203.0.113.0/24'"),
        ("2001:db8::1/32", "has host bits set; the network is '2001:db8::/32'"),
        ("10.0.0.1", "has no prefix length; write '10.0.0.1/32'"),
        ("2001:db8::1", "has no prefix length; write '2001:db8::1/128'"),
        ("::ffff:10.0.0.0/104", "IPv4-mapped IPv6 range; write the IPv4 form '10.0.0.0/8'"),
        ("::ffff:203.0.113.5/128", "IPv4-mapped IPv6 range; write the IPv4 form '203.0.113.5/32'"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6 range; write the IPv4 form '0.0.0.0/0'"),
        ("10.0.0.0/33", "is not a valid IPv4 or IPv6 CIDR"),
        ("2001:db8::/129", "is not a valid IPv4 or IPv6 CIDR"),
        ("10.0.0.0/", "prefix length in bits"),
        ("/8", "is not a valid IPv4 or IPv6 CIDR"),
        ("10.0.0.0/8/8", "prefix length in bits"),
        ("10.0.0/8", "is not a valid IPv4 or IPv6 CIDR"),
        ("example.com/32", "is not a valid IPv4 or IPv6 CIDR"),
        ("10.0.0.0/-1", "prefix length in bits"),
        ("", "is not a CIDR such as '10.0.0.0/8'"),
        ("example.com", "is not a CIDR such as '10.0.0.0/8'"),
        ("10.0.0", "is not a CIDR such as '10.0.0.0/8'"),
        (None, "must be a string such as '10.0.0.0/8', not NoneType"),
        (167772160, "must be a string such as '10.0.0.0/8', not int"),
    ],
)
def test_an_invalid_cidr_is_rejected_with_a_message_naming_the_fix(raw, message):
    assert message in error_of(parse_cidr, raw)


def _is_mapped(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None


def _mapped_network(v4: ipaddress.IPv4Address, plen: int) -> str:
    net = ipaddress.ip_network((int(v4) | 0xFFFF << 32, plen), strict=False)
    return str(net)


CIDR_TEXT = st.one_of(
    st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(), st.integers(0, 130)),
    st.builds(
        lambda a, p: str(ipaddress.ip_network(f"{a}/{p % (a.max_prefixlen + 1)}", strict=False)),
        st.ip_addresses(),
        st.integers(0, 128),
    ),
    st.builds(_mapped_network, st.ip_addresses(v=4), st.integers(96, 128)),
    st.builds(lambda a, p: f"::ffff:{a}/{p}", st.ip_addresses(v=4), st.integers(90, 128)),
    st.builds(lambda a, m: f"{a}/{m}", st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.text(alphabet="0123456789abcdef:./", max_size=24).filter(lambda s: "/" in s),
    st.tuples(st.text(max_size=10), st.text(max_size=6)).map("/".join),
)


@PROPERTY
@given(CIDR_TEXT)
def test_parse_cidr_accepts_what_ipaddress_strict_accepts_except_mapped_ranges(text):
    # parse_cidr strips surrounding whitespace first; the reference does the same.  It
    # also refuses what ipaddress takes but a policy should not: netmasks, IPv6 scopes.
    address, _, prefix = text.strip().partition("/")
    try:
        expected = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        expected = None
    if not (prefix.isascii() and prefix.isdigit()) or "%" in address:
        expected = None
    if expected is not None and _is_mapped(expected):
        v4 = ipaddress.IPv4Network((expected.network_address.ipv4_mapped, expected.prefixlen - 96))
        assert f"write the IPv4 form '{v4}'" in error_of(parse_cidr, text)
    elif expected is None:
        with pytest.raises(ValueError):
            parse_cidr(text)
    else:
        assert parse_cidr(text) == expected


@PROPERTY
@given(st.ip_addresses(), st.data())
def test_a_cidr_with_host_bits_names_its_network(addr, data):
    plen = data.draw(st.integers(0, addr.max_prefixlen))
    loose = ipaddress.ip_network((addr, plen), strict=False)
    text = f"{addr}/{plen}"
    if loose.network_address == addr:
        return
    assert f"the network is '{loose}'" in error_of(parse_cidr, text)


@PROPERTY
@given(st.ip_addresses())
def test_an_address_without_a_prefix_is_told_its_host_route(addr):
    assert f"write '{addr}/{addr.max_prefixlen}'" in error_of(parse_cidr, str(addr))


@PROPERTY
@given(st.one_of(st.text(), st.integers(), st.none(), st.binary()))
def test_parse_cidr_raises_only_value_error(raw):
    with contextlib.suppress(ValueError):
        parse_cidr(raw)


# --- object names and labels ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "raw", "ok"),
    [
        (check_object_name, "prod-agents", True),
        (check_object_name, "a", True),
        (check_object_name, "0", True),
        (check_object_name, "api.v1.example", True),
        (check_object_name, NAME_253, True),
        (check_object_name, NAME_254, False),
        (check_object_name, "", False),
        (check_object_name, "Prod", False),
        (check_object_name, "-prod", False),
        (check_object_name, "prod-", False),
        (check_object_name, "a..b", False),
        (check_object_name, "a.", False),
        (check_object_name, "a_b", False),
        (check_object_name, "a/b", False),
        (check_object_name, None, False),
        (check_dns_label, "default", True),
        (check_dns_label, "tcp-out", True),
        (check_dns_label, "a" * 63, True),
        (check_dns_label, "a" * 64, False),
        (check_dns_label, "", False),
        (check_dns_label, "a.b", False),
        (check_dns_label, "TCP-out", False),
        (check_dns_label, "-a", False),
        (check_dns_label, 7, False),
        (check_label_key, "team", True),
        (check_label_key, "Team_Name.v1", True),
        (check_label_key, "clrk.apoxy.dev/tier", True),
        (check_label_key, "a" * 63, True),
        (check_label_key, "a" * 64, False),
        (check_label_key, "x/" + "a" * 63, True),
        (check_label_key, NAME_253 + "/a", True),
        (check_label_key, NAME_254 + "/a", False),
        (check_label_key, "Example.com/tier", False),
        (check_label_key, "a/b/c", False),
        (check_label_key, "example.com/", False),
        (check_label_key, "", False),
        (check_label_key, "_team", False),
        (check_label_key, "team-", False),
        (check_label_key, "te am", False),
        (check_label_key, 1, False),
        (check_label_value, "prod", True),
        (check_label_value, "", True),
        (check_label_value, "A-b_c.D", True),
        (check_label_value, "v" * 63, True),
        (check_label_value, "v" * 64, False),
        (check_label_value, "-prod", False),
        (check_label_value, "prod.", False),
        (check_label_value, "a/b", False),
        (check_label_value, "a b", False),
        (check_label_value, True, False),
        (check_label_value, 5, False),
    ],
)
def test_names_and_labels_follow_the_kubernetes_grammar(fn, raw, ok):
    if ok:
        assert fn(raw) == raw
    else:
        with pytest.raises(ValueError):
            fn(raw)


def test_a_non_string_label_value_is_told_to_quote_it():
    assert "quote it: 'True'" in error_of(check_label_value, True)


@pytest.mark.parametrize(
    "fn", [check_object_name, check_dns_label, check_label_key, check_label_value]
)
def test_a_name_with_a_trailing_newline_is_rejected(fn):
    # `$` in a pattern applied with re.match would also match before a trailing '\n'.
    with pytest.raises(ValueError):
        fn("abc\n")


def test_a_label_key_with_an_empty_prefix_is_rejected():
    # Kubernetes: the prefix before '/' must be a non-empty DNS subdomain.
    assert "invalid prefix ''" in error_of(check_label_key, "/abc")


def k8s_label_key_ok(key: str) -> bool:
    parts = key.split("/")
    if len(parts) > 2:
        return False
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix or len(prefix) > 253 or not DNS1123_SUBDOMAIN.fullmatch(prefix):
            return False
    name = parts[-1]
    return 0 < len(name) <= 63 and bool(K8S_LABEL_NAME.fullmatch(name))


NAME_ISH = st.text(alphabet="abzAZ09-_./ \t\né", max_size=70)


@PROPERTY
@given(NAME_ISH)
def test_check_object_name_agrees_with_the_dns_subdomain_rule(raw):
    ok = 0 < len(raw) <= 253 and bool(DNS1123_SUBDOMAIN.fullmatch(raw))
    try:
        assert check_object_name(raw) == raw and ok
    except ValueError:
        assert not ok


@PROPERTY
@given(NAME_ISH)
def test_check_dns_label_agrees_with_the_dns_label_rule(raw):
    ok = 0 < len(raw) <= 63 and bool(DNS1123_LABEL.fullmatch(raw))
    try:
        assert check_dns_label(raw) == raw and ok
    except ValueError:
        assert not ok


@PROPERTY
@given(NAME_ISH)
def test_check_label_key_agrees_with_the_kubernetes_qualified_name_rule(raw):
    ok = k8s_label_key_ok(raw)
    try:
        assert check_label_key(raw) == raw and ok
    except ValueError:
        assert not ok


@PROPERTY
@given(NAME_ISH)
def test_check_label_value_agrees_with_the_kubernetes_label_value_rule(raw):
    ok = raw == "" or (len(raw) <= 63 and bool(K8S_LABEL_NAME.fullmatch(raw)))
    try:
        assert check_label_value(raw) == raw and ok
    except ValueError:
        assert not ok


@PROPERTY
@given(st.one_of(st.text(), st.integers(), st.none(), st.booleans(), st.floats()))
def test_the_name_checks_raise_only_value_error(raw):
    for fn in (check_object_name, check_dns_label, check_label_key, check_label_value):
        with contextlib.suppress(ValueError):
            fn(raw)


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("5s", 5.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("2h45m30s500ms", 9930.5),
        ("30s1m", 90.0),
        ("5s5s", 10.0),
        (5, 5.0),
        (0, 0.0),
        (0.5, 0.5),
        (3600, 3600.0),
    ],
)
def test_a_go_style_duration_or_a_number_is_read_as_seconds(raw, seconds):
    result = parse_duration(raw)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "5",
        "0",
        "s",
        "ms",
        "5x",
        "1d",
        "5S",
        "-5s",
        "+5s",
        " 5s",
        "5s ",
        "5 s",
        "5s\n",
        "1m30",
        ".5s",
        "5.s",
        "1,5s",
        "5sec",
        "1h-30m",
        -1,
        -0.5,
        True,
        False,
        None,
        [5],
        {"s": 5},
    ],
)
def test_a_bad_duration_is_rejected(raw):
    with pytest.raises(ValueError):
        parse_duration(raw)


@pytest.mark.parametrize(
    "raw", [10**400, -(10**400), float("nan"), float("inf"), float("-inf"), "1" * 400 + "h"]
)
def test_a_huge_or_non_finite_duration_is_a_value_error_not_a_crash(raw):
    # float(10**400) raises OverflowError; nan slips past `< 0`; both must be ValueError.
    with pytest.raises(ValueError):
        parse_duration(raw)


DURATION_PART = st.tuples(st.integers(0, 10_000), st.sampled_from(["ms", "s", "m", "h"]))
UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@PROPERTY
@given(st.lists(DURATION_PART, min_size=1, max_size=5))
def test_a_duration_is_the_sum_of_its_parts(parts):
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == pytest.approx(sum(n * UNIT[unit] for n, unit in parts))


@PROPERTY
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="0123456789.mshx- ", max_size=12),
        st.integers(),
        st.integers(10**307, 10**310),
        st.floats(),
    )
)
def test_parse_duration_raises_only_value_error_and_never_returns_a_negative(raw):
    try:
        result = parse_duration(raw)
    except ValueError:
        return
    assert isinstance(result, float)
    assert math.isfinite(result)
    assert result >= 0
    if isinstance(raw, int | float):
        assert result == float(raw)


# --- resolver addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("192.0.2.53:53", ("192.0.2.53", 53)),
        ("192.0.2.53:5353", ("192.0.2.53", 5353)),
        ("192.0.2.53", ("192.0.2.53", 9953)),
        ("192.0.2.53:1", ("192.0.2.53", 1)),
        ("192.0.2.53:65535", ("192.0.2.53", 65535)),
        ("[2001:db8::53]:53", ("2001:db8::53", 53)),
        ("[2001:db8::53]", ("2001:db8::53", 9953)),
        ("2001:db8::53", ("2001:db8::53", 9953)),
        ("[2001:DB8:0::53]:5353", ("2001:db8::53", 5353)),
        ("::1", ("::1", 9953)),
        ("[::1]:53", ("::1", 53)),
    ],
)
def test_a_resolver_address_is_split_into_address_and_port(raw, expected):
    assert parse_host_port(raw, 9953) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "must be an address such as '192.0.2.53:53'"),
        (None, "must be an address such as '192.0.2.53:53'"),
        (53, "must be an address such as '192.0.2.53:53'"),
        ("dns.google:53", "'dns.google' is not an IP address (resolvers are IPs)"),
        ("dns.google", "is not an IP address"),
        (":53", "is not an IP address"),
        ("192.0.2.53:0", "port must be 1..65535"),
        ("192.0.2.53:65536", "port must be 1..65535"),
        ("192.0.2.53:-1", "port must be 1..65535"),
        ("192.0.2.53:", "port must be 1..65535"),
        ("192.0.2.53:dns", "port must be 1..65535"),
        ("192.0.2.53: 53", "port must be 1..65535"),
        ("[2001:db8::53]:", "port must be 1..65535"),
        ("[2001:db8::53]:99999", "port must be 1..65535"),
        ("[2001:db8::53]53", "is not '[IPv6]:port'"),
        ("[2001:db8::53", "is not '[IPv6]:port'"),
        ("[dns.google]:53", "is not an IP address"),
        ("2001:db8::53:53:53:53:53:53", "is not an IP address"),
    ],
)
def test_a_bad_resolver_address_is_rejected(raw, message):
    assert message in error_of(parse_host_port, raw, 53)


@PROPERTY
@given(st.ip_addresses(), st.integers(1, 65535))
def test_an_address_and_port_round_trip(addr, port):
    text = f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
    assert parse_host_port(text, 53) == (str(addr), port)
    assert parse_host_port(str(addr), 53) == (str(addr), 53)


@PROPERTY
@given(st.ip_addresses(v=4), st.integers().filter(lambda p: not 1 <= p <= 65535))
def test_a_port_out_of_range_is_rejected(addr, port):
    assert "port must be 1..65535" in error_of(parse_host_port, f"{addr}:{port}", 53)


@PROPERTY
@given(st.one_of(st.text(), st.text(alphabet="0123456789abcdef:.[]", max_size=20)))
def test_parse_host_port_raises_only_value_error(raw):
    try:
        host, port = parse_host_port(raw, 53)
    except ValueError:
        return
    assert 1 <= port <= 65535
    assert ipaddress.ip_address(host)


@PROPERTY
@given(
    st.text(alphabet="0123456789.:abcdefx%[]٣ ", max_size=24)
    | st.ip_addresses().map(str)
    | st.ip_addresses(v=4).map(lambda a: str(a).replace(".", ". ", 1))
)
def test_an_ip_literal_is_exactly_what_ipaddress_reads_as_an_address(text):
    try:
        ipaddress.ip_address(text)
        reads = True
    except ValueError:
        reads = False
    assert is_ip_literal(text) is reads
