"""What one decision record says (SPEC 8), as plain data: no OpenTelemetry here.

A Record becomes one span and one log record (`clrk_runtime.records_writer`).  One
builder per record kind owns its attribute names, and production and tests use the same
ones, so the dialer, the ext_proc service and `clrk records` agree on them:
`dial_denied` and `dns_denied` (the dialer), `tcp_allowed` (Envoy's access log) and
`http_request` (ext_proc); `spool_full` from any service's record writer.
Attribute names follow OpenTelemetry semantic conventions where one exists
(`network.peer.*`, `dns.question.name`, `http.request.method`, ...) and use the
`clrk.` prefix otherwise.  Optional facts are left out rather than written empty,
except the ones SPEC 8 lists for a denial, which are always present.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from clrk.policy.model import Agent, Decision, Reason

AttrValue = str | int | bool
Severity = Literal["WARN", "INFO"]

DIAL_DENIED = "egress.dial.denied"
DNS_DENIED = "egress.dns.denied"
TCP_ALLOWED = "egress.tcp"
HTTP_REQUEST = "egress.http"
SPOOL_FULL = "clrk.records.spool_full"

DENY_REASON = "clrk.egress.deny_reason"
# On every denial: false when Report mode let the connection (or DNS query) through.
ENFORCED = "clrk.egress.enforced"
REASON = "clrk.egress.reason"
GATEWAY = "clrk.egress.gateway"
ROUTE = "clrk.egress.route"
RULE = "clrk.egress.rule"
LISTENER = "clrk.egress.listener"
DENY_POLICY = "clrk.egress.deny_policy"
DEFAULT_POLICY = "clrk.egress.policy.default"
AGENT_NAME = "agent.name"
AGENT_NAMESPACE = "agent.namespace"
DST_NAME = "clrk.dst.name"
CONNECTION_ID = "clrk.connection.id"
CLIENT_ADDRESS = "client.address"
PEER_ADDRESS = "network.peer.address"
PEER_PORT = "network.peer.port"
TRANSPORT = "network.transport"
SNI = "tls.client.server_name"
BYTES_UP = "clrk.egress.bytes_up"
BYTES_DOWN = "clrk.egress.bytes_down"
DURATION_MS = "clrk.egress.duration_ms"
DNS_QUESTION_NAME = "dns.question.name"
DNS_QUESTION_TYPE = "clrk.dns.question.type"
HTTP_METHOD = "http.request.method"
HTTP_AUTHORITY = "clrk.http.authority"
HTTP_PATH = "url.path"
HTTP_STATUS = "http.response.status_code"
CREDENTIAL = "clrk.egress.credential"  # the EgressCredential's name, never its value
SPOOL_DIRECTORY = "clrk.records.spool.directory"
SPOOL_MAX_BYTES = "clrk.records.spool.max_bytes"
SPOOL_IS_FULL = "clrk.records.spool.full"
RECORDS_DROPPED = "clrk.records.dropped"


@dataclass(frozen=True, slots=True)
class Record:
    """One decision, ready to export.  Times are Unix nanoseconds; None means "now"."""

    name: str
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    severity: Severity = "INFO"
    error: bool = False
    start_ns: int | None = None
    end_ns: int | None = None


def _transport(value: str) -> str:
    lowered = value.lower()
    if lowered not in ("tcp", "udp"):
        raise ValueError(f"transport must be tcp or udp, not {value!r}")
    return lowered


def _agent_attrs(agent: Agent | None) -> dict[str, AttrValue]:
    # SPEC 8 wants both keys on every denial; an unknown agent is the empty string.
    if agent is None:
        return {AGENT_NAME: "", AGENT_NAMESPACE: ""}
    return {AGENT_NAME: agent.name, AGENT_NAMESPACE: agent.namespace}


def _route_attrs(decision: Decision) -> dict[str, AttrValue]:
    out: dict[str, AttrValue] = {}
    if decision.route is not None:
        out[ROUTE] = decision.route
        if decision.rule is not None:
            out[RULE] = decision.rule
    if decision.listener is not None:
        out[LISTENER] = decision.listener
    if decision.deny_policy is not None:
        out[DENY_POLICY] = decision.deny_policy
    return out


def _optional(out: dict[str, AttrValue], key: str, value: AttrValue | None) -> None:
    if value is not None:
        out[key] = value


def _dns_name(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _connection_optionals(
    attrs: dict[str, AttrValue], connection_id: str | None, src: str | None, sni: str | None
) -> None:
    _optional(attrs, CONNECTION_ID, connection_id)
    _optional(attrs, CLIENT_ADDRESS, src)
    _optional(attrs, SNI, sni)


def dial_denied(
    decision: Decision,
    *,
    agent: Agent | None,
    dst_ip: str,
    dst_port: int,
    transport: str,
    dst_name: str | None,
    connection_id: str | None = None,
    src: str | None = None,
    sni: str | None = None,
    time_ns: int | None = None,
) -> Record:
    """`egress.dial.denied` for a refused TCP connection or dropped UDP flow (SPEC 5.3).

    `dst_name` is the best name known without the decision (a DNS-bound name, the SNI,
    the proxy target); the name the decision matched wins over it.
    """
    if decision.allowed:
        raise ValueError(f"dial_denied() needs a denial, got reason {decision.reason}")
    attrs: dict[str, AttrValue] = {
        DENY_REASON: str(decision.reason),
        ENFORCED: decision.enforced,
        GATEWAY: decision.gateway,
        **_agent_attrs(agent),
        DST_NAME: decision.hostname or dst_name or "",
        PEER_ADDRESS: dst_ip,
        PEER_PORT: dst_port,
        TRANSPORT: _transport(transport),
        DEFAULT_POLICY: decision.default_policy,
        **_route_attrs(decision),
    }
    _connection_optionals(attrs, connection_id, src, sni)
    return Record(DIAL_DENIED, attrs, "WARN", decision.enforced, time_ns, time_ns)


def dns_denied(
    decision: Decision,
    *,
    agent: Agent | None,
    query_name: str,
    query_type: str | int,
    peer_address: str,
    peer_port: int,
    transport: str = "udp",
    src: str | None = None,
    time_ns: int | None = None,
    enforced: bool = True,
) -> Record:
    """`egress.dns.denied`: a query answered NXDOMAIN locally under `dns.mode: Filtered`
    (`enforced=False`: a Report gateway forwarded it).

    `decision` supplies the gateway and default policy (build one with
    Reason.DNS_FILTERED); the reason is always `dns_filtered`.  The peer is the DNS
    server the agent addressed.  The query name is also `clrk.dst.name`, so one query by
    name finds both dial and DNS denials.
    """
    name = _dns_name(query_name)
    attrs: dict[str, AttrValue] = {
        DENY_REASON: str(Reason.DNS_FILTERED),
        ENFORCED: enforced,
        GATEWAY: decision.gateway,
        **_agent_attrs(agent),
        DNS_QUESTION_NAME: name,
        DNS_QUESTION_TYPE: query_type,
        DST_NAME: name,
        PEER_ADDRESS: peer_address,
        PEER_PORT: peer_port,
        TRANSPORT: _transport(transport),
        DEFAULT_POLICY: decision.default_policy,
    }
    _optional(attrs, CLIENT_ADDRESS, src)
    return Record(DNS_DENIED, attrs, "WARN", enforced, time_ns, time_ns)


def _allowed_reason(route: str | None) -> str:
    # Envoy's records know the route the dialer sent, not the decision: no route means
    # the gateway's allow-all default let the connection through.
    return str(Reason.ALLOWED if route else Reason.ALLOWED_DEFAULT)


def tcp_allowed(
    *,
    gateway: str,
    agent: Agent | None,
    route: str | None,
    listener: str | None,
    dst_ip: str,
    dst_port: int,
    dst_name: str | None,
    bytes_up: int,
    bytes_down: int,
    start_ns: int | None,
    end_ns: int | None,
    duration_ms: int | None = None,
    transport: str = "tcp",
    connection_id: str | None = None,
    src: str | None = None,
) -> Record:
    """`egress.tcp`: an allowed L4 connection through Envoy, written when it closes
    (from Envoy's access log).  `duration_ms` defaults to end - start."""
    if duration_ms is None:
        duration_ms = max(0, (end_ns or 0) - (start_ns or 0)) // 1_000_000
    attrs: dict[str, AttrValue] = {
        REASON: _allowed_reason(route),
        GATEWAY: gateway,
        **_agent_attrs(agent),
        DST_NAME: dst_name or "",
        PEER_ADDRESS: dst_ip,
        PEER_PORT: dst_port,
        TRANSPORT: _transport(transport),
        BYTES_UP: bytes_up,
        BYTES_DOWN: bytes_down,
        DURATION_MS: duration_ms,
    }
    _optional(attrs, ROUTE, route)
    _optional(attrs, LISTENER, listener)
    _connection_optionals(attrs, connection_id, src, None)
    return Record(TCP_ALLOWED, attrs, "INFO", False, start_ns, end_ns)


def host_name(authority: str) -> str:
    """The host of an HTTP authority, normalised: 'API.Example.com:8443' ->
    'api.example.com', '[2001:db8::1]:443' -> '2001:db8::1'."""
    host = authority.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return _dns_name(host)


def http_request(
    *,
    gateway: str,
    agent: Agent | None,
    route: str | None,
    rule: int | None,
    listener: str | None,
    method: str,
    authority: str,
    path: str,
    status: int,
    dst_name: str | None = None,
    deny_policy: str | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    connection_id: str | None = None,
    credential: str | None = None,
    misused: str | None = None,
) -> Record:
    """`egress.http`: one L7 request through Envoy (from ext_proc).  Allowed, it carries
    the upstream's status (a 5xx marks the span as an error) and the `credential`
    Envoy injected, if any; denied by `deny_policy`, the deny answer's status and the
    deny reason.  `misused`: the credential whose placeholder the tripwire caught (deny
    reason `credential_misuse`).  `dst_name` is the name the dialer matched, else the
    request's host."""
    attrs: dict[str, AttrValue] = {
        GATEWAY: gateway,
        **_agent_attrs(agent),
        HTTP_METHOD: method,
        HTTP_AUTHORITY: authority,
        DST_NAME: dst_name or host_name(authority),
        HTTP_PATH: path,
        HTTP_STATUS: status,
    }
    _optional(attrs, LISTENER, listener or None)
    if route:
        attrs[ROUTE] = route
        _optional(attrs, RULE, rule)
    _optional(attrs, CONNECTION_ID, connection_id)
    if misused is not None:
        attrs[DENY_REASON] = str(Reason.CREDENTIAL_MISUSE)
        attrs[ENFORCED] = True
        attrs[CREDENTIAL] = misused
        return Record(HTTP_REQUEST, attrs, "WARN", True, start_ns, end_ns)
    if deny_policy is not None:
        attrs[DENY_REASON] = str(Reason.DENY_POLICY)
        attrs[ENFORCED] = True
        attrs[DENY_POLICY] = deny_policy
        return Record(HTTP_REQUEST, attrs, "WARN", True, start_ns, end_ns)
    attrs[REASON] = _allowed_reason(route)
    _optional(attrs, CREDENTIAL, credential)
    return Record(HTTP_REQUEST, attrs, "INFO", status >= 500, start_ns, end_ns)


def spool_full(*, directory: str, max_bytes: int, dropped: int, full: bool) -> Record:
    """`clrk.records.spool_full`: the records spool filled up and records are being
    dropped (`full`: true, written into a reserve kept for it), or it has room again
    (`full`: false, with the number of records `dropped` meanwhile)."""
    attrs: dict[str, AttrValue] = {
        SPOOL_IS_FULL: full,
        SPOOL_DIRECTORY: directory,
        SPOOL_MAX_BYTES: max_bytes,
        RECORDS_DROPPED: dropped,
    }
    return Record(SPOOL_FULL, attrs, "WARN", False)
