"""The collector's stand-in: OTLP/gRPC on a Unix socket in, OTLP-JSON lines and one
printed line per record out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clrk.records.query import iter_records
from clrk_runtime.records_writer import RecordWriter
from tests.records.test_writer import denial

SINK = Path(__file__).with_name("otlp_sink.py")


def test_a_denial_arrives_in_the_file_and_on_stdout(tmp_path):
    socket, records = tmp_path / "otlp.sock", tmp_path / "records.jsonl"
    sink = subprocess.Popen(
        [sys.executable, str(SINK), f"--listen=unix:{socket}", f"--file={records}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sink.stdout.readline().startswith("listening")
        with RecordWriter(
            "clrk-dialer", otlp_endpoint=f"unix://{socket}", spool_dir=str(tmp_path / "spool")
        ) as writer:
            writer.emit(denial(443))
            assert writer.flush()
        printed = sorted(sink.stdout.readline().split()[:2] for _ in range(2))
        assert printed == [["log", "egress.dial.denied"], ["span", "egress.dial.denied"]]
    finally:
        sink.terminate()
        sink.wait(5)
    assert sink.returncode == 0
    found = list(iter_records(str(records)))
    assert sorted(r["signal"] for r in found) == ["log", "span"]
    assert {r["attributes"]["clrk.dst.name"] for r in found} == {"x.example"}
