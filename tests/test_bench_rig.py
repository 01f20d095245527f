"""The benches' shared rig: what it waits for before a bench sends traffic."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench._rig import BenchError, Gateway

LISTENING = '{"level": "info", "msg": "extproc.listening", "address": "127.0.0.1:18002"}'


def _child(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script])


def test_the_gateway_is_ready_only_once_clrk_extproc_listens(tmp_path):
    """Envoy's access-log batches sent before clrk_extproc listens are lost for good,
    which a bench then counts as missing records (seen on a loaded machine)."""
    ready, log = tmp_path / "dialer.ready", tmp_path / "extproc.log"
    ready.touch()
    log.write_text("")
    write = f"open({str(log)!r}, 'a').write({LISTENING!r} + '\\n')"
    late = f"import time; time.sleep(0.5); {write}; time.sleep(30)"
    dialer, extproc = _child("import time; time.sleep(30)"), _child(late)
    try:
        Gateway(dialer, ready, tmp_path / "dialer.log", extproc, log).wait_ready()
        assert "extproc.listening" in log.read_text()  # returned only once it was there
    finally:
        for proc in (dialer, extproc):
            proc.kill()
            proc.wait()


def test_a_clrk_extproc_that_exits_before_it_listens_fails_the_bench(tmp_path):
    ready, log = tmp_path / "dialer.ready", tmp_path / "extproc.log"
    ready.touch()
    log.write_text("cannot listen on 127.0.0.1:18002\n")
    dialer, extproc = _child("import time; time.sleep(30)"), _child("raise SystemExit(1)")
    try:
        with pytest.raises(BenchError, match="clrk_extproc exited 1:\ncannot listen"):
            Gateway(dialer, ready, tmp_path / "dialer.log", extproc, log).wait_ready()
    finally:
        for proc in (dialer, extproc):
            proc.kill()
            proc.wait()
