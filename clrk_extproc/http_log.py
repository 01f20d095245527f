"""`egress.http` records from Envoy's HTTP access-log entries, pure.

- Allow records: an L7 chain without ext_proc on every request (`clrk.policy.l7_chains`)
  logs each request here, with the record content ext_proc would have written: method,
  authority, path, status, the chain's listener, route and rule, the agent and the
  matched name.  The PROXY TLVs, the chain's facts and the method as the agent sent it
  arrive as custom tags (`clrk.wire.HTTP_TAGGED_TLVS`, `LISTENER_TAG`, `CHAIN_*_TAG`,
  `METHOD_TAG`).  An entry whose connection carried a deny policy TLV was answered, and
  recorded, by ext_proc: it makes no record here.
- `credential_misuse`: the tripwire is answered by Envoy alone (a direct 403 route,
  `translate_credentials`); the route's name, `credential_misuse/<namespace>/<name>`,
  says whose placeholder was caught.  A chain with ext_proc logs only direct responses
  here; one without logs every request, and `facts_record` gives each entry its one
  record.
"""

from __future__ import annotations

from envoy_data_plane.envoy.config.core.v3 import RequestMethod
from envoy_data_plane.envoy.data.accesslog.v3 import HttpAccessLogEntry

from clrk.policy import Agent
from clrk.records.schema import Record, http_request
from clrk.wire import (
    CHAIN_ROUTE_TAG,
    CHAIN_RULE_TAG,
    INJECTED_ROUTE_PREFIX,
    LISTENER_TAG,
    METHOD_TAG,
    MISUSE_ROUTE_PREFIX,
    TlvType,
    tlv_tag,
)
from clrk_extproc.access_log_wire import HttpFacts
from clrk_extproc.exchange import MAX_VALUE
from clrk_extproc.tcp_log import ns, tag


def _method(value: RequestMethod | int) -> str:
    try:
        method = RequestMethod(value)
    except ValueError:
        return ""
    return "" if method == RequestMethod.METHOD_UNSPECIFIED else method.name


def entry_facts(entry: HttpAccessLogEntry) -> HttpFacts | None:
    """What a parsed entry says that its record uses (what `access_log_wire.scan` reads
    off the wire); None for an entry without common properties."""
    common, request, response = entry.common_properties, entry.request, entry.response
    if common is None:
        return None
    return HttpFacts(
        tags=dict(common.custom_tags or {}),
        route_name=common.route_name,
        start=common.start_time,
        first_tx=common.time_to_first_downstream_tx_byte,
        duration=common.duration,
        method=int(request.request_method) if request else 0,
        authority=request.authority if request else "",
        path=request.path if request else "",
        status=int(response.response_code or 0) if response else 0,
    )


def _shared(facts: HttpFacts, until) -> dict:
    """The record fields both kinds read alike; the record ends `until` after the start."""
    tags = facts.tags
    namespace = tag(tags, tlv_tag(TlvType.AGENT_NAMESPACE)) or ""
    name = tag(tags, tlv_tag(TlvType.AGENT_NAME)) or ""
    start = ns(facts.start)
    end = start + int(until.total_seconds() * 1e9) if start is not None and until else start
    return {
        "agent": Agent(namespace, name) if namespace or name else None,
        "listener": tag(tags, LISTENER_TAG),
        "authority": facts.authority[:MAX_VALUE],
        "path": facts.path[:MAX_VALUE],
        "status": facts.status,
        "dst_name": tag(tags, tlv_tag(TlvType.AUTHORITY)),
        "start_ns": start,
        "end_ns": end,
        "connection_id": tag(tags, tlv_tag(TlvType.CONNECTION_ID)),
    }


def _misuse(facts: HttpFacts, gateway: str) -> Record | None:
    if not facts.route_name.startswith(MISUSE_ROUTE_PREFIX):
        return None
    return http_request(
        gateway=gateway,
        route=tag(facts.tags, tlv_tag(TlvType.ROUTE)),
        rule=None,
        method=_method(facts.method),
        misused=facts.route_name.removeprefix(MISUSE_ROUTE_PREFIX),
        **_shared(facts, facts.duration),
    )


def _allow(facts: HttpFacts, gateway: str) -> Record | None:
    tags = facts.tags
    if CHAIN_ROUTE_TAG not in tags or tag(tags, tlv_tag(TlvType.DENY_POLICY)):
        return None
    rule = tag(tags, CHAIN_RULE_TAG)
    # ext_proc's record ended when the response headers came back: the first byte to
    # the agent here; a request that got no response ends with the stream.
    until = facts.first_tx or facts.duration
    return http_request(
        gateway=gateway,
        route=tag(tags, CHAIN_ROUTE_TAG),
        rule=int(rule) if rule is not None and rule.isdigit() else None,
        method=(tag(tags, METHOD_TAG) or "")[:MAX_VALUE],
        credential=_injected(facts.route_name),
        **_shared(facts, until),
    )


def _injected(route_name: str) -> str | None:
    """The credential(s) whose hosts the request went to (`injected/<ns>/<name>`)."""
    if not route_name.startswith(INJECTED_ROUTE_PREFIX):
        return None
    return route_name.removeprefix(INJECTED_ROUTE_PREFIX)[:MAX_VALUE] or None


def facts_record(facts: HttpFacts | None, gateway: str) -> Record | None:
    """The one record of an entry: the tripwire's deny record, else an allow record."""
    if facts is None:
        return None
    return _misuse(facts, gateway) or _allow(facts, gateway)


def entry_record(entry: HttpAccessLogEntry, gateway: str) -> Record | None:
    """`facts_record` of a parsed entry."""
    return facts_record(entry_facts(entry), gateway)
