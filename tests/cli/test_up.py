"""clrk_cli.up's checks before anything starts: the state directory is the gateway's
alone, and a TCP listener for the control plane is never open."""

from __future__ import annotations

import os
import stat

import click
import pytest

from clrk_cli.up import _tcp_listen, private_state


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_state_directory_is_private(tmp_path):
    private_state(tmp_path / "state")
    assert _mode(tmp_path / "state") == 0o700


def test_an_open_state_directory_and_its_ca_directory_are_tightened(tmp_path):
    state = tmp_path / "state"
    (state / "ca").mkdir(parents=True)
    state.chmod(0o755)
    (state / "ca").chmod(0o755)
    private_state(state)
    assert (_mode(state), _mode(state / "ca")) == (0o700, 0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_state_directory_of_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    with pytest.raises(click.ClickException, match="must be a directory of this user"):
        private_state(state)


def test_a_symlink_in_place_of_the_state_directory_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(click.ClickException):
        private_state(tmp_path / "state")


def test_a_tcp_listener_needs_a_token_or_mtls(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert _tcp_listen(None, None, None, None, None) is None
    with pytest.raises(click.UsageError, match="refusing to serve it open"):
        _tcp_listen("127.0.0.1:18000", None, None, None, None)
    with pytest.raises(click.UsageError, match="only on loopback"):
        _tcp_listen("0.0.0.0:18000", str(token), None, None, None)
    with pytest.raises(click.UsageError, match="go with --listen"):
        _tcp_listen(None, str(token), None, None, None)
    listen = _tcp_listen("127.0.0.1:18000", str(token), None, None, None)
    assert listen.argv() == ["--listen", "127.0.0.1:18000", "--token-file", str(token)]
