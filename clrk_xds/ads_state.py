"""State-of-the-world ADS protocol state of one stream (pure: no gRPC, no asyncio).

The shell (ads.py) feeds requests and snapshot changes in; this decides what to send
and how to read each request: a first request, an ACK, a NACK, or a stale one.

- Nonces are per stream; a request whose response_nonce is not the last one sent for
  its type answers a response that has been superseded, and is ignored.
- ACK: the last nonce and no error_detail.  NACK: error_detail set.  Neither causes a
  resend: a type is sent again only when its version in the snapshot changes (or the
  requested resource names change), so a rejected version is never sent in a loop.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from clrk_xds.consistency import CLUSTER, LISTENER
from clrk_xds.snapshot import Snapshot

# Listeners and clusters are always fetched whole (wildcard); other types by name.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})


@dataclass(frozen=True)
class Request:
    type_url: str
    version_info: str = ""
    response_nonce: str = ""
    resource_names: tuple[str, ...] = ()
    node_id: str = ""
    error: str | None = None  # error_detail.message when error_detail is set


@dataclass(frozen=True)
class Response:
    type_url: str
    version: str
    nonce: str
    resources: Mapping[str, bytes]


class Kind(enum.StrEnum):
    INITIAL = "initial"  # no nonce: a new subscription (or a reconnect)
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"
    UNKNOWN_TYPE = "unknown-type"  # a type the server does not serve


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    type_url: str
    version: str  # ACK: the version acknowledged; NACK: the version rejected
    message: str = ""


@dataclass
class _TypeState:
    names: tuple[str, ...] = ()
    sent_version: str | None = None
    sent_names: tuple[str, ...] | None = None
    nonce: str = ""


@dataclass
class StreamState:
    served_types: frozenset[str]
    node_id: str = ""
    _types: dict[str, _TypeState] = field(default_factory=dict)
    _counter: int = 0

    def on_request(self, req: Request, snapshot: Snapshot | None) -> tuple[Verdict, list[Response]]:
        if not self.node_id and req.node_id:
            self.node_id = req.node_id  # only the first request must carry the node
        if req.type_url not in self.served_types:
            return Verdict(Kind.UNKNOWN_TYPE, req.type_url, req.version_info), []
        st = self._types.get(req.type_url)
        if req.response_nonce:
            if st is None or req.response_nonce != st.nonce:
                return Verdict(Kind.STALE, req.type_url, req.version_info), []
            if req.error is not None:
                verdict = Verdict(Kind.NACK, req.type_url, st.sent_version or "", req.error)
            else:
                verdict = Verdict(Kind.ACK, req.type_url, req.version_info)
        else:
            if st is None:
                st = self._types[req.type_url] = _TypeState()
            # A reconnecting Envoy says which version it holds: do not resend that one.
            st.sent_version = req.version_info or None
            st.sent_names = tuple(sorted(req.resource_names))
            verdict = Verdict(Kind.INITIAL, req.type_url, req.version_info)
        st.names = tuple(sorted(req.resource_names))
        return verdict, self._due(req.type_url, snapshot)

    def on_snapshot(self, snapshot: Snapshot) -> list[Response]:
        out: list[Response] = []
        for type_url in sorted(self._types):
            out.extend(self._due(type_url, snapshot))
        return out

    def _due(self, type_url: str, snapshot: Snapshot | None) -> list[Response]:
        st = self._types[type_url]
        if snapshot is None:
            return []
        version = snapshot.version_of(type_url)
        if version == st.sent_version and st.names == st.sent_names:
            return []
        named = snapshot.named(type_url)
        if type_url in WILDCARD_TYPES or not st.names:
            chosen = dict(named)
        else:
            chosen = {n: named[n] for n in st.names if n in named}
        self._counter += 1
        st.nonce = str(self._counter)
        st.sent_version = version
        st.sent_names = st.names
        return [Response(type_url, version, st.nonce, chosen)]
