"""One ext_proc stream = one HTTP request/response exchange, as a pure state machine.

`Exchange.request(headers, facts)` decides: the deny answer (and the deny record) for a
deny-policy chain, else continue.  `Exchange.response(headers)` gives the allow record
once the upstream's status is known.  Headers are (name, value) pairs as Envoy sends
them (pseudo-headers included); the `x-clrk-*` ones carry the connection's PROXY TLVs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from clrk.policy import Agent
from clrk.records.schema import Record, http_request
from clrk.wire import (
    CREDENTIAL_MISUSE,
    DENY_REASON_HEADER,
    HEADER_AGENT_NAME,
    HEADER_AGENT_NAMESPACE,
    HEADER_AUTHORITY,
    HEADER_CONNECTION_ID,
    HEADER_DENY_POLICY,
    HEADER_PREFIX,
    ChainFacts,
)
from clrk_extproc.deny import DenyAnswer, deny_answer

MAX_VALUE = 4096  # longer header values are cut in records (a path can be huge)


def tlv(headers: dict[str, str], name: str) -> str | None:
    """A TLV header's value; the formatter writes "-" (or nothing) for an absent TLV."""
    value = headers.get(name, "")
    return None if value in ("", "-") else value


@dataclass
class Exchange:
    facts: ChainFacts | None = None
    method: str = ""
    authority: str = ""
    path: str = ""
    tlvs: dict[str, str] = field(default_factory=dict)
    start_ns: int = 0
    denied: bool = False
    recorded: bool = False

    def request(
        self, headers: Iterable[tuple[str, str]], facts: ChainFacts, now_ns: int | None = None
    ) -> tuple[DenyAnswer | None, Record | None]:
        """(answer, record): an answer and the deny record for a deny-policy chain,
        (None, None) to let the request go on."""
        plain = {k.lower(): v for k, v in headers}
        self.facts = facts
        self.method = plain.get(":method", "")[:MAX_VALUE]
        self.authority = plain.get(":authority", plain.get("host", ""))[:MAX_VALUE]
        self.path = plain.get(":path", "")[:MAX_VALUE]
        self.tlvs = {k: v for k, v in plain.items() if k.startswith(HEADER_PREFIX)}
        self.start_ns = now_ns if now_ns is not None else time.time_ns()
        tagged = tlv(self.tlvs, HEADER_DENY_POLICY)
        if facts.deny_policy is None and tagged:
            # The dialer tagged the connection with a deny policy (TLV 0xE4) but Envoy
            # chose an allow chain (its policy may lag the dialer's): the denial wins.
            facts = replace(facts, deny_policy=tagged, status=None, message=None)
            self.facts = facts
        answer = deny_answer(facts)
        if answer is None:
            return None, None
        self.denied = self.recorded = True
        return answer, self._record(answer.status, self.start_ns, denied=True)

    def response(self, headers: Iterable[tuple[str, str]], now_ns: int | None = None):
        """The allow record, once; None when there is nothing (left) to record.  The
        tripwire's answer is recorded from Envoy's access log, not here (Envoy's
        routes strip an upstream's `x-clrk-*` response headers, so only Envoy can say
        so)."""
        if self.facts is None or self.recorded:
            return None
        plain = {k.lower(): v for k, v in headers}
        self.recorded = True
        if plain.get(DENY_REASON_HEADER) == CREDENTIAL_MISUSE:
            return None
        status_text = plain.get(":status", "")
        status = int(status_text) if status_text.isdigit() and len(status_text) == 3 else 0
        end = now_ns if now_ns is not None else time.time_ns()
        return self._record(status, end)

    def _record(self, status: int, end_ns: int, denied: bool = False) -> Record:
        facts = self.facts
        assert facts is not None
        namespace = tlv(self.tlvs, HEADER_AGENT_NAMESPACE) or ""
        name = tlv(self.tlvs, HEADER_AGENT_NAME) or ""
        return http_request(
            gateway=facts.gateway,
            agent=Agent(namespace, name) if namespace or name else None,
            route=facts.route,
            rule=facts.rule,
            listener=facts.listener,
            method=self.method,
            authority=self.authority,
            path=self.path,
            status=status,
            dst_name=tlv(self.tlvs, HEADER_AUTHORITY),
            deny_policy=(facts.deny_policy or "") if denied else None,
            start_ns=self.start_ns,
            end_ns=end_ns,
            connection_id=tlv(self.tlvs, HEADER_CONNECTION_ID),
        )
