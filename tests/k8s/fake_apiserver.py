"""A fake Kubernetes API server, speaking the real REST and watch wire protocol.

It stands in for a cluster because none can run on these machines (no container
runtime, no kubelet, no etcd).  What it implements is what the Kubernetes provider
and the official client rely on, over real HTTP/1.1:

- custom objects of the clrk CRDs, checked against the CRD's schema and CEL rules at
  admission (422 Invalid), coordination.k8s.io/v1 Leases, and core v1 Secrets (`data`
  base64 on the wire, `stringData` folded into it on write, as the real API does);
- list (cluster-wide or per namespace) with the list's resourceVersion, and a
  `fieldSelector` on metadata.name or metadata.namespace (400 for any other field);
- watch from a resourceVersion as a chunked stream of JSON events, bookmarks when
  asked for (`allowWatchBookmarks`), timeoutSeconds, and `410 Gone` (an ERROR event
  with an Expired Status) for a version compacted away;
- create, update (PUT, 409 Conflict on a stale resourceVersion, metadata.generation
  bumped on a spec change), the status subresource (only status changes; 409 too),
  delete;
- `restart()`: the listener and every open watch go away and come back on the same
  port, the objects stay (etcd would keep them);
- `stall()`: the next requests of a method and path get no answer (a hung API server)
  until the server stops;
- RBAC for bearer tokens in `restricted` (403 Forbidden), so the provider runs with
  exactly the rights deploy/ grants the control plane; a grant limited to
  `resourceNames` allows a list or watch only with a `metadata.name` field selector
  naming one of them, as the real authorizer does.

It does not run defaulting, pruning, server-side apply, admission webhooks, or
authenticate beyond that token; a real cluster is the place to try those first.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import datetime
import json
import socket
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from clrk.api.crds import all_crds
from tests.k8s.openapi_check import problems
from tests.k8s.rbac import RBAC, Grant, allowed, control_plane_grants

LEASES = ("coordination.k8s.io", "v1", "leases")
SECRETS = ("", "v1", "secrets")  # the core group: /api/v1/...
WHOLE = {LEASES: "Lease", SECRETS: "Secret"}  # no schema, no status: written whole
FIELDS = ("metadata.name", "metadata.namespace")  # what a fieldSelector may name here

ResourceKey = tuple[str, str, str]  # group, version, plural
ObjectKey = tuple[str, str, str, str, str]  # group, version, plural, namespace, name


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Store:
    """The objects and their history (what etcd would keep)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[ObjectKey, dict] = {}
        self.events: list[tuple[int, ResourceKey, str, dict]] = []
        self.oldest = 0  # a watch from before this resourceVersion gets 410 Gone
        self.epoch = 0  # bumped to end every open watch (restart, expiry)
        self.expire_epoch = 0  # open watches of an older one end with 410
        self.bookmarks = 0  # bumped to send a bookmark on every open watch
        self.status_writes: Counter[tuple[str, str, str]] = Counter()
        self.kinds: dict[ResourceKey, tuple[str, dict | None]] = {}
        for crd in all_crds().values():
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (spec["group"], version["name"], spec["names"]["plural"])
                self.kinds[key] = (spec["names"]["kind"], version["schema"]["openAPIV3Schema"])
        for res, kind in WHOLE.items():
            self.kinds[res] = (kind, None)

    def bump(self) -> int:
        self.rv += 1
        return self.rv

    def record(self, res: ResourceKey, kind: str, obj: dict) -> None:
        self.events.append((int(obj["metadata"]["resourceVersion"]), res, kind, copy.deepcopy(obj)))
        self.cond.notify_all()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # --- plumbing --------------------------------------------------------------------

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _route(self):
        """(resource, namespace, name, subresource, query) or None."""
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if len(parts) >= 3 and parts[0] == "api":  # the core group
            parts = ["apis", "", *parts[1:]]
        if len(parts) < 4 or parts[0] != "apis":
            return None
        group, version, rest = parts[1], parts[2], parts[3:]
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        res = (group, version, rest[0])
        if res not in self.server.store.kinds or len(rest) > 3:
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return res, namespace, name, sub, query

    def _refused(self, method: str, route) -> bool:
        """RBAC of a restricted bearer token: 403 for what it was not granted."""
        res, namespace, name, sub, query = route
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        grants = self.server.restricted.get(token)
        if grants is None:
            return False
        resource = f"{res[2]}/{sub}" if sub else res[2]
        verb = self._verb(method, name, query)
        # a list or watch is of one named object only through a metadata.name selector
        named = name if name is not None else (_selected(query) or {}).get("metadata.name")
        if allowed(grants, res[0], resource, verb, namespace, named):
            return False
        self.server.forbidden.append((verb, resource, namespace))
        self._send(403, _status(403, "Forbidden", f"cannot {verb} {resource}"))
        return True

    def _verb(self, method: str, name: str | None, query: dict) -> str:
        if method == "GET" and name is None:
            return "watch" if query.get("watch") in ("true", "1") else "list"
        return {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}[method]

    def _dispatch(self, method: str) -> None:
        self.server.requests.append((method, self.path))
        if self.server.stalled(method, self.path):
            self.server.stopped.wait()  # no answer; the connection goes with the server
            self.close_connection = True
            return
        route = self._route()
        if route is None or self._refused(method, route):
            self.close_connection = True  # its body is left unread
            if route is not None:
                return
            self._send(404, _status(404, "NotFound", f"no route {self.path}"))
            return
        res, namespace, name, sub, query = route
        if sub not in (None, "status") or (sub == "status" and res in WHOLE):
            self.close_connection = True
            self._send(404, _status(404, "NotFound", f"no subresource {sub}"))
            return
        handler = getattr(self, f"_{method.lower()}")
        handler(res, namespace, name, sub, query)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- verbs -----------------------------------------------------------------------

    def _get(self, res, namespace, name, sub, query) -> None:
        store = self.server.store
        if name is None:
            selected = _selected(query)
            if selected is None:
                self._send(400, _status(400, "BadRequest", "field label not supported"))
                return
            if query.get("watch") in ("true", "1"):
                self._watch(res, namespace, query)
                return
            with store.cond:
                items = [
                    copy.deepcopy(obj)
                    for key, obj in sorted(store.objects.items())
                    if key[:3] == res and namespace in (None, key[3])
                    and _matches(obj, selected)
                ]  # fmt: skip
                kind = store.kinds[res][0]
                self._send(
                    200,
                    {
                        "apiVersion": f"{res[0]}/{res[1]}",
                        "kind": f"{kind}List",
                        "metadata": {"resourceVersion": str(store.rv)},
                        "items": items,
                    },
                )
            return
        with store.cond:
            obj = store.objects.get((*res, namespace or "", name))
            if obj is None:
                self._send(404, _status(404, "NotFound", f"{res[2]} {name!r} not found"))
            else:
                self._send(200, copy.deepcopy(obj))

    def _admit(self, res: ResourceKey, obj: dict) -> list[str]:
        schema = self.server.store.kinds[res][1]
        if schema is None:
            return []
        body = {k: v for k, v in obj.items() if k != "status"}
        return problems(body, schema)

    def _post(self, res, namespace, name, sub, query) -> None:
        store = self.server.store
        obj = self._body()
        if obj is None or namespace is None or name is not None:
            self._send(400, _status(400, "BadRequest", "a JSON object in a namespace"))
            return
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        if res == SECRETS and (bad := _secret_data(obj)):
            self._send(400, _status(400, "BadRequest", bad))
            return
        if found := self._admit(res, obj):
            self._send(422, _status(422, "Invalid", "; ".join(found)))
            return
        with store.cond:
            key = (*res, namespace, meta.get("name", ""))
            if key in store.objects:
                self._send(409, _status(409, "AlreadyExists", f"{key[4]!r} already exists"))
                return
            if store.kinds[res][1] is not None:
                obj.pop("status", None)  # the status subresource owns it
                meta["generation"] = 1
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            meta["resourceVersion"] = str(store.bump())
            store.objects[key] = obj
            store.record(res, "ADDED", obj)
            self._send(201, copy.deepcopy(obj))

    def _put(self, res, namespace, name, sub, query) -> None:
        store = self.server.store
        obj = self._body()
        if obj is None or namespace is None or name is None:
            self._send(400, _status(400, "BadRequest", "a JSON object, named"))
            return
        if res == SECRETS and (bad := _secret_data(obj)):
            self._send(400, _status(400, "BadRequest", bad))
            return
        if sub is None and (found := self._admit(res, obj)):
            self._send(422, _status(422, "Invalid", "; ".join(found)))
            return
        with store.cond:
            key = (*res, namespace, name)
            old = store.objects.get(key)
            if old is None:
                self._send(404, _status(404, "NotFound", f"{name!r} not found"))
                return
            given = (obj.get("metadata") or {}).get("resourceVersion")
            if given and given != old["metadata"]["resourceVersion"]:
                self._send(
                    409,
                    _status(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the "
                        "latest version and try again",
                    ),
                )
                return
            new = copy.deepcopy(old)
            if sub == "status":
                new["status"] = obj.get("status")
            elif store.kinds[res][1] is None:  # a Lease, a Secret: the whole object
                new = {**obj, "metadata": {**old["metadata"], **obj.get("metadata", {})}}
            else:
                meta = obj.get("metadata") or {}
                for field in ("labels", "annotations"):
                    if field in meta:
                        new["metadata"][field] = meta[field]
                    else:
                        new["metadata"].pop(field, None)
                new["spec"] = obj.get("spec")
                if new.get("spec") != old.get("spec"):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            if new == old:  # a no-op update: no new version, no event
                self._send(200, copy.deepcopy(old))
                return
            new["metadata"]["resourceVersion"] = str(store.bump())
            store.objects[key] = new
            if sub == "status":
                store.status_writes[(res[2], namespace, name)] += 1
            store.record(res, "MODIFIED", new)
            self._send(200, copy.deepcopy(new))

    def _delete(self, res, namespace, name, sub, query) -> None:
        store = self.server.store
        with store.cond:
            old = store.objects.pop((*res, namespace or "", name or ""), None)
            if old is None:
                self._send(404, _status(404, "NotFound", f"{name!r} not found"))
                return
            old["metadata"]["resourceVersion"] = str(store.bump())
            store.record(res, "DELETED", old)
            self._send(200, copy.deepcopy(old))

    # --- watch -----------------------------------------------------------------------

    def _chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, res: ResourceKey, namespace: str | None, query: dict) -> None:
        store = self.server.store
        kind = store.kinds[res][0]
        since = int(query.get("resourceVersion") or 0)
        selected = _selected(query) or {}
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with store.cond:
            epoch, expire, marks = store.epoch, store.expire_epoch, store.bookmarks
            gone = since < store.oldest
        if gone:
            self._chunk(
                {
                    "type": "ERROR",
                    "object": _status(
                        410, "Expired", f"too old resource version: {since} ({store.oldest})"
                    ),
                }
            )
            self._end()
            return
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        last = since
        try:
            while True:
                with store.cond:
                    store.cond.wait_for(
                        lambda marks=marks, last=last: (
                            store.epoch != epoch
                            or store.expire_epoch != expire
                            or store.bookmarks != marks
                            or deadline.is_set()
                            or (store.events and store.events[-1][0] > last)
                        ),
                        timeout=0.5,
                    )
                    if store.epoch != epoch:
                        self._abort()  # the server went away: no clean end
                        return
                    if store.expire_epoch != expire:
                        self._chunk({"type": "ERROR", "object": _status(410, "Expired", "expired")})
                        break
                    batch = [
                        (rv, t, obj)
                        for rv, r, t, obj in store.events
                        if rv > last and r == res
                        and namespace in (None, obj["metadata"].get("namespace"))
                        and _matches(obj, selected)
                    ]  # fmt: skip
                    last = max([last, *(e[0] for e in store.events)])
                    send_mark = bookmarks and store.bookmarks != marks
                    marks = store.bookmarks
                    current = store.rv
                for _rv, event_type, obj in batch:
                    self._chunk({"type": event_type, "object": obj})
                if send_mark:
                    self._chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "apiVersion": f"{res[0]}/{res[1]}",
                                "kind": kind,
                                "metadata": {"resourceVersion": str(current)},
                            },
                        }
                    )
                if deadline.is_set():
                    break
            self._end()
        except OSError:
            return
        finally:
            timer.cancel()

    def _end(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


def _selected(query: dict) -> dict[str, str] | None:
    """A fieldSelector as {field: value} (`a=b,c==d`); None if it names a field this
    server does not index (the real API answers 400 there too)."""
    out: dict[str, str] = {}
    for term in filter(None, query.get("fieldSelector", "").split(",")):
        field, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if not sep or field not in FIELDS:
            return None
        out[field] = value
    return out


def _matches(obj: dict, selected: dict[str, str]) -> bool:
    meta = obj.get("metadata") or {}
    return all(meta.get(f.removeprefix("metadata.")) == v for f, v in selected.items())


def _secret_data(obj: dict) -> str | None:
    """Fold `stringData` into `data` and check that `data` is base64, as the API server
    does on every write of a Secret; the problem, or None."""
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        return "data: must be a map of base64 strings"
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            return f"data[{key}]: illegal base64 data"
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    obj["data"] = data
    return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, store: _Store, requests: list, restricted: dict) -> None:
        self.store = store
        self.requests = requests
        self.restricted = restricted
        self.forbidden: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()  # kept-alive ones too
        self.stalls: list[list] = []  # [method, path, how many more]
        self.stopped = threading.Event()
        super().__init__(address, _Handler)

    def stalled(self, method: str, path: str) -> bool:
        with self.store.cond:
            for stall in self.stalls:
                if stall[0] == method and path.split("?")[0] == stall[1] and stall[2] > 0:
                    stall[2] -= 1
                    return True
        return False

    def close_connections(self) -> None:
        with self.lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class FakeApiServer:
    """Start with `start()` (or as a context manager); `url` is what a client uses."""

    def __init__(self) -> None:
        self.store = _Store()
        self.requests: list[tuple[str, str]] = []
        # bearer token -> what it may do (RBAC); any other client may do anything
        self.restricted: dict[str, frozenset[Grant]] = {}
        self.forbidden: list[tuple[str, str, str | None]] = []  # refused (verb, resource, ns)
        self.stalls: list[list] = []
        self.port = 0
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApiServer:
        self._http = _HTTPServer(
            ("127.0.0.1", self.port), self.store, self.requests, self.restricted
        )
        self._http.forbidden = self.forbidden
        self._http.stalls = self.stalls
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._http is None:
            return
        with self.store.cond:
            self.store.epoch += 1  # every open watch ends, abruptly
            self.store.cond.notify_all()
        self._http.stopped.set()  # stalled requests end without an answer
        self._http.shutdown()
        self._http.server_close()
        self._http.close_connections()
        self._http = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what a test does to the "cluster" -------------------------------------------

    def compact(self) -> int:
        """Forget the history so far: a watch from an older version gets 410 Gone.
        Returns the oldest version still watchable."""
        with self.store.cond:
            self.store.oldest = self.store.rv
            self.store.events = []
            return self.store.oldest

    def expire_watches(self) -> None:
        """End every open watch with 410 Gone, as after a compaction."""
        with self.store.cond:
            self.store.expire_epoch += 1
            self.store.cond.notify_all()

    def drop_watches(self) -> None:
        """Cut every open watch off (a load balancer, a network blip)."""
        with self.store.cond:
            self.store.epoch += 1
            self.store.cond.notify_all()

    def stall(self, method: str, path: str, times: int = 1) -> None:
        """Answer the next `times` requests of `method` to `path` (the query aside) not
        at all (they are held until the server stops), as a hung API server."""
        with self.store.cond:
            self.stalls.append([method, path, times])

    def stalls_left(self) -> int:
        """How many requests stalls are still waiting for."""
        with self.store.cond:
            return sum(stall[2] for stall in self.stalls)

    def bookmark(self) -> None:
        with self.store.cond:
            self.store.bookmarks += 1
            self.store.cond.notify_all()

    def objects(self, plural: str) -> dict[tuple[str, str], dict]:
        with self.store.cond:
            return {
                (k[3], k[4]): copy.deepcopy(v)
                for k, v in self.store.objects.items()
                if k[2] == plural
            }

    def put_directly(self, res: ResourceKey, obj: dict) -> None:
        """Change an object behind the server's back (the server being down): stored
        and recorded as an event, as another API server replica would."""
        with self.store.cond:
            meta = obj["metadata"]
            key = (*res, meta["namespace"], meta["name"])
            meta.setdefault("generation", 1)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = str(self.store.bump())
            kind = "MODIFIED" if key in self.store.objects else "ADDED"
            self.store.objects[key] = obj
            self.store.record(res, kind, obj)


def api_client(server: FakeApiServer, token: str | None = None):
    """The official client, configured for the fake server (with a bearer token, the
    rights `server.restricted` gives it)."""
    from kubernetes import client

    from clrk_xds.provider_kubernetes import client_of

    config = client.Configuration()
    config.host = server.url
    if token is not None:
        config.api_key = {"authorization": token}
        config.api_key_prefix = {"authorization": "Bearer"}
    return client_of(config)


def control_plane_client(server: FakeApiServer, *rbac: dict):
    """A client with the rights deploy/ gives the control plane's service account, and
    those of the RBAC objects `rbac` (the RoleBindings an operator adds)."""
    server.restricted["control-plane"] = control_plane_grants(RBAC, *rbac)
    return api_client(server, "control-plane")
