"""`clrk records` over files the real RecordWriter wrote."""

from __future__ import annotations

import json
import time

import pytest

from clrk.policy import Agent, Decision, Reason
from clrk.records.schema import dial_denied, dns_denied
from clrk_cli import main
from clrk_runtime.records_writer import RecordWriter

NOW = time.time_ns()
HOUR = 3600 * 10**9


def denial(reason: Reason, agent: str, port: int, time_ns: int):
    decision = Decision(reason, "default/gw", f"default/{agent}", "deny-all")
    return dial_denied(
        decision,
        agent=Agent("default", agent),
        dst_ip="192.0.2.1",
        dst_port=port,
        transport="tcp",
        dst_name="x.example",
        time_ns=time_ns,
    )


@pytest.fixture
def state(tmp_path):
    with RecordWriter("clrk-dialer", path=str(tmp_path / "records.jsonl")) as writer:
        writer.emit(denial(Reason.POLICY, "bot", 1, NOW - 2 * HOUR))
        writer.emit(denial(Reason.SNI_MISMATCH, "bot", 2, NOW - 60 * 10**9))
        writer.emit(denial(Reason.POLICY, "coder", 3, NOW - 30 * 10**9))
        writer.emit(
            dns_denied(
                Decision(Reason.DNS_FILTERED, "default/gw", "default/bot", "deny-all"),
                agent=Agent("default", "bot"),
                query_name="leak.example.",
                query_type="A",
                peer_address="198.18.0.1",
                peer_port=53,
                time_ns=NOW,
            )
        )
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ports(out: str) -> list[int]:
    return [json.loads(line)["attributes"].get("network.peer.port") for line in out.splitlines()]


def test_json_lines_one_per_decision_with_filters(state, capsys):
    code, out, _ = run(capsys, "records", "--state-dir", str(state), "-o", "json")
    assert code == 0 and ports(out) == [1, 2, 3, 53]  # logs only: no span duplicates
    code, out, _ = run(capsys, "records", "--state-dir", str(state), "-o", "json",
                       "--name", "egress.dial.denied", "--agent", "bot")  # fmt: skip
    assert ports(out) == [1, 2]
    code, out, _ = run(capsys, "records", "--file", str(state / "records.jsonl"), "-o", "json",
                       "--deny-reason", "policy", "--since", "10m")  # fmt: skip
    assert ports(out) == [3]
    code, out, _ = run(capsys, "records", "--state-dir", str(state), "-o", "json",
                       "--agent", "other/bot")  # fmt: skip
    assert code == 0 and out == ""
    code, out, _ = run(capsys, "records", "--state-dir", str(state), "-o", "json",
                       "--signal", "all", "--deny-reason", "sni_mismatch")  # fmt: skip
    assert sorted(json.loads(x)["signal"] for x in out.splitlines()) == ["log", "span"]


def test_table_for_people(state, capsys):
    code, out, _ = run(capsys, "records", "--state-dir", str(state), "--since", "1h")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == [
        "TIME", "NAME", "AGENT", "GATEWAY", "DESTINATION", "REASON"
    ]  # fmt: skip
    assert len(lines) == 4
    assert "egress.dial.denied" in lines[1] and "default/bot" in lines[1]
    assert "x.example (192.0.2.1:2)" in lines[1] and lines[1].endswith("sni_mismatch")
    assert "dns_filtered" in lines[3]


@pytest.mark.parametrize(
    "args",
    [
        ("--state-dir", "/nonexistent-clrk-state"),
        ("--since", "ten minutes"),
        (),  # neither --state-dir nor --file
        ("--signal", "trace"),
    ],
)
def test_errors_exit_1(state, capsys, args):
    if args[:1] in (("--since",), ("--signal",)):
        args = ("--state-dir", str(state), *args)
    code, _, err = run(capsys, "records", *args)
    assert code == 1 and err


def test_damaged_lines_are_skipped(state, capsys):
    with open(state / "records.jsonl", "a") as fh:
        fh.write('not json\n{"resourceLogs": [{"scopeLogs": 7}]}\n{"resourceSpans"')
    code, out, _ = run(capsys, "records", "--state-dir", str(state), "-o", "json")
    assert code == 0 and ports(out) == [1, 2, 3, 53]


def test_enforced_and_reported_denials_apart(tmp_path, capsys):
    reported = Decision(Reason.POLICY, "default/gw", "default/bot", "deny-all")
    reported = reported._replace(through=Decision(Reason.ALLOWED_DEFAULT, "default/gw", None, ""))
    with RecordWriter("clrk-dialer", path=str(tmp_path / "records.jsonl")) as writer:
        writer.emit(denial(Reason.POLICY, "bot", 1, NOW))
        writer.emit(
            dial_denied(reported, agent=Agent("default", "bot"), dst_ip="192.0.2.1",
                        dst_port=2, transport="tcp", dst_name="x.example", time_ns=NOW)
        )  # fmt: skip
    for which, want in (("enforced", [1]), ("reported", [2])):
        code, out, _ = run(capsys, "records", "--state-dir", str(tmp_path), "-o", "json",
                           "--enforcement", which)  # fmt: skip
        assert code == 0 and ports(out) == want
    _code, out, _ = run(capsys, "records", "--state-dir", str(tmp_path))
    assert out.splitlines()[2].endswith("policy (reported)")


SUGGEST_GATEWAY = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp-out, protocol: TCP}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: bot, labels: {app: bot}}
spec: {egressRefs: [{gatewayRef: gw}]}
"""


def test_suggest_prints_routes_from_the_records_and_a_table(state, capsys, tmp_path):
    (tmp_path / "gw.yaml").write_text(SUGGEST_GATEWAY)
    code, out, err = run(capsys, "suggest", "--state-dir", str(state), "-f",
                         str(tmp_path / "gw.yaml"), "--agent", "bot")  # fmt: skip
    assert code == 0, err
    assert "name: suggested-default-bot-tcp-out" in out
    assert "- x.example" in out and "port: 1" in out and "port: 2" not in out  # no sni_mismatch
    code, out, _ = run(capsys, "suggest", "--state-dir", str(state), "-f",
                       str(tmp_path / "gw.yaml"), "-o", "table", "--since", "10m")  # fmt: skip
    row = out.split("\n")[1]  # coder is declared nowhere: no labels to select it by
    assert code == 0 and "default/coder (no labels: every agent)" in row
    assert row.split()[-4:] == ["tcp-out", "TCP", "3", "x.example"]
