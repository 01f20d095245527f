"""DNS answer snooping (SPEC 5.2): which (IP -> name) bindings an answer proves for the
agent that asked, and the per-agent cache that holds them while their TTL lasts.

Pure: the forwarder shell hands in wire bytes and the current (monotonic) time. It keeps
the queries each agent has outstanding and passes the matching one with each answer.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from clrk_worker_dialer._normalise import evidence_name, normalise_ip

MAX_CNAME_HOPS = 16
_ADDRESS_TYPES = {
    dns.rdatatype.A: frozenset({dns.rdatatype.A}),
    dns.rdatatype.AAAA: frozenset({dns.rdatatype.AAAA}),
    dns.rdatatype.ANY: frozenset({dns.rdatatype.A, dns.rdatatype.AAAA}),
}


@dataclass(frozen=True)
class DnsQuery:
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


def _parse(wire: bytes) -> dns.message.Message | None:
    try:
        # One RRset per record: dnspython would otherwise keep only the last of several
        # CNAMEs for an owner, hiding an ambiguous chain that must not be followed.
        return dns.message.from_wire(bytes(wire), one_rr_per_rrset=True)
    except Exception:
        # dnspython raises many types (FormError, ShortHeader, TrailingJunk, TSIG and
        # EDNS errors, ValueError...) and agents control these bytes: any failure is
        # simply "not a message", which must never take the forwarder down.
        return None


def _name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _question(message: dns.message.Message) -> DnsQuery | None:
    if len(message.question) != 1 or message.opcode() != dns.opcode.QUERY:
        return None
    q = message.question[0]
    return DnsQuery(message.id, _name_text(q.name), int(q.rdtype), int(q.rdclass))


def parse_query(wire: bytes) -> DnsQuery | None:
    """The query an agent sent, or None when it is not a single-question query."""
    message = _parse(wire)
    if message is None or message.flags & dns.flags.QR:
        return None
    return _question(message)


def bindings_from_answer(query: DnsQuery | bytes, answer: bytes) -> list[Binding]:
    """Bindings the answer proves for query; [] unless it is a NOERROR response to
    exactly that query (ID and question). Never raises."""
    if not isinstance(query, DnsQuery):
        query = parse_query(query)
    message = _parse(answer)
    if (
        query is None
        or message is None
        or not message.flags & dns.flags.QR
        or message.rcode() != dns.rcode.NOERROR
        or _question(message) != query
        or query.rdclass != dns.rdataclass.IN
    ):
        return []
    wanted = _ADDRESS_TYPES.get(query.rdtype, frozenset())
    records: dict[tuple[dns.name.Name, int], list[tuple[int, Any]]] = defaultdict(list)
    for rrset in message.answer:
        if rrset.rdclass == dns.rdataclass.IN:
            records[rrset.name, rrset.rdtype].extend((rrset.ttl, rdata) for rdata in rrset)

    # Walk the CNAME chain from the question name. chain[i] is the i-th owner's name;
    # link_ttls[i] is the TTL of the CNAME from chain[i] to chain[i + 1]. An address at
    # owner k is bound to every chain[j <= k] for as long as the links j..k all live.
    owner = message.question[0].name
    chain, link_ttls, seen = [_name_text(owner)], [], {owner}
    found: dict[tuple[str, str], int] = {}
    for hop in range(MAX_CNAME_HOPS + 1):
        if evidence_name(chain[-1]) is None:
            break  # not a hostname: it could never match a pattern, so bind nothing
        for rdtype in wanted:
            for ttl, rdata in records.get((owner, rdtype), ()):
                ip = normalise_ip(rdata.address)
                for j, name in enumerate(chain):
                    lifetime = min([ttl, *link_ttls[j:]])
                    found[ip, name] = max(lifetime, found.get((ip, name), lifetime))
        cnames = records.get((owner, dns.rdatatype.CNAME), [])
        # An owner has at most one CNAME target; several is not a chain to trust.
        if hop == MAX_CNAME_HOPS or len({rdata.target for _, rdata in cnames}) != 1:
            break
        owner = cnames[0][1].target
        if owner in seen:
            break  # a loop
        seen.add(owner)
        chain.append(_name_text(owner))
        link_ttls.append(min(ttl for ttl, _ in cnames))
    return [Binding(ip, name, ttl) for (ip, name), ttl in found.items()]


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
        ips = self._agents.setdefault(agent, OrderedDict())
        names = ips.pop(ip, {})
        ips[ip] = names
        self._drop_expired(names, now)
        names.pop(normal, None)  # re-insert: the latest answer is the freshest
        names[normal] = now + min(max(ttl, self.min_ttl), self.max_ttl)
        while len(names) > self.max_names_per_ip:
            del names[next(iter(names))]
        while len(ips) > self.max_ips:
            ips.popitem(last=False)

    def add(self, agent: Hashable, bindings: Iterable[Binding], now: float) -> None:
        for binding in bindings:
            self.bind(agent, binding.ip, binding.name, binding.ttl, now)

    def names_for(self, agent: Hashable, ip: str, now: float) -> frozenset[str]:
        """The names bound to ip for agent that are unexpired at now."""
        ips = self._agents.get(agent)
        try:
            ip = normalise_ip(ip)
        except ValueError:
            return frozenset()
        names = None if ips is None else ips.get(ip)
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
        for name in [n for n, expiry in names.items() if expiry <= now]:
            del names[name]
