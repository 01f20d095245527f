"""`python -m clrk_extproc` as a process: structured logs, SIGTERM ends it cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clrk_extproc", *args],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_sigterm_stops_cleanly(tmp_path) -> None:
    proc = _start("--listen", "127.0.0.1:0", "--records", str(tmp_path / "r.jsonl"))
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the first log line
        assert json.loads(line)["msg"] == "extproc.listening"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        messages = [json.loads(x)["msg"] for x in proc.stderr.read().splitlines() if x]
        assert "extproc.stopped" in messages
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unusable_listen_address_exits_non_zero(tmp_path) -> None:
    proc = _start("--listen", "192.0.2.1:1", "--records", str(tmp_path / "r.jsonl"))
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    assert proc.wait() == 1
    assert proc.stderr is not None
    assert "cannot listen on 192.0.2.1:1" in proc.stderr.read()


def test_records_or_otlp_is_required() -> None:
    proc = _start("--listen", "127.0.0.1:0")
    assert proc.wait(20) == 2
