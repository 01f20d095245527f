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
  here; one without logs every request, and `http_records` gives each entry its one
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
from clrk_extproc.exchange import MAX_VALUE
from clrk_extproc.tcp_log import ns, tag


def _method(value: RequestMethod | int) -> str:
    try:
        method = RequestMethod(value)
    except ValueError:
        return ""
    return "" if method == RequestMethod.METHOD_UNSPECIFIED else method.name


def _shared(entry: HttpAccessLogEntry, tags: dict[str, str], until) -> dict:
    """The record fields both kinds read alike; the record ends `until` after the start."""
    common, request, response = entry.common_properties, entry.request, entry.response
    namespace = tag(tags, tlv_tag(TlvType.AGENT_NAMESPACE)) or ""
    name = tag(tags, tlv_tag(TlvType.AGENT_NAME)) or ""
    start = ns(common.start_time) if common is not None else None
    end = start + int(until.total_seconds() * 1e9) if start is not None and until else start
    return {
        "agent": Agent(namespace, name) if namespace or name else None,
        "listener": tag(tags, LISTENER_TAG),
        "authority": (request.authority if request else "")[:MAX_VALUE],
        "path": (request.path if request else "")[:MAX_VALUE],
        "status": int(response.response_code or 0) if response else 0,
        "dst_name": tag(tags, tlv_tag(TlvType.AUTHORITY)),
        "start_ns": start,
        "end_ns": end,
        "connection_id": tag(tags, tlv_tag(TlvType.CONNECTION_ID)),
    }


def misuse_record(entry: HttpAccessLogEntry, gateway: str) -> Record | None:
    """The deny record of a request the tripwire answered; None for any other entry."""
    common = entry.common_properties
    if common is None or not common.route_name.startswith(MISUSE_ROUTE_PREFIX):
        return None
    tags = dict(common.custom_tags or {})
    request = entry.request
    return http_request(
        gateway=gateway,
        route=tag(tags, tlv_tag(TlvType.ROUTE)),
        rule=None,
        method=_method(request.request_method) if request else "",
        misused=common.route_name.removeprefix(MISUSE_ROUTE_PREFIX),
        **_shared(entry, tags, common.duration),
    )


def http_record(entry: HttpAccessLogEntry, gateway: str) -> Record | None:
    """The allow record of one request; None for a request ext_proc recorded, and for
    an entry of a chain that records through ext_proc (no chain route tag)."""
    common = entry.common_properties
    if common is None:
        return None
    tags = dict(common.custom_tags or {})
    if CHAIN_ROUTE_TAG not in tags or tag(tags, tlv_tag(TlvType.DENY_POLICY)):
        return None
    rule = tag(tags, CHAIN_RULE_TAG)
    # ext_proc's record ended when the response headers came back: the first byte to
    # the agent here; a request that got no response ends with the stream.
    until = common.time_to_first_downstream_tx_byte or common.duration
    return http_request(
        gateway=gateway,
        route=tag(tags, CHAIN_ROUTE_TAG),
        rule=int(rule) if rule is not None and rule.isdigit() else None,
        method=(tag(tags, METHOD_TAG) or "")[:MAX_VALUE],
        credential=_injected(common.route_name),
        **_shared(entry, tags, until),
    )


def _injected(route_name: str) -> str | None:
    """The credential(s) whose hosts the request went to (`injected/<ns>/<name>`)."""
    if not route_name.startswith(INJECTED_ROUTE_PREFIX):
        return None
    return route_name.removeprefix(INJECTED_ROUTE_PREFIX)[:MAX_VALUE] or None


def entry_record(entry: HttpAccessLogEntry, gateway: str) -> Record | None:
    """The one record of an entry: the tripwire's deny record, else an allow record."""
    return misuse_record(entry, gateway) or http_record(entry, gateway)
