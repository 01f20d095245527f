"""The `make run` demo (`python -m clrk_cli.demo --once`): its own namespaces, `clrk up` on
examples/, a scripted agent via `clrk run`; the table shows what was allowed and denied
with the right reasons, and nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clrk_cli.demo import report
from tests.e2e.topology import leaks, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_rows_match_records_by_name_or_address():
    attempts = [
        {
            "target": "a.test:443",
            "host": "a.test",
            "ip": "192.0.2.1",
            "port": 443,
            "outcome": "connected",
            "detail": "HTTP/1.1 200 OK",
        },
        {
            "target": "b.test:443",
            "host": "b.test",
            "ip": "192.0.2.2",
            "port": 443,
            "outcome": "refused",
            "detail": "reset",
        },
        {
            "target": "192.0.2.2:443",
            "host": "192.0.2.2",
            "ip": "192.0.2.2",
            "port": 443,
            "outcome": "refused",
            "detail": "reset",
        },
    ]
    span = {
        "signal": "span",
        "name": "egress.dial.denied",
        "attributes": {
            "clrk.dst.name": "b.test",
            "network.peer.address": "192.0.2.2",
            "network.peer.port": 443,
            "clrk.egress.deny_reason": "policy",
            "agent.name": "bot",
            "agent.namespace": "default",
            "network.transport": "tcp",
        },
    }
    log = {**span, "signal": "log"}
    got = report.rows(attempts, [span, log])
    assert [(r.decision, r.reason) for r in got] == [
        ("allowed", "-"),
        ("denied", "policy"),
        ("denied", "policy"),
    ]
    text = report.table(got)
    assert text.splitlines()[0].split() == [
        "DESTINATION",
        "AGENT",
        "SAW",
        "GATEWAY",
        "DENY",
        "REASON",
        "DETAIL",
    ]
    assert report.record_lines([span, log]) == [
        "egress.dial.denied  reason=policy  agent=default/bot  dst=b.test 192.0.2.2:443/tcp"
    ]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables")
@pytest.mark.parametrize("manifests", ["passthrough", "examples"])
def test_demo_once_shows_allowed_and_denied_and_leaves_nothing(manifests, tmp_path):
    """`examples` is `make run` itself (TLS Terminate: needs the L7 parts and the gateway
    CA); `passthrough` is the same policy with TLS Passthrough (L4 only)."""
    args = ["--ready-timeout", "25"]
    if manifests == "passthrough":
        for path in (Path(REPO) / "examples" / "prod-agents").glob("*.yaml"):
            text = path.read_text().replace("mode: Terminate", "mode: Passthrough")
            (tmp_path / path.name).write_text(text)
        args += ["-f", str(tmp_path)]
    before = snapshot()
    out = subprocess.run(
        [sys.executable, "-m", "clrk_cli.demo", "--once", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts and parts[0].count(":") == 1 and parts[0].split(":")[1].isdigit():
            rows[parts[0]] = line
    assert "clrk ready" in out.stdout
    assert (
        " allowed " in rows["pg.prod.internal:5432"]
        and "connected" in rows["pg.prod.internal:5432"]
    )
    assert " allowed " in rows["api.anthropic.com:443"]
    for target in ("pastebin.com:443", "evil.example:443", "192.0.2.66:443"):
        assert "refused" in rows[target] and "denied   policy" in rows[target], rows[target]
    assert "egress.dial.denied  reason=policy  agent=default/bot  dst=evil.example" in out.stdout
    assert not leaks(before, snapshot())
