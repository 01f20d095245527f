"""Structured logs: one JSON object per line with the extra fields merged in."""

import json
import logging

from clrk_runtime.logs import JsonFormatter, fields


def test_a_record_becomes_one_json_line_with_its_fields():
    record = logging.LogRecord("clrk.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    record.__dict__.update(fields(agent="default/bot", port=443))
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["msg"] == "hello you" and entry["level"] == "warning"
    assert entry["agent"] == "default/bot" and entry["port"] == 443
    assert entry["ts"].endswith("Z")


def test_exceptions_are_kept_in_the_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "boom" in json.loads(JsonFormatter().format(record))["error"]
