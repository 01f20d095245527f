"""The HTTP answer to a request on a deny-policy chain (SPEC 7), as plain data."""

from __future__ import annotations

from dataclasses import dataclass

from clrk.policy import Reason
from clrk.wire import DENY_REASON_HEADER, ChainFacts

DEFAULT_STATUS = 403
DENY_REASON = str(Reason.DENY_POLICY)


@dataclass(frozen=True)
class DenyAnswer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


def default_body(policy: str) -> str:
    return f"blocked by egress deny policy {policy}\n"


def deny_answer(facts: ChainFacts) -> DenyAnswer | None:
    """The ImmediateResponse content for a chain with a deny policy; None otherwise.

    A status outside 400..599 (the API never produces one) falls back to 403: an answer
    that is not an error must never stand in for a denial.
    """
    if facts.deny_policy is None:
        return None
    status = facts.status if facts.status is not None and 400 <= facts.status <= 599 else None
    message = facts.message if facts.message else default_body(facts.deny_policy)
    headers = (
        ("content-type", "text/plain; charset=utf-8"),
        (DENY_REASON_HEADER, DENY_REASON),
    )
    return DenyAnswer(status or DEFAULT_STATUS, message.encode(), headers)
