"""Plain data in and out of decide(): the connection, the agent and the decision."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class Reason(enum.StrEnum):
    ALLOWED = "allowed"
    ALLOWED_DEFAULT = "allowed_default"
    POLICY = "policy"
    DENY_POLICY = "deny_policy"
    BLOCKED_ADDRESS = "blocked_address"
    SNI_MISMATCH = "sni_mismatch"
    SNI_UNVERIFIED = "sni_unverified"
    UNKNOWN_AGENT = "unknown_agent"
    NO_LISTENER = "no_listener"
    DNS_FILTERED = "dns_filtered"
    CREDENTIAL_MISUSE = "credential_misuse"  # Envoy's tripwire, never decide()'s

    @property
    def allows(self) -> bool:
        return self in (Reason.ALLOWED, Reason.ALLOWED_DEFAULT)

    @property
    def reportable(self) -> bool:
        """May Report mode let a connection denied for this reason through?  Every denial
        may, except the ones that protect the gateway itself or catch a stolen key."""
        return not self.allows and self not in ALWAYS_ENFORCED


ALWAYS_ENFORCED = frozenset(
    {Reason.BLOCKED_ADDRESS, Reason.UNKNOWN_AGENT, Reason.CREDENTIAL_MISUSE}
)
# Denials because of what the SNI says (sni_mismatch, and any later sni_* reason):
# Report mode lets them through on no name at all.
SNI_REASONS = frozenset(r for r in Reason if r.value.startswith("sni_"))


@dataclass(frozen=True, slots=True)
class Agent:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Connection:
    """What the dialer knows when it decides.

    `names` is D of SPEC 4: the names this agent's own DNS answers bound to `dst_ip`.
    `sni` is the TLS server name, when a ClientHello was read.  An SNI counts as a
    name only on TLS listeners, and only once it is in `names`: with `names` empty,
    decide() answers `sni_unverified` where the SNI alone would allow, and the dialer
    confirms it through DNS, binds it and decides again.
    """

    protocol: str  # "TCP" | "UDP"
    dst_ip: str
    dst_port: int
    names: frozenset[str] = frozenset()
    sni: str | None = None


class Decision(NamedTuple):
    # A NamedTuple, not a dataclass: decide() builds one per connection on the hot path.
    reason: Reason
    gateway: str
    agent: str | None
    default_policy: str
    route: str | None = None
    rule: int | None = None
    listener: str | None = None
    hostname: str | None = None
    deny_policy: str | None = None
    # Report mode: the allowed decision a reported denial goes through with (None: the
    # decision is enforced as it says).
    through: Decision | None = None

    @property
    def allowed(self) -> bool:
        return self.reason.allows

    @property
    def enforced(self) -> bool:
        """False for a denial Report mode lets through (it is recorded, not enforced)."""
        return self.through is None

    @property
    def effective(self) -> Decision:
        """What the data path carries out: this decision, or the one it goes through with."""
        return self if self.through is None else self.through

    @property
    def passes(self) -> bool:
        """The connection goes through: allowed, or a denial that is only reported."""
        return self.reason.allows or self.through is not None

    def to_json(self) -> dict[str, object]:
        return {
            "decision": "allow" if self.allowed else "deny",
            "reason": str(self.reason),
            "gateway": self.gateway,
            "agent": self.agent,
            "route": self.route,
            "rule": self.rule,
            "listener": self.listener,
            "hostname": self.hostname,
            "defaultPolicy": self.default_policy,
            "denyPolicy": self.deny_policy,
            "enforced": self.enforced,
            "through": None if self.through is None else _through_json(self.through),
        }


def _through_json(through: Decision) -> dict[str, object]:
    return {
        "reason": str(through.reason),
        "route": through.route,
        "rule": through.rule,
        "listener": through.listener,
        "hostname": through.hostname,
    }
