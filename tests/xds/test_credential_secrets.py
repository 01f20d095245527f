"""Credential values from their sources: served as generic SDS secrets, never logged,
an unreadable source an empty secret (Envoy then answers 401), a changed file noticed."""

from __future__ import annotations

import logging

from clrk.policy.compiled import CompiledCredential
from clrk_xds.credential_secrets import CredentialSecrets, SecretUnavailable

SECRET = b"sk-test-0123456789"


def cred(source: str, ref: str) -> CompiledCredential:
    return CompiledCredential(
        "default/key", "default/api", (), "x-api-key", "", "clrk-placeholder-key", None, source, ref
    )


def value(secret) -> bytes:
    return secret.generic_secret.secret.inline_bytes


def test_a_file_is_served_without_its_trailing_newline_and_a_change_is_noticed(tmp_path) -> None:
    path = tmp_path / "key"
    path.write_bytes(SECRET + b"\n")
    secrets = CredentialSecrets({})
    secret = secrets(cred("file", str(path)))
    assert secret.name == "credential/default/key" and value(secret) == SECRET
    assert not secrets.changed()
    path.write_bytes(b"sk-rotated\n")
    assert secrets.changed()
    assert value(secrets(cred("file", str(path)))) == b"sk-rotated"
    assert not secrets.changed()


def test_an_env_source_reads_the_control_planes_environment() -> None:
    assert value(CredentialSecrets({"KEY": "abc"})(cred("env", "KEY"))) == b"abc"


def test_unreadable_sources_give_an_empty_secret_and_a_log_line_without_the_value(
    tmp_path, caplog
) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(SECRET + b"\r\nsecond line")
    secrets = CredentialSecrets({})
    with caplog.at_level(logging.ERROR, logger="clrk_xds.credentials"):
        for source, ref in (
            ("file", str(tmp_path / "missing")),
            ("env", "UNSET"),
            ("file", str(bad)),
        ):
            assert value(secrets(cred(source, ref))) == b""
    assert len(caplog.records) == 3
    assert all(SECRET.decode() not in r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "control characters" in secrets.problems["default/key"]


def test_a_change_is_reported_once_even_for_a_file_no_credential_reads_any_more(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(SECRET)
    secrets = CredentialSecrets({})
    secrets(cred("file", str(path)))
    path.write_bytes(b"sk-other")  # and the credential is gone: nothing reads it again
    assert secrets.changed()
    assert not secrets.changed()


class Secrets:
    """A SecretReader over a dict, recording what was asked for."""

    def __init__(self, held: dict) -> None:
        self.held, self.asked = held, []

    def read(self, namespace: str, name: str, key: str) -> bytes:
        self.asked.append((namespace, name, key))
        if (namespace, name, key) not in self.held:
            raise SecretUnavailable("the Secret does not exist")
        return self.held[(namespace, name, key)]


def test_a_secret_ref_is_read_in_the_credentials_namespace_and_fails_closed(caplog) -> None:
    reader = Secrets({("default", "anthropic", "api-key"): SECRET + b"\n"})
    secrets = CredentialSecrets({}, reader)
    assert value(secrets(cred("secretRef", "anthropic/api-key"))) == SECRET
    assert reader.asked == [("default", "anthropic", "api-key")]
    with caplog.at_level(logging.ERROR, logger="clrk_xds.credentials"):
        assert value(secrets(cred("secretRef", "anthropic/other"))) == b""
    assert secrets.problems["default/key"] == "the Secret does not exist"
    assert "secretRef anthropic/other" in str(caplog.records[0].__dict__)
    # without a reader (the file provider) a secretRef is never read
    assert value(CredentialSecrets({})(cred("secretRef", "anthropic/api-key"))) == b""
