"""The Kubernetes Secrets that EgressCredentials name, watched one by one.

Least privilege: the control plane never lists or watches Secrets in general.  For
each (namespace, name) a credential's secretRef names (always the credential's own
namespace: a secretRef has no namespace field), one `ListWatcher` lists and watches
`/api/v1/namespaces/NS/secrets?fieldSelector=metadata.name=NAME`, so RBAC may grant
`list`/`watch` per namespace or only on those `resourceNames`.  `want()` starts the
watches of new names and stops those no credential names any more (forgetting their
values); `read()` is what `CredentialSecrets` asks for a value.

Every change of a held value calls `on_change` (the provider replans: only the SDS
secret differs, so Envoy swaps it without draining a listener).  Nothing here logs or
raises with a value: errors name the Secret and key only.
"""

from __future__ import annotations

import base64
import binascii
import functools
import threading
import time
from collections.abc import Callable, Iterable

from kubernetes import client

from clrk_xds.credential_secrets import SecretUnavailable
from clrk_xds.k8s_watch import ListWatcher

Ref = tuple[str, str]  # namespace, name of a Secret

FIRST_READ_WAIT = 2.0  # seconds a new credential waits for its Secret's first list


class SecretStore:
    def __init__(
        self,
        api: client.ApiClient,
        on_change: Callable[[], None] = lambda: None,
        *,
        watch_timeout: int = 300,
        backoff_max: float = 30.0,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.on_change = on_change
        self.watch_timeout, self.backoff_max = watch_timeout, backoff_max
        self.version = 0  # bumped on every change of what is held
        self._lock = threading.Lock()
        # None: listed and absent; missing: not listed yet
        self._data: dict[Ref, dict[str, str] | None] = {}
        self._watchers: dict[Ref, ListWatcher] = {}
        self._listed: dict[Ref, threading.Event] = {}

    # --- which Secrets ---------------------------------------------------------------

    def want(self, refs: Iterable[Ref], wait: float = FIRST_READ_WAIT) -> None:
        """Watch exactly `refs`; wait (at most `wait` seconds) for the first list of
        each new one, so a new credential starts with its value, not with a 401."""
        refs = set(refs)
        with self._lock:
            gone = [ref for ref in self._watchers if ref not in refs]
            new = sorted(refs - self._watchers.keys())
            for ref in gone:
                self._watchers.pop(ref).signal()
                self._listed.pop(ref, None)
                self._data.pop(ref, None)
            for ref in new:
                self._listed[ref] = threading.Event()
                self._watchers[ref] = self._watcher(ref, self._listed[ref])
            started = [(self._watchers[ref], self._listed[ref]) for ref in new]
        for watcher, _ in started:
            watcher.start()
        deadline = time.monotonic() + wait
        for _, listed in started:
            listed.wait(max(0.0, deadline - time.monotonic()))

    def _watcher(self, ref: Ref, listed: threading.Event) -> ListWatcher:
        namespace, name = ref
        lister = functools.partial(
            self.core.list_namespaced_secret,
            namespace,
            field_selector=f"metadata.name={name}",
        )
        return ListWatcher(
            lister,
            "Secret",
            functools.partial(self._seen, ref, listed),
            name=f"secret-{namespace}-{name}",
            watch_timeout=self.watch_timeout,
            backoff_max=self.backoff_max,
            redact=True,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """End every watch; wait for their threads `timeout` seconds in all."""
        with self._lock:
            watchers = list(self._watchers.values())
            self._watchers.clear()
            self._listed.clear()
        for watcher in watchers:
            watcher.signal()
        deadline = time.monotonic() + timeout
        for watcher in watchers:
            watcher.join(max(0.0, deadline - time.monotonic()))

    # --- what the watches see ----------------------------------------------------------

    def _seen(self, ref: Ref, listed: threading.Event, item: tuple[str, str, object]) -> None:
        """A watcher's emit, in its thread; `listed` is set at its first list (and tells
        this watcher from a stopped one of the same Secret)."""
        what, _kind, payload = item
        if what == "LIST":
            objs = [o for o in payload if isinstance(o, dict)] if isinstance(payload, list) else []
            mine = [o for o in objs if _name(o) == ref[1]]
            data = _data(mine[0]) if mine else None
        elif what == "DELETED":
            data = None
        elif isinstance(payload, dict) and _name(payload) == ref[1]:
            data = _data(payload)
        else:
            return
        with self._lock:
            if self._listed.get(ref) is not listed:
                return  # a stopped watch: no credential names it any more
            changed = ref not in self._data or self._data[ref] != data
            self._data[ref] = data
            if changed:
                self.version += 1
        listed.set()
        if changed:
            self.on_change()

    # --- values -----------------------------------------------------------------------

    def read(self, namespace: str, name: str, key: str) -> bytes:
        """The value of `key` in Secret namespace/name, or SecretUnavailable saying why
        (the caller names the Secret and key; never a value)."""
        ref = (namespace, name)
        with self._lock:
            if ref not in self._data:
                watcher = self._watchers.get(ref)
                error = watcher.error if watcher is not None else None
                raise SecretUnavailable(
                    "the Secret could not be read" + (f" ({error})" if error else " yet")
                )
            data = self._data[ref]
        if data is None:
            raise SecretUnavailable("the Secret does not exist")
        if key not in data:
            raise SecretUnavailable("the Secret has no such key")
        try:
            return base64.b64decode(data[key], validate=True)
        except (binascii.Error, ValueError):
            raise SecretUnavailable("the key's data is not base64") from None

    def watched(self) -> list[Ref]:
        with self._lock:
            return sorted(self._watchers)


def _name(obj: dict) -> object:
    meta = obj.get("metadata")
    return meta.get("name") if isinstance(meta, dict) else None


def _data(obj: dict) -> dict[str, str]:
    data = obj.get("data")
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
