"""The always-blocked networks Envoy re-checks agree with the dialer's decision core."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from clrk.policy.addresses import OwnAddresses, blocked_ranges, parse_ip
from clrk_xds.translate_blocked import always_blocked_networks, own_networks, split_by_blocked

BLOCKED = always_blocked_networks()
TEREDO = ipaddress.IPv6Network("2001::/32")


def _in(address: str, networks) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n for n in networks)


def _core_blocks(address: str, own=()) -> bool:
    version, value = parse_ip(address)
    return bool(blocked_ranges(version, value)) or OwnAddresses.of(own).holds(version, value)


interesting_v4 = st.sampled_from(
    ["0.0.0.0", "127.0.0.1", "169.254.169.254", "224.0.0.1", "255.255.255.255", "10.0.0.1"]
).map(ipaddress.IPv4Address)
v4 = st.one_of(st.ip_addresses(v=4), interesting_v4)
v6 = st.one_of(
    st.ip_addresses(v=6),
    v4.map(lambda a: ipaddress.IPv6Address("::ffff:" + str(a))),
    v4.map(lambda a: ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(a))),
    v4.map(lambda a: ipaddress.IPv6Address((0x2002 << 112) | (int(a) << 80))),
    st.sampled_from(["::", "::1", "fe80::1", "ff02::1"]).map(ipaddress.IPv6Address),
)


@settings(max_examples=500)
@given(st.one_of(v4, v6))
def test_same_verdict_as_the_decision_core(address) -> None:
    text = str(address)
    envoy = _in(text, BLOCKED)
    core = _core_blocks(text)
    if address.version == 6 and address in TEREDO:
        assert envoy  # stricter on Teredo: never looser than the dialer
    else:
        assert envoy == core, text


@given(st.lists(st.one_of(v4, st.ip_addresses(v=6)), max_size=3), st.one_of(v4, v6))
def test_own_addresses_are_blocked(own, probe) -> None:
    own_text = [str(a) for a in own]
    networks = [*BLOCKED, *own_networks(own_text)]
    for a in own_text:
        assert _in(a, networks)
    if not (probe.version == 6 and probe in TEREDO):
        assert _in(str(probe), networks) == _core_blocks(str(probe), own_text)


@given(st.lists(st.sampled_from(["127.0.0.0/8", "10.1.0.0/16", "fd00::/64", "::1"]), max_size=3),
       st.one_of(v4, v6))  # fmt: skip
def test_own_ranges_are_closed_as_the_core_blocks_them(own, probe) -> None:
    guard = own_networks(own)
    core = OwnAddresses.of(own).holds(*parse_ip(str(probe)))
    if probe.version == 6 and probe in TEREDO and any("." in a for a in own):
        assert _in(str(probe), guard)  # stricter on Teredo: never looser than the dialer
    else:
        assert _in(str(probe), guard) == core, (own, str(probe))


def test_split_by_blocked() -> None:
    nets = [ipaddress.ip_network(n) for n in ("169.254.169.254/32", "0.0.0.0/0", "10.0.0.0/8")]
    nets.append(ipaddress.ip_network("::1/128"))
    ordinary, inside = split_by_blocked(nets, BLOCKED)
    assert [str(n) for n in inside] == ["169.254.169.254/32", "::1/128"]
    assert [str(n) for n in ordinary] == ["0.0.0.0/0", "10.0.0.0/8"]
