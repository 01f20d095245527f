"""The values of EgressCredentials, read from their sources for Envoy's SDS.

The control plane is the only process that reads a secret: the translator names it
(`translate_credentials.secret_name`) and `CredentialSecrets` turns a compiled
credential into the generic Secret Envoy fetches over ADS.  Nothing here logs, returns
or raises with the value; a source that cannot be read (or holds bytes no header may
carry) gives an empty secret, so Envoy answers that credential's requests with 401
instead of sending them without it, and the error (naming the credential and its
source, never the value) is logged and listed by `problems`.

File sources are re-read on every translation; `changed()` tells the control plane's
poller that a file's content differs from what was last served, and a reload puts the
new value in force (only the secret changes, so no listener drains).  A secretRef is
read from `secret_refs` (the Kubernetes provider's watched Secrets, `k8s_secrets`), in
the credential's own namespace; whoever holds them replans when one changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from envoy_data_plane.envoy.config.core.v3 import DataSource
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import GenericSecret, Secret

from clrk.policy.compiled import CompiledCredential
from clrk_runtime.logs import fields
from clrk_xds.translate_credentials import secret_name

log = logging.getLogger("clrk_xds.credentials")

MAX_SECRET = 16 * 1024  # longer is no header value


def _usable(value: bytes) -> str | None:
    """Why `value` cannot be a header value, or None."""
    if not value:
        return "it is empty"
    if len(value) > MAX_SECRET:
        return f"it is longer than {MAX_SECRET} bytes"
    if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
        return "it holds control characters (only a trailing newline is dropped)"
    return None


class SecretUnavailable(Exception):
    """A secretRef that gives no value; the message names the Secret and key only."""


class SecretReader(Protocol):
    def read(self, namespace: str, name: str, key: str) -> bytes: ...


class CredentialSecrets:
    """The translator's `credential_secret`; one per control plane."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, secret_refs: SecretReader | None = None
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.secret_refs = secret_refs
        self._served: dict[str, str] = {}  # file path -> digest of what was served
        self.problems: dict[str, str] = {}  # credential -> why its secret is empty

    def __call__(self, credential: CompiledCredential) -> Secret:
        value = self._read(credential)
        return Secret(
            name=secret_name(credential.ref),
            generic_secret=GenericSecret(secret=DataSource(inline_bytes=value)),
        )

    def _read(self, credential: CompiledCredential) -> bytes:
        where = f"{credential.source} {credential.source_ref}"
        try:
            raw = self._raw(credential)
        except OSError as exc:
            return self._fail(credential, where, f"cannot be read: {exc.strerror or exc}")
        except SecretUnavailable as exc:
            return self._fail(credential, where, str(exc))
        if raw is None:
            return self._fail(credential, where, "is not set")
        value = raw.removesuffix(b"\n").removesuffix(b"\r")
        problem = _usable(value)
        if problem:
            return self._fail(credential, where, problem)
        self.problems.pop(credential.ref, None)
        return value

    def _raw(self, credential: CompiledCredential) -> bytes | None:
        if credential.source == "file":
            path = credential.source_ref
            raw = Path(path).read_bytes()
            self._served[path] = hashlib.sha256(raw).hexdigest()
            return raw
        if credential.source == "env":
            value = self.environ.get(credential.source_ref)
            return None if value is None else value.encode()
        if self.secret_refs is None:
            raise OSError("only the Kubernetes provider resolves a secretRef")
        namespace = credential.ref.partition("/")[0]  # never another namespace
        name, _, key = credential.source_ref.partition("/")
        return self.secret_refs.read(namespace, name, key)

    def _fail(self, credential: CompiledCredential, where: str, problem: str) -> bytes:
        if credential.source == "file":
            self._served[credential.source_ref] = ""
        if self.problems.get(credential.ref) != problem:
            log.error(
                "credential.unreadable",
                extra=fields(credential=credential.ref, source=where, problem=problem),
            )
        self.problems[credential.ref] = problem
        return b""

    def changed(self) -> bool:
        """A file source's content is not what was last served (or it appeared or
        vanished since).  Each change is reported once: a file no credential reads any
        more must not make the control plane reload forever."""
        changed = False
        for path, digest in list(self._served.items()):
            try:
                now = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError:
                now = ""
            if now != digest:
                self._served[path] = now
                changed = True
        return changed
