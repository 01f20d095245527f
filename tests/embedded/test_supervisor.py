"""The supervisor's own checks (the running stack is tested in test_up_stack.py), and
`clrk up`'s choice of the directory for Envoy's listener sockets."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import stat
import tempfile
from pathlib import Path

import click
import pytest

from clrk.nexthops import check_socket_dir
from clrk_cli.embedded.layout import StateDir
from clrk_cli.embedded.supervisor import READY_LINE, Supervisor, private_directory
from clrk_cli.up import socket_directory


def test_the_socket_directory_is_created_private(tmp_path):
    path = tmp_path / "a" / "sockets"
    private_directory(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    private_directory(path)  # idempotent: a restart finds it again


def test_a_socket_directory_others_may_write_is_refused(tmp_path):
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(ValueError, match="writable by no one else"):
        private_directory(path)


def test_a_symlink_in_place_of_the_socket_directory_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "sockets").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="owned by this user"):
        private_directory(tmp_path / "sockets")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_socket_directory_owned_by_someone_else_is_refused(tmp_path):
    path = tmp_path / "squatted"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(ValueError, match="owned by this user"):
        private_directory(path)


@pytest.fixture
def short_dir():
    """A directory with a path short enough for socket paths below it (pytest's tmp_path
    may not be)."""
    path = Path(tempfile.mkdtemp(prefix="c", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _is_private(path: Path) -> bool:
    info = os.lstat(path)
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and stat.S_IMODE(info.st_mode) == 0o700
    )


def test_a_state_directory_short_enough_keeps_the_sockets_in_it(short_dir):
    state = StateDir(short_dir / "state")
    chosen = socket_directory(state)
    assert chosen == state.envoy_sockets and _is_private(chosen)
    assert socket_directory(state) == chosen  # a restart finds it again


def test_a_shared_socket_directory_in_the_state_directory_is_refused(short_dir):
    state = StateDir(short_dir / "state")
    state.envoy_sockets.mkdir(parents=True)
    state.envoy_sockets.chmod(0o777)
    with pytest.raises(click.ClickException, match="writable by no one else"):
        socket_directory(state)


def test_a_state_directory_too_deep_gets_a_fresh_private_temp_directory(
    tmp_path, short_dir, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(short_dir))
    state = StateDir(tmp_path / ("d" * 80))
    first, second = socket_directory(state), socket_directory(state)
    assert first != second  # a random name: no one can create it beforehand
    for chosen in (first, second):
        assert chosen.parent == short_dir and chosen.name.startswith("clrk-")
        assert _is_private(chosen)
        check_socket_dir(str(chosen))
    assert not state.root.exists()


def test_a_temp_directory_too_long_for_socket_paths_is_refused_naming_tmpdir(tmp_path, monkeypatch):
    long_tmp = tmp_path / ("t" * 60)
    long_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    with pytest.raises(click.ClickException, match="TMPDIR") as raised:
        socket_directory(StateDir(tmp_path / ("d" * 80)))
    assert str(long_tmp) in raised.value.message
    assert list(long_tmp.iterdir()) == []  # the directory it made is gone again


def _run_until_ready(supervisor: Supervisor) -> int:
    async def main() -> int:
        task = asyncio.create_task(supervisor.run())
        async with asyncio.timeout(10):
            while not supervisor.ready:
                assert not task.done(), task.result()
                await asyncio.sleep(0.01)
        supervisor.stopping.set()
        return await task

    return asyncio.run(main())


def _supervisor(state: StateDir, sockets: Path) -> Supervisor:
    return Supervisor(
        [], state, gateway="default/gw", sockets=sockets, metrics_listen=None, out=io.StringIO()
    )


def test_the_supervisor_removes_a_temp_socket_directory_at_exit(short_dir):
    state = StateDir(short_dir / "state")
    sockets = Path(tempfile.mkdtemp(prefix="clrk-", dir=short_dir))
    supervisor = _supervisor(state, sockets)
    assert _run_until_ready(supervisor) == 0
    assert READY_LINE in supervisor.out.getvalue()
    assert not sockets.exists()


def test_the_supervisor_creates_and_keeps_the_socket_directory_in_the_state_directory(
    short_dir,
):
    state = StateDir(short_dir / "state")
    supervisor = _supervisor(state, state.envoy_sockets)
    assert _run_until_ready(supervisor) == 0
    assert _is_private(state.envoy_sockets)
