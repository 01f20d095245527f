"""What `clrk run` puts in an agent's environment for the gateway's credentials."""

from __future__ import annotations

from clrk.policy.compiled import CompiledCredential
from clrk_cli import credential_env


def cred(name: str, env: str | None, source: str, ref: str) -> CompiledCredential:
    return CompiledCredential(
        f"default/{name}", "default/api", (), "x-api-key", "", f"clrk-placeholder-{name}",
        env, source, ref,
    )  # fmt: skip


def test_placeholders_are_set_and_the_secrets_own_variables_removed() -> None:
    env = {"ANTHROPIC_API_KEY": "sk-real", "GITHUB_TOKEN": "ghp-real", "PATH": "/bin"}
    credential_env.apply(
        env,
        [
            cred("anthropic", "ANTHROPIC_API_KEY", "env", "ANTHROPIC_API_KEY"),
            cred("github", None, "env", "GITHUB_TOKEN"),
            cred("file", "FILE_KEY", "file", "/run/secrets/key"),
        ],
    )
    assert env == {
        "ANTHROPIC_API_KEY": "clrk-placeholder-anthropic",
        "FILE_KEY": "clrk-placeholder-file",
        "PATH": "/bin",
    }


def test_an_unreachable_control_plane_is_an_error_not_an_agent_with_the_real_keys(
    tmp_path,
) -> None:
    try:
        credential_env.gateway_credentials(f"unix:{tmp_path}/none.sock", "default/gw", 2.0)
    except credential_env.CredentialEnvError as exc:
        assert "default/gw" in str(exc)
    else:
        raise AssertionError("no error")
