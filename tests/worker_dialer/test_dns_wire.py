"""The small DNS wire parser against dnspython as the reference: whatever dnspython
reads, dns_wire reads the same header, question and answer records (A, AAAA, CNAME
rdata included); random and mutated bytes never raise anything but WireError."""

from __future__ import annotations

import contextlib
import struct

import dns.ipv6
import dns.message
import dns.name
import dns.opcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clrk_worker_dialer import dns_wire
from clrk_worker_dialer._normalise import normalise_ip

LABEL_BYTES = st.sampled_from(list(b'abcXYZ09-_.@\\ \x00\xff"('))
ODD_LABEL = st.lists(LABEL_BYTES, min_size=1, max_size=6).map(bytes)
LABELS = st.lists(
    st.binary(min_size=1, max_size=8) | ODD_LABEL,
    min_size=0,
    max_size=4,
)
NAMES = LABELS.map(lambda labels: dns.name.Name([*labels, b""]))
SIMPLE = st.sampled_from(["a.example", "B.Example", "c.a.example", "example", "x.y.z.example"])
ANY_NAME = NAMES | SIMPLE.map(dns.name.from_text)
TTL = st.integers(0, 2**32 - 1)
IPV4 = st.binary(min_size=4, max_size=4).map(lambda b: ".".join(map(str, b)))
IPV6 = st.binary(min_size=16, max_size=16).map(lambda b: dns.ipv6.inet_ntoa(b))


@st.composite
def records(draw):
    rdtype = draw(st.sampled_from(["A", "AAAA", "CNAME", "MX", "TXT"]))
    IN = dns.rdataclass.IN
    if rdtype == "A":
        rdata = dns.rdtypes.IN.A.A(IN, dns.rdatatype.A, draw(IPV4))
    elif rdtype == "AAAA":
        rdata = dns.rdtypes.IN.AAAA.AAAA(IN, dns.rdatatype.AAAA, draw(IPV6))
    elif rdtype == "CNAME":
        rdata = dns.rdtypes.ANY.CNAME.CNAME(IN, dns.rdatatype.CNAME, draw(ANY_NAME))
    elif rdtype == "MX":
        rdata = dns.rdtypes.ANY.MX.MX(IN, dns.rdatatype.MX, 10, draw(ANY_NAME))
    else:  # also of another class: only IN records bind
        rdclass = draw(st.sampled_from([IN, dns.rdataclass.CH]))
        rdata = dns.rdtypes.ANY.TXT.TXT(rdclass, dns.rdatatype.TXT, [b"hello"])
    rrset = dns.rrset.RRset(draw(ANY_NAME), rdata.rdclass, rdata.rdtype)
    rrset.add(rdata, draw(TTL))
    return rrset


@st.composite
def messages(draw):
    qname = draw(ANY_NAME)
    qtype = draw(st.sampled_from(["A", "AAAA", "ANY", "MX", "CNAME"]))
    message = dns.message.make_query(qname, qtype)
    message.id = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        message = dns.message.make_response(message)
        message.set_rcode(draw(st.sampled_from([0, 0, 2, 3, 16])))
        message.answer = draw(st.lists(records(), max_size=5))
        message.authority = draw(st.lists(records(), max_size=2))
    if draw(st.booleans()):
        message.use_edns(0, payload=1232)
    return message.to_wire()


def reference(wire: bytes) -> dns.message.Message | None:
    try:
        return dns.message.from_wire(wire, one_rr_per_rrset=True)
    except Exception:
        return None


def assert_same(wire: bytes) -> None:
    ref = reference(wire)
    assert ref is not None
    ours = dns_wire.parse(wire)
    assert (ours.id, ours.flags & ~0xF, ours.opcode) == (ref.id, ref.flags & ~0xF, ref.opcode())
    assert ours.rcode == ref.rcode()
    assert [
        (dns_wire.name_text(q.labels).lower(), q.rdtype, q.rdclass) for q in ours.questions
    ] == [(q.name.to_text(omit_final_dot=True).lower(), q.rdtype, q.rdclass) for q in ref.question]
    expected = []
    for rrset in ref.answer:
        for rdata in rrset:
            address = target = None
            is_in = rrset.rdclass == dns.rdataclass.IN
            if is_in and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                address = normalise_ip(rdata.address)
            if rrset.rdtype == dns.rdatatype.CNAME:
                target = rdata.target.to_text(omit_final_dot=True).lower()
            owner = rrset.name.to_text(omit_final_dot=True).lower()
            expected.append((owner, rrset.rdtype, rrset.rdclass, rrset.ttl, address, target))
    got = [
        (
            dns_wire.name_text(r.owner).lower(),
            r.rdtype,
            r.rdclass,
            r.ttl,
            normalise_ip(r.address) if r.address else None,
            dns_wire.name_text(r.target).lower() if r.target is not None else None,
        )
        for r in ours.answers
    ]
    assert got == expected


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages())
def test_every_message_dnspython_writes_reads_the_same(wire):
    assert reference(wire) is not None
    assert_same(wire)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
       st.integers(0, 10_000))  # fmt: skip
def test_mutated_messages_dnspython_reads_are_read_the_same(wire, flips, cut):
    mutated = bytearray(wire)
    for at, value in flips:
        mutated[at % len(mutated)] = value
    mutated = bytes(mutated[: max(12, len(mutated) - cut % 8)])
    ref = reference(mutated)
    if ref is None or ref.opcode() != dns.opcode.QUERY:  # only queries are read for bindings
        with contextlib.suppress(dns_wire.WireError):
            dns_wire.parse(mutated)  # may read it (other rdata is not checked); never raise
        return
    assert_same(mutated)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_wire_error(data):
    with contextlib.suppress(dns_wire.WireError):
        dns_wire.parse(data)


def test_a_compression_loop_is_refused():
    header = b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00"
    with pytest.raises(dns_wire.WireError, match="backwards"):
        dns_wire.parse(header + b"\xc0\x0c\x00\x01\x00\x01")


def test_signed_messages_are_refused():
    query = bytearray(dns.message.make_query("a.example", "A").to_wire())
    query[11] = 1  # one additional record: a TSIG (root owner, class ANY, empty here)
    tsig = b"\x00" + struct.pack("!HHIH", dns_wire.TSIG, 255, 0, 0)
    with pytest.raises(dns_wire.WireError, match="signed"):
        dns_wire.parse(bytes(query) + tsig)


def test_names_are_written_as_dnspython_writes_them():
    name = dns.name.Name([b"a.b", b"c@d", b"\x00\xff", b"E", b""])
    assert dns_wire.name_text(tuple(name.labels[:-1])) == name.to_text(omit_final_dot=True)
    assert dns_wire.name_text(()) == dns.name.root.to_text(omit_final_dot=True)


# --- the shortcuts: what they read is what the whole parse reads -------------------------


def parse_or_error(wire: bytes):
    try:
        return dns_wire.parse(wire)
    except dns_wire.WireError:
        return dns_wire.WireError


def lone_or_error(wire: bytes):
    try:
        return dns_wire.lone_question(wire)
    except dns_wire.WireError:
        return dns_wire.WireError


def mutations(wire: bytes, flips, cut: int) -> bytes:
    if not wire:
        return wire
    mutated = bytearray(wire)
    for at, value in flips:
        mutated[at % len(mutated)] = value
    return bytes(mutated[: max(0, len(mutated) - cut % 8)])


FLIPS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages() | st.binary(max_size=80), FLIPS, st.integers(0, 10_000))
def test_a_lone_question_is_read_as_the_whole_parse_reads_it(wire, flips, cut):
    wire = mutations(wire, flips, cut)
    lone, whole = lone_or_error(wire), parse_or_error(wire)
    if lone is None:
        assert not dns_wire.lone_counts(wire)
    elif lone is dns_wire.WireError:
        assert whole is dns_wire.WireError
    else:
        assert dns_wire.lone_counts(wire) and dns_wire.question_end(wire) == len(wire)
        (question,) = whole.questions
        assert lone == (whole.id, whole.flags, *question)
        assert whole.answers == ()


def plain_question(wire: bytes) -> tuple[dns_wire.Labels, int] | None:
    """The first question's name and end, when it is at offset 12 with no pointer."""
    try:
        labels, at = dns_wire._name(wire, 12, len(wire))
    except dns_wire.WireError:
        return None
    if at != 12 + sum(len(label) + 1 for label in labels) + 1 or at + 4 > len(wire):
        return None
    return labels, at + 4


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages(), FLIPS, st.integers(0, 10_000), st.booleans())
def test_a_known_question_is_not_read_again_and_the_rest_reads_the_same(wire, flips, cut, lower):
    asked = plain_question(wire)
    if asked is None:
        return
    labels, end = asked
    # The question stays as it is; what follows it (and the header) may be anything.
    wire = mutations(wire, [(at, v) for at, v in flips if not 12 <= at % len(wire) < end], cut)
    if len(wire) < end:
        return
    given_labels = dns_wire.key(labels) if lower else labels
    whole = parse_or_error(wire)
    try:
        known = dns_wire.parse(wire, (given_labels, end))
    except dns_wire.WireError:
        assert whole is dns_wire.WireError
        return
    assert whole is not dns_wire.WireError
    if len(whole.questions) == 1:  # the shortcut is taken: the name is the one given

        def lowered(message):
            answers = [(dns_wire.key(r.owner), *r[1:]) for r in message.answers]
            questions = [(dns_wire.key(q.labels), *q[1:]) for q in message.questions]
            return (*message[:4], questions, answers)

        assert lowered(known) == lowered(whole)
    else:
        assert known == whole
