"""The supervisor's own checks (the running stack is tested in test_up_stack.py)."""

from __future__ import annotations

import os
import stat

import pytest

from clrk.up.supervisor import private_directory


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
