"""proxy_credentials: per-agent tokens in a directory shaped like a mounted Kubernetes
Secret, re-read when they change; `clrk run --explicit` makes them for `clrk up`."""

from __future__ import annotations

import os
import stat

import pytest

from clrk_worker_dialer.proxy_credentials import (
    MAX_TOKEN,
    ProxyCredentials,
    ensure_token,
    file_name,
    matches,
)


def test_the_file_of_an_agent_is_namespace_underscore_name():
    assert file_name("default/bot") == "default_bot"
    assert file_name("team-a/coder.v2") == "team-a_coder.v2"


def test_no_directory_means_no_credentials():
    credentials = ProxyCredentials(None)
    assert not credentials.configured
    assert credentials.token_for("default/bot") is None


def test_a_token_is_read_stripped_and_read_again_when_it_changes(tmp_path):
    credentials = ProxyCredentials(tmp_path)
    assert credentials.token_for("default/bot") is None
    (tmp_path / "default_bot").write_text("first\n")
    assert credentials.token_for("default/bot") == "first"
    (tmp_path / "default_bot").write_text("second-token\n")
    assert credentials.token_for("default/bot") == "second-token"
    (tmp_path / "default_bot").unlink()
    assert credentials.token_for("default/bot") is None


def test_a_secret_volume_update_swaps_a_symlink_and_the_new_token_counts(tmp_path):
    """How the kubelet updates a Secret volume: KEY -> ..data/KEY, ..data -> a new
    timestamped directory, swapped atomically."""
    for version, token in (("..v1", "old"), ("..v2", "new")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "default_bot").write_text(token)
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/default_bot", tmp_path / "default_bot")
    credentials = ProxyCredentials(tmp_path)
    assert credentials.token_for("default/bot") == "old"
    os.symlink("..v2", tmp_path / "..data.tmp")
    os.replace(tmp_path / "..data.tmp", tmp_path / "..data")
    assert credentials.token_for("default/bot") == "new"


@pytest.mark.parametrize("content", [b"", b"\n", b"\xff\xfe", b"x" * (MAX_TOKEN + 1)])
def test_a_credential_that_cannot_be_used_matches_nothing(tmp_path, content):
    (tmp_path / "default_bot").write_bytes(content)
    token = ProxyCredentials(tmp_path).token_for("default/bot")
    assert token == ""  # configured: the username alone must not select the agent
    assert not matches(token, "")
    assert not matches(token, None)


def test_a_password_matches_only_the_exact_token():
    assert matches("s3cret", "s3cret")
    assert not matches("s3cret", "s3cre")
    assert not matches("s3cret", "s3cret ")
    assert not matches("s3cret", None)


def test_ensure_token_makes_one_private_token_per_agent_and_keeps_it(tmp_path):
    directory = tmp_path / "proxy-credentials"
    token = ensure_token(directory, "default/bot")
    assert len(token) >= 32 and token == token.strip()
    assert ensure_token(directory, "default/bot") == token
    assert ensure_token(directory, "default/other") != token
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "default_bot").stat().st_mode) == 0o600
    assert ProxyCredentials(directory).token_for("default/bot") == token


def test_ensure_token_refuses_an_empty_credential_file(tmp_path):
    (tmp_path / "default_bot").write_text("")
    with pytest.raises(OSError, match="not a usable proxy credential"):
        ensure_token(tmp_path, "default/bot")
