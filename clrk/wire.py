"""The wire contract between the dialer, Envoy and ext_proc, in one place.

- PROXY v2 TLV types (SPEC 6) and the field names Envoy's `proxy_protocol` filter
  stores them under (filter state, `tlv_location: FILTER_STATE`);
- the `x-clrk-*` request headers Envoy copies those TLVs into for ext_proc, and the
  access-log tags it writes them to;
- the chain facts the control plane gives ext_proc as gRPC initial metadata;
- the header of a deny answer.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Iterable
from dataclasses import dataclass


class TlvType(enum.IntEnum):
    AUTHORITY = 0x02  # the hostname that matched (PP2_TYPE_AUTHORITY)
    AGENT_NAMESPACE = 0xE1
    AGENT_NAME = 0xE2
    ROUTE = 0xE3  # 'namespace/name' of the route that allowed
    DENY_POLICY = 0xE4  # 'namespace/name', only when an L7 deny is forwarded
    CONNECTION_ID = 0xE5  # correlates dialer and Envoy records


# Where the proxy_protocol filter keeps the TLVs, and the field name of each.
TLV_FILTER_STATE_KEY = "envoy.network.proxy_protocol.tlv"
TLV_FIELDS: dict[int, str] = {
    TlvType.AUTHORITY: "authority",
    TlvType.AGENT_NAMESPACE: "agent_namespace",
    TlvType.AGENT_NAME: "agent_name",
    TlvType.ROUTE: "route",
    TlvType.DENY_POLICY: "deny_policy",
    TlvType.CONNECTION_ID: "connection_id",
}

HEADER_PREFIX = "x-clrk-"
# Request headers Envoy copies the connection's TLVs into for ext_proc (`header_mutation`).
HEADER_AGENT_NAMESPACE = "x-clrk-agent-namespace"
HEADER_AGENT_NAME = "x-clrk-agent-name"
HEADER_AUTHORITY = "x-clrk-authority"
HEADER_CONNECTION_ID = "x-clrk-connection-id"
HEADER_ROUTE = "x-clrk-tlv-route"
HEADER_DENY_POLICY = "x-clrk-tlv-deny-policy"
TLV_HEADERS: dict[str, str] = {  # request header -> TLV field
    HEADER_AGENT_NAMESPACE: TLV_FIELDS[TlvType.AGENT_NAMESPACE],
    HEADER_AGENT_NAME: TLV_FIELDS[TlvType.AGENT_NAME],
    HEADER_AUTHORITY: TLV_FIELDS[TlvType.AUTHORITY],
    HEADER_CONNECTION_ID: TLV_FIELDS[TlvType.CONNECTION_ID],
    HEADER_ROUTE: TLV_FIELDS[TlvType.ROUTE],
    HEADER_DENY_POLICY: TLV_FIELDS[TlvType.DENY_POLICY],
}
# The header of ext_proc's deny answer (and of the dialer's HTTP CONNECT refusal).
DENY_REASON_HEADER = "x-clrk-deny-reason"
# EgressCredential: the tripwire's routes are named `credential_misuse/<ns>/<name>` and
# the forwarding route of a credential's hosts `injected/<ns>/<name>[,...]`, so the
# access log's route name says which credential was misused or injected.
CREDENTIAL_MISUSE = "credential_misuse"
MISUSE_ROUTE_PREFIX = "credential_misuse/"
INJECTED_ROUTE_PREFIX = "injected/"

# Custom tags of the L4 access log (tcp_proxy -> clrk_extproc): a TLV under its field's
# name, and the gateway listener the chain serves, as a literal.
TAGGED_TLVS = (
    TlvType.AGENT_NAMESPACE,
    TlvType.AGENT_NAME,
    TlvType.AUTHORITY,
    TlvType.CONNECTION_ID,
    TlvType.ROUTE,
)
LISTENER_TAG = "listener"
# A TCP or TLS Passthrough listener logs at the listener, not in each chain's tcp_proxy:
# Envoy hashes and compares every chain's whole configuration on each listener update,
# and the log was most of it.  Envoy writes the listener's log when any connection of
# it ends, without a log type, so the entry also names the filter chain that took the
# connection: only a proxying chain's connection is a record; one a closing chain (a
# deny route, a blocked address, deny-all) or no chain took is not.
CHAIN_TAG = "chain"
CHAIN_NAME_FORMAT = "%FILTER_CHAIN_NAME%"
ROUTE_CHAIN_PREFIX = "route/"  # an allow route's chain; a deny route's is "deny/..."
ALLOW_ALL_CHAIN = "default/allow-all"

# The HTTP access log (L7 chains without ext_proc) also tags each entry with the chain's
# route and rule (literals), the request's method as the agent sent it, and the deny
# policy TLV: an entry with one was recorded by ext_proc (see clrk.policy.l7_chains).
CHAIN_ROUTE_TAG = "chain_route"
CHAIN_RULE_TAG = "chain_rule"
METHOD_TAG = "method"
HTTP_TAGGED_TLVS = (*TAGGED_TLVS, TlvType.DENY_POLICY)


def tlv_tag(tlv: TlvType) -> str:
    """The access-log custom tag that carries a TLV."""
    return TLV_FIELDS[tlv]


def tlv_format(field: str) -> str:
    """Envoy's formatter for one TLV field (writes "-" when the connection had none)."""
    return f"%FILTER_STATE({TLV_FILTER_STATE_KEY}:FIELD:{field})%"


def proxying_chain(name: str | None) -> bool:
    """True for the chains of a TCP or TLS Passthrough listener that proxy."""
    return name is not None and (name.startswith(ROUTE_CHAIN_PREFIX) or name == ALLOW_ALL_CHAIN)


@dataclass(frozen=True)
class ChainFacts:
    """What ext_proc must know about a chain that Envoy cannot tell it per request.

    Sent as gRPC initial metadata, one `x-clrk-*` key per fact.  Metadata values must be
    printable ASCII, and Envoy reads each one as a format string (`%...%` commands), so
    no value may hold a `%`: the message travels base64url-encoded (UTF-8, unpadded).
    """

    gateway: str
    listener: str
    route: str | None = None  # "namespace/name"
    rule: int | None = None
    deny_policy: str | None = None  # "namespace/name"
    status: int | None = None
    message: str | None = None

    def metadata(self) -> list[tuple[str, str]]:
        out = []
        for name in FACT_KEYS:
            value = getattr(self, name)
            if value is None:
                continue
            text = _encode(value) if name == "message" else str(value)
            out.append((FACT_PREFIX + name.replace("_", "-"), text))
        return out

    @classmethod
    def from_metadata(cls, pairs: Iterable[tuple[str, str | bytes]]) -> ChainFacts:
        """ValueError when the gateway is missing or a number is not one."""
        raw: dict[str, str] = {}
        for key, value in pairs:
            if isinstance(value, bytes):
                value = value.decode("ascii", errors="replace")
            if key.startswith(FACT_PREFIX):
                raw[key[len(FACT_PREFIX) :].replace("-", "_")] = value
        if not raw.get("gateway"):
            raise ValueError("no chain metadata (x-clrk-gateway)")
        values: dict[str, object] = {"gateway": raw["gateway"], "listener": raw.get("listener", "")}
        for name in ("route", "deny_policy"):
            if raw.get(name):
                values[name] = raw[name]
        for name in ("rule", "status"):
            if name in raw:
                if not raw[name].isdigit() or len(raw[name]) > 6:
                    raise ValueError(f"chain metadata {name}: not a number: {raw[name]!r}")
                values[name] = int(raw[name])
        if "message" in raw:
            values["message"] = _decode(raw["message"])
        return cls(**values)  # type: ignore[arg-type]


FACT_PREFIX = "x-clrk-"
FACT_KEYS = ("gateway", "listener", "route", "rule", "deny_policy", "status", "message")


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=")


def _decode(text: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise ValueError("chain metadata message: not base64url") from None
    return raw.decode("utf-8", errors="replace")
