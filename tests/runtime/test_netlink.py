"""Netlink framing: what is built reads back, and no bytes make the readers raise."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clrk_runtime import netlink


def test_messages_built_here_read_back_in_order_with_their_attributes():
    first = netlink.message(24, netlink.NLM_F_REQUEST, 1, b"\0" * 4 + netlink.attribute(1, b"abc"))
    second = netlink.message(netlink.NLMSG_DONE, 0, 2, b"\0\0\0\0")
    read = list(netlink.messages(first + second))
    assert [kind for kind, _ in read] == [24, netlink.NLMSG_DONE]
    assert netlink.attributes(read[0][1], 4) == {1: b"abc"}


def test_a_truncated_message_or_attribute_ends_the_walk():
    whole = netlink.message(24, 0, 1, b"\0" * 4 + netlink.attribute(1, b"abcd"))
    assert list(netlink.messages(whole[:-1])) == []
    assert netlink.attributes(b"\x09\x00\x01\x00abc", 0) == {}  # says 9 bytes, has 7


def test_the_first_of_a_repeated_attribute_counts_and_flag_bits_are_ignored():
    data = netlink.attribute(2 | 0x8000, b"one") + netlink.attribute(2, b"two")
    assert netlink.attributes(data, 0) == {2: b"one"}


def test_an_error_message_gives_the_errno_and_an_acknowledgement_zero():
    assert netlink.error_code((-13).to_bytes(4, "little", signed=True)) == 13
    assert netlink.error_code(b"\0\0\0\0") == 0
    assert netlink.error_code(b"\0") is None


@given(st.binary(max_size=256), st.integers(min_value=0, max_value=300))
def test_no_bytes_make_the_readers_raise(data, offset):
    for _kind, payload in netlink.messages(data):
        netlink.attributes(payload, 4)
        netlink.error_code(payload)
    netlink.attributes(data, offset)
