"""Explicit-mode proxy credentials (issue 11, item 4): the token an agent must give as the
SOCKS5 / HTTP CONNECT password for its username to count.

A credential is a file in one directory, named `NAMESPACE_NAME` (`_` is in neither a
namespace nor an agent name), holding the token.  That is the shape of a Kubernetes
Secret mounted as a volume (one key per agent), and of `STATE/proxy-credentials/`,
where `clrk run --explicit` keeps one token per agent for `clrk up`.  Each lookup reads
the agent's file (one small read per explicit-mode connection), so a new or rotated
token counts from the next connection on; a Secret update swaps a symlink, which the
open follows.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

MAX_TOKEN = 4096  # bytes; a longer file is no token of ours
DIRECTORY_MODE = 0o700


def file_name(ref: str) -> str:
    """`namespace/name` -> the credential's file name."""
    namespace, _, name = ref.partition("/")
    return f"{namespace}_{name}"


def matches(token: str, password: str | None) -> bool:
    """Constant-time; an empty token matches nothing (a credential that cannot be used
    must not become "no password needed")."""
    if not token or password is None:
        return False
    return hmac.compare_digest(token.encode(), password.encode())


class ProxyCredentials:
    """The credentials of one directory (None: none configured)."""

    def __init__(self, directory: str | os.PathLike | None) -> None:
        self.directory = Path(directory) if directory is not None else None

    @property
    def configured(self) -> bool:
        return self.directory is not None

    def token_for(self, ref: str) -> str | None:
        """The agent's token; None when it has no credential.  A credential file that
        cannot be read yields "" (configured, matches nothing): fail closed."""
        if self.directory is None:
            return None
        return _read_token(self.directory / file_name(ref))


def _read_token(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_TOKEN + 1)
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    if len(data) > MAX_TOKEN:
        return ""
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""


def ensure_token(directory: str | os.PathLike, ref: str) -> str:
    """The agent's token in `directory`, made (random, file 0600, directory 0700) when
    there is none yet.  OSError when the directory cannot be read or written."""
    directory = Path(directory)
    directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    path = directory / file_name(ref)
    token = secrets.token_urlsafe(32)  # URL-safe: it goes into proxy URLs as it is
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = _read_token(path)
        if not existing:
            raise OSError(f"{path}: not a usable proxy credential (empty or unreadable)") from None
        return existing
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token
