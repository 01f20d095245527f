"""DNS answer snooping (SPEC 5.2): which (IP -> name) bindings an answer proves for the
agent that asked, and the per-agent cache that holds them while their TTL lasts.

Pure: the forwarder shell hands in wire bytes and the current (monotonic) time. It keeps
the queries each agent has outstanding and passes the matching one with each answer.
"""

from __future__ import annotations

import socket
import struct
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import NamedTuple

from clrk_worker_dialer import dns_wire
from clrk_worker_dialer._normalise import evidence_name, is_evidence_name, normalise_ip
from clrk_worker_dialer.dns_wire import AAAA, CNAME, QR, A, Labels, key, name_text

MAX_CNAME_HOPS = 16
ANY, IN, QUERY, NOERROR = 255, 1, 0, 0
_ADDRESS_TYPES = {
    A: frozenset({A}),
    AAAA: frozenset({AAAA}),
    ANY: frozenset({A, AAAA}),
}


class DnsQuery(NamedTuple):
    """The identity of a query: what its answer must echo. name is lower-case text
    without the final dot (dnspython's escaped form when it is not a plain hostname)."""

    id: int
    name: str
    rdtype: int
    rdclass: int


class Binding(NamedTuple):
    ip: str
    name: str
    ttl: int  # seconds, as the answer gave it (the cache clamps it)


_new = tuple.__new__  # builds a named tuple without its Python-level constructor (faster)


def _parse(wire: bytes, asked: tuple[Labels, int] | None = None) -> dns_wire.Message | None:
    try:
        return dns_wire.parse(bytes(wire), asked)
    except (dns_wire.WireError, TypeError):
        return None  # agents control these bytes: "not a message", never a crash


def _question(message: dns_wire.Message) -> DnsQuery | None:
    if len(message.questions) != 1 or message.opcode != QUERY:
        return None
    q = message.questions[0]
    return _new(DnsQuery, (message.id, name_text(q.labels).lower(), q.rdtype, q.rdclass))


class Echo(NamedTuple):
    """A query of the usual shape as read_query read it: one question and nothing else,
    its name a plain hostname written without a pointer.  An answer that repeats the
    query's ID and question bytes (both kept here, from the one reading that made
    `query`) answers exactly that query: bindings_from_reply does not read it again."""

    query: DnsQuery
    head: bytes  # the query's ID
    question: bytes  # the query's bytes after its header: the question, which ends it


def read_query(wire: bytes) -> tuple[DnsQuery, Echo | None] | None:
    """parse_query(wire) and, when the query has the usual shape, its Echo; None when it
    is not a single-question query."""
    try:
        wire = bytes(wire)
        lone = dns_wire.lone_question(wire)
    except (dns_wire.WireError, TypeError):
        return None
    if lone is None:  # not the usual shape
        query = _parse_query_whole(wire)
        return None if query is None else (query, None)
    ident, flags, labels, rdtype, rdclass = lone
    if flags & QR or (flags >> 11) & 0xF != QUERY:
        return None
    name = name_text(labels).lower()
    query = _new(DnsQuery, (ident, name, rdtype, rdclass))
    # A plain hostname of n bytes is written in n + 2 without a pointer; with one it
    # never is (pointed-to labels add 2 or more bytes each, the pointer 1 more than the
    # root): the length tells.
    if len(wire) != 12 + len(name) + 6 or not is_evidence_name(name):
        return query, None
    return query, _new(Echo, (query, wire[:2], wire[12:]))


def parse_query(wire: bytes) -> DnsQuery | None:
    """The query an agent sent, or None when it is not a single-question query."""
    read = read_query(wire)
    return None if read is None else read[0]


def _parse_query_whole(wire: bytes) -> DnsQuery | None:
    """parse_query by way of the whole message: any shape of query."""
    message = _parse(wire)
    if message is None or message.flags & QR:
        return None
    return _question(message)


def bindings_from_answer(query: DnsQuery | bytes, answer: bytes) -> list[Binding]:
    """Bindings the answer proves for query; [] unless it is a NOERROR response to
    exactly that query (ID and question). Never raises."""
    if not isinstance(query, DnsQuery):
        query = parse_query(query)
    if query is None or query.rdclass != IN:
        return []
    message = _parse(answer)
    if (
        message is None
        or not message.flags & QR
        or message.rcode != NOERROR
        or message.id != query.id
        or message.opcode != QUERY
        or len(message.questions) != 1
    ):
        return []
    question = message.questions[0]
    if question.rdtype != query.rdtype or question.rdclass != IN:
        return []
    # name_text of lower-cased labels is the lower-cased text: the question's name.
    owner = key(question.labels)
    if name_text(owner) != query.name:
        return []
    return _walk(query, message, owner)


def bindings_for(query: DnsQuery, echo: Echo | None, answer: bytes) -> list[Binding]:
    """What `answer` binds for `query`, read_query's reading of the query: through its
    `echo` when it has the usual shape, else by the whole reading."""
    if echo is None:
        return bindings_from_answer(query, answer)
    return bindings_from_reply(echo, answer)


def bindings_from_reply(echo: Echo, answer: bytes) -> list[Binding]:
    """bindings_from_answer(echo.query, answer), without reading the answer's question
    again when it repeats the query's ID and question bytes (as the forwarder's answers
    do): the query's one reading (read_query) showed its question is a plain hostname
    written without a pointer, which ends the query."""
    end = 12 + len(echo.question)
    if answer[12:end] != echo.question or answer[:2] != echo.head:
        return bindings_from_answer(echo.query, answer)
    return _echoed(echo.query, answer, end)


def _echoed(query: DnsQuery, answer: bytes, end: int) -> list[Binding]:
    """The bindings of an answer whose ID and question, ending at `end`, are those of
    `query`, a plain hostname written without a pointer."""
    if query.rdclass != IN:
        return []
    bindings = _addresses_of_question(query, answer, end)
    if bindings is not None:
        return bindings
    # No label of a plain hostname holds a dot (name_text would escape it): its labels
    # are the lower-cased wire labels, key(question.labels) of the answer.
    owner = tuple(query.name.encode().split(b"."))
    message = _parse(answer, (owner, end))
    if (
        message is None
        or not message.flags & QR
        or message.rcode != NOERROR
        or message.opcode != QUERY
        or len(message.questions) != 1
    ):
        return []
    return _walk(query, message, owner, named=True)


_ONE_ADDRESS_TYPE = frozenset({A, AAAA})
_HEADER = struct.Struct("!HHHHHH")
# A record owned by a pointer to the question's name (0xC00C, right after the header):
# the pointer, type, class, TTL and rdata length.
_RECORD_AT_QUESTION = struct.Struct("!HHHIH")
_TO_QUESTION = 0xC00C
_ntoa, _ntop = socket.inet_ntoa, socket.inet_ntop


def _addresses_of_question(query: DnsQuery, answer: bytes, end: int) -> list[Binding] | None:
    """What _walk binds for an answer to an A or AAAA query whose question is the query's
    own (checked by the caller; it ends at `end`) when the answer holds nothing but A and
    AAAA records of class IN owned by a pointer to that question's name, and no other
    section: its addresses of the asked type, each with its longest TTL, in one pass.
    None for every other answer (a CNAME, another type, an OPT record, any doubt), which
    the whole reading takes."""
    asked = query.rdtype
    _id, flags, qdcount, count, nscount, arcount = _HEADER.unpack_from(answer)
    if (
        asked not in _ONE_ADDRESS_TYPE  # ANY: _walk's order is by type, not by record
        or flags & 0xF80F != 0x8000  # a response (QR) of opcode QUERY, no error (no OPT)
        or qdcount != 1
        or nscount
        or arcount
    ):
        return None
    size, at = len(answer), end
    found: dict[str, int] = {}
    for _ in range(count):
        rdata = at + 12
        if rdata > size:
            return None
        owner, rdtype, rdclass, ttl, rdlength = _RECORD_AT_QUESTION.unpack_from(answer, at)
        at = rdata + rdlength
        if owner != _TO_QUESTION or rdclass != IN or at > size:
            return None
        if rdtype == A and rdlength == 4:
            address = _ntoa(answer[rdata:at])
        elif rdtype == AAAA and rdlength == 16:
            address = _ntop(socket.AF_INET6, answer[rdata:at])
        else:
            return None
        if rdtype == asked:
            if ttl > 0x7FFFFFFF:
                ttl = 0  # RFC 2181 8, as dns_wire reads it
            ip = normalise_ip(address)
            found[ip] = max(ttl, found.get(ip, ttl))
    if at != size:
        return None
    name = query.name
    return [_new(Binding, (ip, name, ttl)) for ip, ttl in found.items()]


def _walk(
    query: DnsQuery, message: dns_wire.Message, owner: Labels, named: bool = False
) -> list[Binding]:
    """The bindings of an answer to query whose question's name, lower-cased, is owner
    (`named`: query.name is known to be a hostname already)."""
    question = message.questions[0]
    wanted = _ADDRESS_TYPES.get(query.rdtype, frozenset())
    # Each record on its own: several CNAMEs for one owner is an ambiguous chain that
    # must not be followed.
    records: dict[tuple[Labels, int], list[dns_wire.AnswerRecord]] = {}
    for rr in message.answers:
        if rr.rdclass == IN:
            # Most owners are the question's name (a pointer to it): its key is known.
            rr_key = owner if rr.owner == question.labels else key(rr.owner)
            records.setdefault((rr_key, rr.rdtype), []).append(rr)

    # Walk the CNAME chain from the question name. chain[i] is the i-th owner's name;
    # link_ttls[i] is the TTL of the CNAME from chain[i] to chain[i + 1]. An address at
    # owner k is bound to every chain[j <= k] for as long as the links j..k all live.
    chain, link_ttls, seen = [query.name], [], {owner}
    found: dict[tuple[str, str], int] = {}
    for hop in range(MAX_CNAME_HOPS + 1):
        if (hop or not named) and evidence_name(chain[-1]) is None:
            break  # not a hostname: it could never match a pattern, so bind nothing
        for rdtype in wanted:
            for rr in records.get((owner, rdtype), ()):
                assert rr.address is not None
                ip = normalise_ip(rr.address)
                for j, name in enumerate(chain):
                    lifetime = min([rr.ttl, *link_ttls[j:]])
                    found[ip, name] = max(lifetime, found.get((ip, name), lifetime))
        cnames = records.get((owner, CNAME))
        if not cnames or hop == MAX_CNAME_HOPS:
            break
        # An owner has at most one CNAME target; several is not a chain to trust.
        targets = {key(rr.target or ()) for rr in cnames}
        if len(targets) != 1:
            break
        (owner,) = targets
        if owner in seen:
            break  # a loop
        seen.add(owner)
        chain.append(name_text(owner))
        link_ttls.append(min(rr.ttl for rr in cnames))
    return [_new(Binding, (ip, name, ttl)) for (ip, name), ttl in found.items()]


class BindingCache:
    """Per-agent (IP -> names) bindings with TTLs, bounded by per-agent LRU.

    Each agent has its own table, so agent B never sees names that agent A resolved.
    Time is passed in (`now`, seconds on a monotonic clock) to keep the cache pure.
    """

    def __init__(
        self,
        *,
        max_ips: int = 4096,
        max_names_per_ip: int = 16,
        min_ttl: float = 5.0,
        max_ttl: float = 3600.0,
    ) -> None:
        if max_ips < 1 or max_names_per_ip < 1:
            raise ValueError("cache bounds must be at least 1")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError(f"need 0 <= min_ttl <= max_ttl, got {min_ttl} and {max_ttl}")
        self.max_ips, self.max_names_per_ip = max_ips, max_names_per_ip
        self.min_ttl, self.max_ttl = min_ttl, max_ttl
        # agent -> ip (least recently used first) -> name (oldest first) -> expiry
        self._agents: dict[Hashable, OrderedDict[str, dict[str, float]]] = {}

    def bind(self, agent: Hashable, ip: str, name: str, ttl: float, now: float) -> None:
        """Bind name to ip for agent; an invalid ip or name binds nothing."""
        try:
            ip = normalise_ip(ip)
        except ValueError:
            return
        normal = evidence_name(name)
        if normal is None:
            return
        self._put(agent, ip, normal, ttl, now)

    def add(self, agent: Hashable, bindings: Iterable[Binding], now: float) -> None:
        for binding in bindings:
            self.bind(agent, binding.ip, binding.name, binding.ttl, now)

    def add_snooped(self, agent: Hashable, bindings: Iterable[Binding], now: float) -> None:
        """add() for what bindings_from_answer returned: its addresses and names are in
        normal form already (its tests hold it to that), so they are not normalised again
        on every answer."""
        for ip, name, ttl in bindings:
            self._put(agent, ip, name, ttl, now)

    def _put(self, agent: Hashable, ip: str, normal: str, ttl: float, now: float) -> None:
        ips = self._agents.get(agent)
        if ips is None:
            ips = self._agents[agent] = OrderedDict()
        names = ips.get(ip)
        if names is None:
            names = ips[ip] = {}
        else:
            ips.move_to_end(ip)
            self._drop_expired(names, now)
        names.pop(normal, None)  # re-insert: the latest answer is the freshest
        names[normal] = now + min(max(ttl, self.min_ttl), self.max_ttl)
        while len(names) > self.max_names_per_ip:
            del names[next(iter(names))]
        while len(ips) > self.max_ips:
            ips.popitem(last=False)

    def names_for(self, agent: Hashable, ip: str, now: float) -> frozenset[str]:
        """The names bound to ip for agent that are unexpired at now."""
        ips = self._agents.get(agent)
        if ips is None:  # no answer bound anything for this agent: no need to parse ip
            return frozenset()
        try:
            ip = normalise_ip(ip)
        except ValueError:
            return frozenset()
        names = ips.get(ip)
        if names is None:
            return frozenset()
        self._drop_expired(names, now)
        if not names:
            del ips[ip]
            return frozenset()
        ips.move_to_end(ip)
        return frozenset(names)

    def forget(self, agent: Hashable) -> None:
        """Drop every binding of an agent that is gone."""
        self._agents.pop(agent, None)

    @staticmethod
    def _drop_expired(names: dict[str, float], now: float) -> None:
        if names and min(names.values()) > now:
            return  # none expired: the common case, found without a list or a loop in Python
        for name in [n for n, expiry in names.items() if expiry <= now]:
            del names[name]
