"""`clrk apply`, `clrk get` and `clrk check --server` through the real entry point
against a real control plane core (admin_harness), and the console script once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clrk_cli import main
from tests.cli.admin_harness import route, running_plane
from tests.conftest import ROOT
from tests.xds.test_admin import BAD


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_apply_then_get_then_check(tmp_path, capsys):
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "route.yaml").write_text(route("api.example.com"))
    with running_plane(tmp_path / "cp") as plane:
        s = ("--server", plane.address)
        code, out, _ = run(capsys, "apply", "-f", str(tmp_path / "policy"), *s)
        assert code == 0
        assert out.splitlines() == [
            "EgressL4Route/default/api created",
            f"applied: version {plane.version()}",
        ]
        code, out, _ = run(capsys, "get", "routes", *s, "-o", "json")
        doc = json.loads(out)
        assert code == 0 and doc["version"] == plane.version() and not doc["blocked"]
        [item] = doc["items"]
        assert item["name"] == "api" and item["conditions"]["Accepted"]["status"] == "True"
        assert item["conditions"]["Programmed"]["reason"] == "Programmed"
        code, out, _ = run(capsys, "get", "all", *s)
        header, *rows = out.splitlines()
        assert header.split() == ["KIND", "NAMESPACE", "NAME", "ACCEPTED", "PROGRAMMED", "SOURCE"]
        assert [r.split()[:5] for r in rows] == [
            ["EgressGateway", "default", "gw", "True", "True"],
            ["EgressL4Route", "default", "api", "True", "True"],
            ["TaskAgent", "default", "coder", "True", "True"],
        ]
        code, out, _ = run(capsys, "check", *s, "--agent", "coder", "--dst-ip", "192.0.2.1",
                           "--port", "443", "--hostname", "api.example.com")  # fmt: skip
        assert code == 0 and "allow (allowed)" in out and "default/api rule 0" in out


def test_apply_of_invalid_manifests_prints_validate_lines_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    _, validate_out, _ = run(capsys, "validate", "-f", str(bad))
    with running_plane(tmp_path / "cp") as plane:
        v0 = plane.version()
        code, out, err = run(capsys, "apply", "-f", str(bad), "--server", plane.address)
        assert code == 1
        assert err.splitlines()[:-1] == validate_out.splitlines()
        assert err.splitlines()[-1] == "refused: 2 error(s); nothing changed"
        code, out, _ = run(capsys, "apply", "-f", str(bad), "--server", plane.address,
                           "-o", "json")  # fmt: skip
        doc = json.loads(out)
        assert code == 1 and doc["applied"] is False and len(doc["findings"]) == 2
        assert plane.version() == v0


def test_dry_run(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(route("api.example.com"))
    with running_plane(tmp_path / "cp") as plane:
        v0 = plane.version()
        code, out, _ = run(capsys, "apply", "-f", str(tmp_path / "r.yaml"), "--dry-run",
                           "--server", plane.address)  # fmt: skip
        assert code == 0 and out.splitlines()[-1] == f"valid: version {v0}"
        assert plane.version() == v0


def test_no_server_and_missing_files_exit_1(tmp_path, capsys):
    code, _, err = run(capsys, "get", "gateways", "--server", "127.0.0.1:1")
    assert code == 1 and "cannot reach the control plane at 127.0.0.1:1" in err
    code, _, err = run(capsys, "apply", "-f", str(tmp_path / "nope.yaml"), "--server", "x:1")
    assert code == 1 and "no such file" in err
    code, _, err = run(capsys, "check", "--agent", "a", "--dst-ip", "192.0.2.1", "--port", "1")
    assert code == 1 and "--server" in err  # neither -f nor --server


def test_the_console_script_checks_against_a_server(tmp_path):
    """The installed `clrk` script, as an operator runs it (registered commands only)."""
    clrk = Path(sys.executable).with_name("clrk")
    (tmp_path / "r.yaml").write_text(route("api.example.com"))
    with running_plane(tmp_path / "cp") as plane:
        done = subprocess.run(
            [str(clrk), "check", "--server", plane.address, "--agent", "coder",
             "--dst-ip", "192.0.2.1", "--port", "443", "-o", "json"],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ}, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["reason"] == "policy"
