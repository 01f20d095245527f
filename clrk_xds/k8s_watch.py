"""List, then watch, one kind of custom object (or any list the client makes: the
Secrets of one name in one namespace), in a thread of its own.

The official client is synchronous, so each watch runs in a thread and hands what it
sees to the event loop (`emit`):

- `("LIST", kind, items)` after every list: the whole current set of that kind, which
  replaces what the consumer held (after a `410 Gone` nothing is lost or doubled);
- `(type, kind, object)` for each ADDED, MODIFIED or DELETED event.

A watch resumes from the last resourceVersion it saw, bookmarks included (they move
it on without an object); a `410 Gone` (that version is compacted away) relists; any
other error (the API server restarting, a dropped connection) waits with exponential
backoff and jitter, then resumes from where it was.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import socket
import threading
from collections.abc import Callable

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from clrk_runtime.logs import fields

log = logging.getLogger("clrk_xds.k8s_watch")

Emit = Callable[[tuple[str, str, object]], None]

BACKOFF_FIRST, BACKOFF_MAX = 0.2, 30.0


class ListWatcher:
    """`lister`: a list call of the official client with its arguments bound (it takes
    the watch's keyword arguments too).  `redact`: log an error by its type and HTTP
    status only (what it watches is secret: no message may quote an object)."""

    def __init__(
        self,
        lister: Callable[..., object],
        kind: str,
        emit: Emit,
        *,
        name: str,
        watch_timeout: int = 300,
        backoff_max: float = BACKOFF_MAX,
        redact: bool = False,
    ) -> None:
        self.lister, self.kind, self.emit, self.redact = lister, kind, emit, redact
        self.watch_timeout = watch_timeout  # the server ends a watch after this; resumed
        self.backoff_max = backoff_max
        self.resource_version: str | None = None
        self.lists = 0  # how many times it listed: 1 + relists after 410
        self.error: str | None = None  # the last error, until a list or watch succeeds
        self._stop = threading.Event()
        # The response being read (a list's or a watch's): `signal` shuts its socket down.
        self._response: object | None = None
        self._responding = threading.Lock()
        # what a watch makes of the lister's items: found by its docstring, not `_open`'s
        self._return_type = watch.Watch().get_return_type(lister)
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def signal(self) -> None:
        """Ask the thread to end, without waiting for it."""
        self._stop.set()
        with self._responding:
            response = self._response
        _shut(response)  # the blocked read returns

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.signal()
        self.join(timeout=5)

    def _timeout(self) -> tuple[float, float]:
        # connect, read: a read may wait a whole watch, and a little more
        return (5.0, self.watch_timeout + 15.0)

    def _open(self, *args: object, **kwargs: object) -> object:
        """The list or watch request.  A `signal` while it was being made found no
        response to shut down: its stop is seen here, before anything is read."""
        response = self.lister(*args, **kwargs)
        with self._responding:
            self._response = response
            stopped = self._stop.is_set()
        if stopped:
            _shut(response)
        return response

    def _closed(self) -> None:
        with self._responding:
            self._response = None

    def _list(self) -> None:
        # The JSON as the server sent it: the client's models would rename its fields.
        response = self._open(_preload_content=False, _request_timeout=self._timeout())
        try:
            listed = json.loads(response.data)
        finally:
            self._closed()
            response.release_conn()  # back to the pool, as a preloaded call does
        self.resource_version = listed["metadata"]["resourceVersion"]
        self.lists += 1
        self.error = None
        self.emit(("LIST", self.kind, listed.get("items") or []))

    def _watch_once(self) -> None:
        w = watch.Watch(return_type=self._return_type)
        try:
            for event in w.stream(
                self._open,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                _request_timeout=self._timeout(),
            ):
                if self._stop.is_set():
                    return
                if w.resource_version is not None:
                    self.resource_version = w.resource_version  # bookmarks move it too
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self.emit((event["type"], self.kind, event["raw_object"]))
        finally:
            self._closed()

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            fresh = self.resource_version is None
            try:
                if fresh:
                    self._list()
                self._watch_once()
                delay = BACKOFF_FIRST
            except ApiException as exc:
                if self._stop.is_set():
                    return
                if exc.status == 410:
                    log.info("k8s.relist", extra=fields(kind=self.kind, reason="410 Gone"))
                    self.resource_version = None
                    if fresh:  # gone right after a list: do not spin on the server
                        delay = self._pause(delay, "410 Gone right after a list")
                    continue
                reason = "" if self.redact else f" {exc.reason}"
                delay = self._pause(delay, f"{exc.status}{reason}")
            except Exception as exc:  # a dropped connection, a restarting API server
                if self._stop.is_set():
                    return
                message = "" if self.redact else f": {exc}"
                delay = self._pause(delay, f"{type(exc).__name__}{message}")

    def _pause(self, delay: float, error: str) -> float:
        self.error = error
        log.warning("k8s.watch_error", extra=fields(kind=self.kind, error=error, retry_in=delay))
        self._stop.wait(delay * random.uniform(0.8, 1.2))
        return min(delay * 2, self.backoff_max)


def _shut(response: object) -> None:
    """Shut the socket of a response being read down (not closed: the reading thread
    owns it), so that a read blocked on it returns at once."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class KindWatcher(ListWatcher):
    """Every object of one custom kind, cluster-wide."""

    def __init__(
        self,
        api: client.ApiClient,
        group: str,
        version: str,
        kind: str,
        plural: str,
        emit: Emit,
        *,
        watch_timeout: int = 300,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        custom = client.CustomObjectsApi(api)
        lister = functools.partial(custom.list_cluster_custom_object, group, version, plural)
        super().__init__(
            lister,
            kind,
            emit,
            name=plural,
            watch_timeout=watch_timeout,
            backoff_max=backoff_max,
        )
