"""Decision records (SPEC 8): build them (schema), export them (writer), read them (query)."""

from clrk.records.query import FlatRecord, iter_records, select
from clrk.records.schema import (
    Record,
    dial_denied,
    dns_denied,
    http_request,
    tcp_allowed,
)

__all__ = [
    "FlatRecord",
    "Record",
    "dial_denied",
    "dns_denied",
    "http_request",
    "iter_records",
    "select",
    "tcp_allowed",
]
