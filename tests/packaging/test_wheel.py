"""The clrk wheel is complete: installed without the source tree (and read-only, by a
user who owns nothing of it) its commands run, with the generated protobuf modules and
Envoy's bootstrap template inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns_helpers import python_for_anyone
from tests.packaging.build_cache import ROOT, wheelhouse

NOBODY = 65534
pytestmark = pytest.mark.timeout(300)  # a cold cache builds every wheel first


@pytest.fixture(scope="module")
def wheels() -> Path:
    return wheelhouse()


@pytest.fixture(scope="module")
def installed(wheels: Path) -> Iterator[Path]:
    """A fresh venv, outside the source tree, with clrk installed from the wheels only."""
    home = Path(tempfile.mkdtemp(prefix="clrk-wheel-"))
    try:
        home.chmod(0o755)  # another user runs it below
        venv = home / "venv"
        python = python_for_anyone()
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "--quiet", "--no-compile", "--no-index", "--find-links", str(wheels), "clrk"],
            check=True,
        )  # fmt: skip
        if os.geteuid() != 0:  # root writes anyway: as root, uid 65534 runs it below
            subprocess.run(["chmod", "-R", "a-w", str(venv)], check=True)
        yield venv
    finally:
        if os.geteuid() != 0:
            subprocess.run(["chmod", "-R", "u+w", str(home)], check=False)
        shutil.rmtree(home, ignore_errors=True)


def _run(venv: Path, *argv: str, user: int | None = None) -> subprocess.CompletedProcess:
    """Run from / with a clean environment, so nothing of the source tree is importable."""
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    prefix = []
    if user is not None:
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
    return subprocess.run(
        [*prefix, *argv], cwd="/", env=env, capture_output=True, text=True, timeout=60
    )


def _users() -> list[int | None]:
    return [None, NOBODY] if os.geteuid() == 0 else [None]


@pytest.mark.parametrize("user", _users(), ids=lambda u: "self" if u is None else "nobody")
@pytest.mark.parametrize("command", [["clrk", "--help"], ["clrk", "up", "--help"]], ids=" ".join)
def test_an_installed_wheel_runs_the_commands_from_a_read_only_venv(installed, command, user):
    result = _run(installed, *command, user=user)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {' '.join(command[:-1])}")


def test_the_installed_code_uses_its_own_generated_modules_and_bootstrap_template(installed):
    code = (
        "import clrk_runtime.protos as p, clrk_xds.envoy_process as e;"
        "print(p.load(p.ADMIN_MODULE).__file__); print(p.load().__file__);"
        "print(e.BOOTSTRAP_TEMPLATE); print(e.render_bootstrap('default/gw', '127.0.0.1:1', 2)"
        "['node']['id'])"
    )
    user = NOBODY if os.geteuid() == 0 else None
    result = _run(installed, "python", "-c", code, user=user)
    assert result.returncode == 0, result.stderr
    *paths, node = result.stdout.split()
    assert all(p.startswith(str(installed)) for p in paths), paths
    assert node == "default/gw"


def test_the_wheel_carries_a_module_for_every_proto_file_and_the_bootstrap_template(wheels):
    (wheel,) = wheels.glob("clrk-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    protos = sorted(ROOT.joinpath("proto").rglob("*.proto"))
    assert protos
    for proto in protos:
        module = proto.relative_to(ROOT / "proto").with_name(proto.stem + "_pb2.py")
        assert f"clrk_runtime/_proto/{module}" in names
    template = zipfile.ZipFile(wheel).read("clrk_xds/_envoy/bootstrap.yaml")
    assert template == ROOT.joinpath("envoy", "bootstrap.yaml").read_bytes()
