"""OTLP protobuf export requests → OTLP/JSON (the OpenTelemetry protocol's JSON encoding).

The encoding is protobuf's canonical JSON with two OTLP rules on top: trace and span ids
are lower-case hex, not base64, and enums are integers.  64-bit integers stay strings
(protobuf JSON), which OTLP/JSON readers accept.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def _hex_ids(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


def to_otlp_dict(message: Message) -> dict[str, Any]:
    out = json_format.MessageToDict(message, use_integers_for_enums=True)
    _hex_ids(out)
    return out


def to_otlp_line(message: Message) -> bytes:
    """One JSON object and a newline, as the Collector's file exporter/receiver use."""
    text = json.dumps(to_otlp_dict(message), separators=(",", ":"), ensure_ascii=False)
    return (text + "\n").encode()
