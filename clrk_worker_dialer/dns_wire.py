"""A small DNS wire parser: only what the forwarder's snoop needs, pure and fast.

dnspython builds a full object tree of every query and answer, which was about half of
the forwarder's time.  This reads the header, the question and each record's owner,
type, class and TTL, and the rdata of A, AAAA and CNAME records; every other rdata is
skipped by its length.  It accepts what dnspython accepts for those parts (the tests
fuzz it against dnspython): names with compression pointers that only point backwards,
labels of at most 63 bytes and names of at most 255, rdata that fills its length
exactly, one OPT record and only in the additional section (its extended RCODE
counts), no trailing bytes.  Messages carrying TSIG or SIG(0) records are refused
outright: nothing here verifies them.  The one difference left: the rdata of other
types is not checked, so a message dnspython refuses for a malformed MX, say, is read
here; the answers come from the gateway's own resolver over a connected socket.

Every failure is `WireError`, never anything else: agents control these bytes.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

A, CNAME, AAAA, OPT, SIG, TSIG = 1, 5, 28, 41, 24, 250
IN = 1  # A and AAAA rdata are addresses in this class only (CNAME in every class)
QR, TC = 0x8000, 0x0200
MAX_LABEL = 63
MAX_NAME = 255
_ESCAPED = frozenset(b'"().;\\@$')
# The bytes a label may hold to be written as it is (no escape): printable, not special.
_PLAIN = bytes(c for c in range(0x21, 0x7F) if c not in _ESCAPED)
_PLAIN_OR_DOT = _PLAIN + b"."

Labels = tuple[bytes, ...]


class WireError(ValueError):
    """Not a DNS message this parser accepts."""


# Named tuples, not dataclasses: one is built per question and record of every message,
# and a tuple is built several times faster than a frozen dataclass; parse() builds them
# with tuple.__new__ (_new), not through their Python-level constructor, for the same
# reason (about 0.3 us each).
class Question(NamedTuple):
    labels: Labels  # as sent, case kept
    rdtype: int
    rdclass: int


class AnswerRecord(NamedTuple):
    owner: Labels
    rdtype: int
    rdclass: int
    ttl: int
    address: str | None = None  # A and AAAA of class IN
    target: Labels | None = None  # CNAME


class Message(NamedTuple):
    id: int
    flags: int
    opcode: int  # of flags, kept apart: every reader asks for it
    rcode: int  # with the extended bits of an OPT record
    questions: tuple[Question, ...]
    answers: tuple[AnswerRecord, ...]


_new = tuple.__new__


def key(labels: Labels) -> Labels:
    """Names compare case-insensitively (ASCII only, as in DNS)."""
    return tuple(map(bytes.lower, labels))


def name_text(labels: Labels) -> str:
    """dnspython's text of a name without the final dot: special bytes escaped."""
    if not labels:
        return "."
    joined = b".".join(labels)
    if not joined.translate(None, _PLAIN_OR_DOT) and joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii")  # the usual name: nothing to escape, no dot in a label
    parts = []
    for label in labels:
        if not label.translate(None, _PLAIN):  # nothing to escape
            parts.append(label.decode("ascii"))
            continue
        text = []
        for c in label:
            if c in _ESCAPED:
                text.append("\\" + chr(c))
            elif 0x20 < c < 0x7F:
                text.append(chr(c))
            else:
                text.append(f"\\{c:03d}")
        parts.append("".join(text))
    return ".".join(parts)


def _name(wire: bytes, at: int, end: int) -> tuple[Labels, int]:
    """The name at `at` (not beyond `end`) and the offset after it where it sits."""
    labels: list[bytes] = []
    length = 1  # the root's zero byte
    lowest = at  # a pointer must point before every earlier one (no loops)
    after = -1
    while True:
        if at >= end:
            raise WireError("name runs past its end")
        count = wire[at]
        if count == 0:
            at += 1
            break
        if count < 64:
            after_label = at + 1 + count
            if after_label > end:
                raise WireError("label runs past its end")
            labels.append(wire[at + 1 : after_label])
            length += count + 1
            at = after_label
        elif count >= 192:
            if at + 2 > end:
                raise WireError("pointer runs past its end")
            target = ((count & 0x3F) << 8) | wire[at + 1]
            if target >= lowest:
                raise WireError("compression pointer does not point backwards")
            if after < 0:
                after = at + 2
            lowest = at = target
        else:
            raise WireError("unknown label type")
    if length > MAX_NAME:  # checked once: pointers only go backwards, so the loop ends
        raise WireError("name longer than 255 bytes")
    return tuple(labels), (after if after >= 0 else at)


_HEADER = struct.Struct("!HHHHHH")
_QUESTION = struct.Struct("!HH")
_RR = struct.Struct("!HHIH")
# A pointer to the first question's name: most answers' owners are just that, and _name
# reads there exactly what it read for the question (from the same offset, to the same end).
_TO_FIRST = bytes([0xC0, _HEADER.size])


def parse(wire: bytes, asked: tuple[Labels, int] | None = None) -> Message:
    """The message in `wire`; WireError when it is not one (see the module's notes).

    `asked`: (name, end) when the caller knows the message's question, if it has one
    question, to be a name without a pointer (these labels, or their lower-case form)
    followed by its type and class, ending at `end`: it is not read again.
    """
    end = len(wire)
    if end < _HEADER.size:
        raise WireError("shorter than a header")
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    at = _HEADER.size
    questions = []
    first: Labels | None = None  # the first question's name
    if asked is not None and qdcount == 1:
        first, at = asked
        rdtype, rdclass = _QUESTION.unpack_from(wire, at - 4)
        questions.append(_new(Question, (first, rdtype, rdclass)))
        qdcount = 0
    for _ in range(qdcount):
        labels, at = _name(wire, at, end)
        if first is None:
            first = labels
        if at + 4 > end:
            raise WireError("question runs past the end")
        rdtype, rdclass = _QUESTION.unpack_from(wire, at)
        at += 4
        questions.append(_new(Question, (labels, rdtype, rdclass)))
    answers = []
    rcode = flags & 0xF
    seen_opt = False
    for section, count in ((1, ancount), (2, nscount), (3, arcount)):
        for _ in range(count):
            if first is not None and wire[at : at + 2] == _TO_FIRST:
                owner, at = first, at + 2  # what _name reads there, without reading it again
            else:
                owner, at = _name(wire, at, end)
            if at + 10 > end:
                raise WireError("record runs past the end")
            rdtype, rdclass, ttl, rdlength = _RR.unpack_from(wire, at)
            at += 10
            if ttl > 0x7FFFFFFF:
                ttl = 0  # RFC 2181 8, as dnspython reads it
            rdend = at + rdlength
            if rdend > end:
                raise WireError("rdata runs past the end")
            if rdtype in (TSIG, SIG):
                raise WireError("signed messages are not read here")
            if rdtype == OPT:
                if section != 3 or seen_opt or owner:
                    raise WireError("misplaced OPT record")
                seen_opt = True
                rcode |= (_RR.unpack_from(wire, at - 10)[2] >> 20) & 0xFF0
                _options(wire, at, rdend)
            elif section == 1 and rdtype == A and rdclass == IN:
                if rdlength != 4:
                    raise WireError("A rdata is not 4 bytes")
                address = socket.inet_ntoa(wire[at:rdend])
                answers.append(_new(AnswerRecord, (owner, rdtype, rdclass, ttl, address, None)))
            elif section == 1 and rdtype == AAAA and rdclass == IN:
                if rdlength != 16:
                    raise WireError("AAAA rdata is not 16 bytes")
                address = socket.inet_ntop(socket.AF_INET6, wire[at:rdend])
                answers.append(_new(AnswerRecord, (owner, rdtype, rdclass, ttl, address, None)))
            elif section == 1 and rdtype == CNAME:
                target, after = _name(wire, at, rdend)
                if after != rdend:
                    raise WireError("CNAME rdata longer than its name")
                answers.append(_new(AnswerRecord, (owner, rdtype, rdclass, ttl, None, target)))
            elif section == 1:
                answers.append(_new(AnswerRecord, (owner, rdtype, rdclass, ttl, None, None)))
            at = rdend
    if at != end:
        raise WireError("trailing bytes after the message")
    opcode = (flags >> 11) & 0xF
    return _new(Message, (ident, flags, opcode, rcode, tuple(questions), tuple(answers)))


_LONE = b"\x00\x01" + bytes(6)  # the counts of one question and no records
_ID_FLAGS = struct.Struct("!HH")


def lone_counts(wire: bytes) -> bool:
    """Whether the header counts one question and no records: a valid message of those
    counts ends with its question (question_end(wire) == len(wire))."""
    return wire[4:12] == _LONE


def lone_question(wire: bytes) -> tuple[int, int, Labels, int, int] | None:
    """(id, flags, labels, rdtype, rdclass) of a message of one question and no records
    (most queries), as parse() reads them but without building its Message; None for
    every other message, which parse() reads. WireError where parse() raises it."""
    if wire[4:12] != _LONE:
        return None
    labels, at = _name(wire, _HEADER.size, len(wire))
    if at + 4 != len(wire):
        raise WireError("the question does not end the message")
    ident, flags = _ID_FLAGS.unpack_from(wire)
    rdtype, rdclass = _QUESTION.unpack_from(wire, at)
    return ident, flags, labels, rdtype, rdclass


def question_end(wire: bytes) -> int:
    """Where the first question of a message ends (its bytes are wire[12:end])."""
    _labels, at = _name(wire, _HEADER.size, len(wire))
    if at + 4 > len(wire):
        raise WireError("question runs past the end")
    return at + 4


def _options(wire: bytes, at: int, end: int) -> None:
    """EDNS options must fill the OPT rdata exactly."""
    while at < end:
        if at + 4 > end:
            raise WireError("EDNS option header runs past the rdata")
        length = (wire[at + 2] << 8) | wire[at + 3]
        at += 4 + length
    if at != end:
        raise WireError("EDNS option runs past the rdata")
