"""`credential_misuse` records from Envoy's HTTP access-log entries, pure.

The tripwire is answered by Envoy alone (a direct 403 route, `translate_credentials`);
the L7 chain's access log sends only direct responses here, and the route's name,
`credential_misuse/<namespace>/<name>`, says whose placeholder was caught.  The PROXY
TLVs and the chain's listener arrive as custom tags, as in the TCP access log.
"""

from __future__ import annotations

from envoy_data_plane.envoy.config.core.v3 import RequestMethod
from envoy_data_plane.envoy.data.accesslog.v3 import HttpAccessLogEntry

from clrk.policy import Agent
from clrk.records.schema import Record, http_request
from clrk.wire import LISTENER_TAG, MISUSE_ROUTE_PREFIX, TlvType, tlv_tag
from clrk_extproc.exchange import MAX_VALUE
from clrk_extproc.tcp_log import ns, tag


def _method(value: RequestMethod | int) -> str:
    try:
        method = RequestMethod(value)
    except ValueError:
        return ""
    return "" if method == RequestMethod.METHOD_UNSPECIFIED else method.name


def misuse_record(entry: HttpAccessLogEntry, gateway: str) -> Record | None:
    """The deny record of a request the tripwire answered; None for any other entry."""
    common = entry.common_properties
    if common is None or not common.route_name.startswith(MISUSE_ROUTE_PREFIX):
        return None
    credential = common.route_name.removeprefix(MISUSE_ROUTE_PREFIX)
    tags = dict(common.custom_tags or {})
    request = entry.request
    response = entry.response
    namespace = tag(tags, tlv_tag(TlvType.AGENT_NAMESPACE)) or ""
    name = tag(tags, tlv_tag(TlvType.AGENT_NAME)) or ""
    start = ns(common.start_time)
    duration = common.duration
    end = start + int(duration.total_seconds() * 1e9) if start is not None and duration else start
    return http_request(
        gateway=gateway,
        agent=Agent(namespace, name) if namespace or name else None,
        route=tag(tags, tlv_tag(TlvType.ROUTE)),
        rule=None,
        listener=tag(tags, LISTENER_TAG),
        method=_method(request.request_method) if request else "",
        authority=(request.authority if request else "")[:MAX_VALUE],
        path=(request.path if request else "")[:MAX_VALUE],
        status=int(response.response_code or 0) if response else 0,
        dst_name=tag(tags, tlv_tag(TlvType.AUTHORITY)),
        start_ns=start,
        end_ns=end,
        connection_id=tag(tags, tlv_tag(TlvType.CONNECTION_ID)),
        misused=credential,
    )
