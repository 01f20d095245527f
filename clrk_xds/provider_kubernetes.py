"""The Kubernetes provider: the clrk custom objects of a cluster, listed and watched,
through the same pipeline as files, with status written back.

Each kind is listed and then watched (`k8s_watch.KindWatcher`).  After the first list
of every kind, and after every burst of events since, the whole set of objects is
decoded into documents (name, namespace, labels, spec: what the loader reads) and goes
`load_documents` -> `plan` -> `Provider.apply`, exactly as files do; an invalid set
keeps the last good policy.  An event that changes no document (a status write, a
resourceVersion) changes nothing.

An EgressCredential's secretRef is read from the Secret of that name in the
credential's namespace, watched by name (`k8s_secrets.SecretStore`); a change of it
replans (only the SDS secret differs), a missing Secret or key fails that credential's
requests closed (401) and says so in its ResolvedRefs condition.

Status (Accepted, Programmed, ResolvedRefs, observedGeneration, `k8s_status`) is
written through the status subresource, only where it differs from what the object
holds, and only by the replica holding the Lease (`k8s_lease`); every replica serves.
Programmed counts the ACKs of the Envoys connected to any replica: each publishes its
own (`k8s_acks`).

Cross-namespace references: a route may name a gateway in another namespace
(parentRefs[].namespace) and an agent `namespace/name` in gatewayRef, as with files;
there is no allowedRoutes-style consent by the gateway's namespace yet, so whoever may
create routes in any namespace may attach them to any gateway (grant create on these
kinds accordingly).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError
from urllib3.util.retry import Retry

from clrk.api import load_documents
from clrk.api.crds import VERSION, plural
from clrk.api.resources import GROUP, SPEC_MODELS, Source
from clrk_runtime.logs import fields
from clrk_xds.consistency import CLUSTER, LISTENER
from clrk_xds.credential_secrets import CredentialSecrets
from clrk_xds.k8s_acks import AckBoard, Report, report_of
from clrk_xds.k8s_lease import TIMEOUT, LeaseElector
from clrk_xds.k8s_secrets import SecretStore
from clrk_xds.k8s_status import Ack, Key, desired_conditions, same_status, status_body
from clrk_xds.k8s_watch import KindWatcher
from clrk_xds.provider import Plan, Provider, plan

log = logging.getLogger("clrk_xds.provider_kubernetes")

LEASE_RETRY_SECONDS = 2.0
# How long a stop waits for the status and Lease loops to finish the calls in hand (at
# most two of `TIMEOUT` each) before it cancels them.
LOOPS_END_SECONDS = 20.0


def _meta(obj: Mapping) -> Mapping:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def key_of(obj: Mapping) -> Key:
    meta = _meta(obj)
    return (str(obj.get("kind")), str(meta.get("namespace", "")), str(meta.get("name", "")))


def policy_document(obj: Mapping) -> dict:
    """What of an object the loader reads: server-managed fields and status carry no
    policy, and leaving them out makes a status write no change of the set."""
    meta = _meta(obj)
    doc = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if k in meta},
    }
    if "spec" in obj:
        doc["spec"] = obj["spec"]
    return doc


def source_of(key: Key) -> Source:
    kind, namespace, name = key
    return Source(f"kubernetes:{namespace}/{plural(kind)}/{name}", 1)


@dataclass
class KubernetesProvider(Provider):
    api: client.ApiClient | None = None
    kinds: tuple[str, ...] = tuple(SPEC_MODELS)
    # node id -> {type_url: TypeStatus} (AdsServer.status); None: in force is programmed
    ads_status: Callable[[str], Mapping] | None = None
    elector: LeaseElector | None = None  # None: this replica writes status
    acks: AckBoard | None = None  # shares ACKs between replicas; None: this one's only
    # The Secrets credentials name, and the translator's reader of them (whose problems
    # status reports); None: a secretRef is a finding, as with files.
    secrets: SecretStore | None = None
    credentials: CredentialSecrets | None = None
    debounce_ms: int = 50
    watch_timeout: int = 300
    backoff_max: float = 30.0
    lease_retry: float = LEASE_RETRY_SECONDS
    resync: float = 10.0  # seconds between status passes without a change
    status_writes: int = field(default=0, init=False)
    _objects: dict[Key, dict] = field(default_factory=dict, init=False)
    _listed: set[str] = field(default_factory=set, init=False)
    _documents: dict[Key, dict] = field(default_factory=dict, init=False)
    _in_force: dict[Key, dict] = field(default_factory=dict, init=False)
    _programmed: dict[Key, dict] = field(default_factory=dict, init=False)  # ACKed versions
    _peer_reports: list[Report] = field(default_factory=list, init=False)
    _plan: Plan | None = field(default=None, init=False)
    _secrets_version: int = field(default=-1, init=False)  # of the Secrets planned with
    _dirty: asyncio.Event | None = field(default=None, init=False)
    watchers: list[KindWatcher] = field(default_factory=list, init=False)

    # --- the set ---------------------------------------------------------------------

    def _handle(self, item: tuple[str, str, object]) -> None:
        what, kind, payload = item
        if what == "SECRET":
            return  # a Secret a credential reads changed: the reload replans
        if what == "LIST":
            for key in [k for k in self._objects if k[0] == kind]:
                del self._objects[key]
            for obj in payload if isinstance(payload, list) else []:
                if isinstance(obj, dict):
                    obj = {**obj, "kind": kind}  # list items may leave the kind out
                    self._objects[key_of(obj)] = obj
            self._listed.add(kind)
        elif not isinstance(payload, dict):
            log.warning("k8s.bad_event", extra=fields(kind=kind, type=what))
        elif what == "DELETED":
            self._objects.pop(key_of({**payload, "kind": kind}), None)
        else:
            self._objects[key_of({**payload, "kind": kind})] = {**payload, "kind": kind}

    @property
    def synced(self) -> bool:
        return self._listed >= set(self.kinds)

    async def reload(self, *, only_if_changed: bool = False) -> bool:
        """Plan the objects held now and install them if valid; True if a new set is
        in force.  Nothing happens before every kind has been listed once.
        `only_if_changed`: skip when neither the documents nor the Secrets changed (the
        watch loop: a status write comes back as an event).  Leaf renewal, address
        changes and credential files replan the same documents, so they never skip."""
        if not self.synced:
            return False
        async with self._reloading:
            documents = {key: policy_document(obj) for key, obj in sorted(self._objects.items())}
            version = self.secrets.version if self.secrets is not None else 0
            unchanged = (documents, version) == (self._documents, self._secrets_version)
            if only_if_changed and self._plan is not None and unchanged:
                return False
            assert self.translator is not None
            load = load_documents(
                ((source_of(key), doc) for key, doc in documents.items()),
                secret_refs=self.secrets is not None,
            )
            if self.secrets is not None:
                await asyncio.to_thread(self.secrets.want, secret_refs(load.resources))
                version = self.secrets.version
            new = await asyncio.to_thread(plan, load, self.translator)
            applied = self.apply(new)
            self._documents, self._plan, self._secrets_version = documents, new, version
            if not new.blocked:
                self._in_force = documents
        self.poke()
        return applied

    # --- status ----------------------------------------------------------------------

    def poke(self, *_: object) -> None:
        """Something status depends on changed (a plan, an ACK, the Lease)."""
        if self._dirty is not None:
            self._dirty.set()

    def _ack(self, node: str) -> Ack:
        if self.ads_status is None:
            return Ack("acked")
        snap = self.cache.get(node)
        if snap is None:
            return Ack("pending")
        # (acked, nacked, message) per type, from this replica and the others
        seen: dict[str, list[list]] = {}
        for type_url, st in self.ads_status(node).items():
            seen.setdefault(type_url, []).append(
                [st.acked_version, st.nacked_version, st.nack_message]
            )
        for report in self._peer_reports:
            by_type = report.get(node)
            for type_url, entry in by_type.items() if isinstance(by_type, dict) else ():
                if isinstance(entry, list) and len(entry) == 3:
                    seen.setdefault(type_url, []).append(entry)
        for type_url in (CLUSTER, LISTENER):
            want = snap.version_of(type_url)
            entries = seen.get(type_url, [])
            if any(acked == want for acked, _n, _m in entries):
                continue
            for _a, nacked, message in entries:
                if nacked == want:
                    return Ack("nacked", str(message or "rejected"))
            return Ack("pending")
        return Ack("acked")

    def _is_in_force(self, key: Key) -> bool:
        doc = self._documents.get(key)
        return doc is not None and self._in_force.get(key) == doc

    def due_statuses(self) -> list[tuple[dict, dict]]:
        """(object, status to write) wherever the object's status differs."""
        if self._plan is None:
            return []
        out = []
        desired = desired_conditions(
            self._plan,
            self._is_in_force,
            self._ack,
            lambda key: (
                key in self._programmed and self._programmed[key] == self._documents.get(key)
            ),
            self.credentials.problems.get if self.credentials is not None else None,
        )
        for key, conds in sorted(desired.items()):
            if conds[1].status:
                self._programmed[key] = self._documents.get(key, {})
            else:
                self._programmed.pop(key, None)
            obj = self._objects.get(key)
            if obj is None:
                continue
            generation = _meta(obj).get("generation")
            generation = generation if isinstance(generation, int) else 0
            body = status_body(conds, generation, obj.get("status"))
            if not same_status(obj.get("status"), body):
                out.append((obj, body))
        return out

    def _write(self, obj: dict, status: dict) -> dict | None:
        """PUT the status with the object's resourceVersion; on a 409 once more on a
        fresh read of the same generation.  The object as the server returns it."""
        custom = client.CustomObjectsApi(self.api)
        kind, namespace, name = key_of(obj)
        for _ in range(2):
            body = copy.deepcopy(obj)
            body["status"] = status
            try:
                written = custom.replace_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural(kind), name, body, **TIMEOUT
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None  # deleted meanwhile
                if exc.status != 409:
                    raise
                # read through the status subresource: RBAC grants get there only
                fresh = custom.get_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural(kind), name, **TIMEOUT
                )
                same_generation = _meta(fresh).get("generation") == _meta(obj).get("generation")
                if not same_generation or same_status(fresh.get("status"), status):
                    return fresh  # a newer edit gets its own status; or nothing to do
                obj = fresh
                continue
            self.status_writes += 1
            log.info(
                "k8s.status_written",
                extra=fields(object=f"{kind} {namespace}/{name}", status=status),
            )
            return written
        return None

    def _write_all(
        self, due: list[tuple[dict, dict]], halted: Callable[[], bool]
    ) -> list[tuple[dict, dict]]:
        """(object written from, object the server returned) of each write done; none
        after `halted()` (a stop waits for this thread)."""
        out = []
        for obj, status in due:
            if halted():
                break
            try:
                written = self._write(obj, status)
            except Exception as exc:  # the next change or ACK tries again
                log.warning("k8s.status_failed", extra=fields(error=str(exc)))
                continue
            if written is not None:
                out.append((obj, written))
        return out

    def writes_status(self) -> bool:
        return self.elector is None or self.elector.leader

    async def _status_loop(self, halt: asyncio.Event) -> None:
        assert self._dirty is not None
        while not halt.is_set():
            # Also every `resync` seconds: a write that failed (the API server away, a
            # missing permission) is tried again without waiting for the next change.
            await _until_set(self._dirty, halt, self.resync)
            await _until_set(halt, timeout=self.debounce_ms / 1000)  # a burst of ACKs
            if halt.is_set():
                return
            self._dirty.clear()
            try:
                await self._share_acks(halt)
                if self.writes_status() and not halt.is_set():
                    await self._write_due(halt)
            except Exception:  # status must not stop serving; the resync retries
                log.exception("k8s.status_failed")

    async def _share_acks(self, halt: asyncio.Event) -> None:
        """Publish this replica's ACKs; the writer also reads the others'."""
        if self.acks is None or self.ads_status is None:
            return
        own = report_of({node: self.ads_status(node) for node in sorted(self._nodes)})
        await asyncio.to_thread(self.acks.publish, own)
        if self.writes_status() and not halt.is_set():
            self._peer_reports = await asyncio.to_thread(self.acks.others)

    async def _write_due(self, halt: asyncio.Event) -> None:
        due = self.due_statuses()
        if not due:
            return
        for before, written in await asyncio.to_thread(self._write_all, due, halt.is_set):
            key = key_of(before)
            held = self._objects.get(key)
            # Unless a watch event came meanwhile (ours, or a newer edit), hold what
            # was written: the next pass must not write it again.
            if held is not None and _rv(held) == _rv(before) and isinstance(written, dict):
                self._objects[key] = {**written, "kind": key[0]}

    async def _lease_loop(self, halt: asyncio.Event) -> None:
        assert self.elector is not None
        while not halt.is_set():
            was = self.elector.leader
            if await asyncio.to_thread(self.elector.campaign) and not was:
                self.poke()  # a new writer checks every object once
            await _until_set(halt, timeout=self.lease_retry)

    # --- running ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Watch every kind until `stop` is set; reload after every burst of changes."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, str, object]] = asyncio.Queue()
        self._dirty = asyncio.Event()

        def emit(item: tuple[str, str, object]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        if self.secrets is not None:
            self.secrets.on_change = lambda: emit(("SECRET", "Secret", None))

        self.watchers = [
            KindWatcher(
                self.api,
                GROUP,
                VERSION,
                kind,
                plural(kind),
                emit,
                watch_timeout=self.watch_timeout,
                backoff_max=self.backoff_max,
            )
            for kind in self.kinds
        ]
        for watcher in self.watchers:
            watcher.start()
        # The loops end at `halt`, after the call in hand: cancelled, a call in a thread
        # would run on after `run` returned (and a Lease round renew after the release).
        halt = asyncio.Event()
        tasks = [asyncio.create_task(self._status_loop(halt))]
        if self.elector is not None:
            tasks.append(asyncio.create_task(self._lease_loop(halt)))
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                getting = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getting, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if getting not in done:
                    getting.cancel()
                    break
                self._handle(getting.result())
                await asyncio.sleep(self.debounce_ms / 1000)
                while not queue.empty():
                    self._handle(queue.get_nowait())
                try:
                    await self.reload(only_if_changed=True)
                except Exception:  # a bug must not stop the watch: the last set stays
                    log.exception("k8s.reload_failed")
                self.poke()  # a status edited by someone else is set right again
        finally:
            halt.set()
            stopping.cancel()
            # To its end even if `run` is cancelled meanwhile (the server's stop does):
            # the Lease released, no thread left behind.
            await _to_the_end(self._shutdown(tasks))

    async def _shutdown(self, tasks: list[asyncio.Task]) -> None:
        for watcher in self.watchers:
            watcher.signal()
        if self.elector is not None:
            self.elector.stopping()  # a round in hand writes nothing more
        _done, late = await asyncio.wait(tasks, timeout=LOOPS_END_SECONDS)
        for task in late:  # a call that outlived its timeout: say so, and go on
            log.warning("k8s.stop_overdue", extra=fields(task=task.get_name()))
            task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("k8s.loop_failed", exc_info=task.exception())
        # First the Lease, so that another replica writes status at once; then the
        # watch threads, joined together (not one executor thread each).
        if self.elector is not None:
            await asyncio.to_thread(self.elector.release)
        await asyncio.to_thread(_join_all, self.watchers, 5.0)
        if self.secrets is not None:
            await asyncio.to_thread(self.secrets.stop)


def secret_refs(resources) -> set[tuple[str, str]]:
    """(namespace, name) of every Secret a credential's secretRef names: always in the
    credential's own namespace."""
    return {
        (res.namespace, res.spec.source.secret_ref.name)
        for res in resources
        if res.kind == "EgressCredential" and res.spec.source.secret_ref is not None
    }


async def _until_set(
    event: asyncio.Event, also: asyncio.Event | None = None, timeout: float | None = None
) -> None:
    """Until `event` (or `also`) is set, or `timeout` seconds passed.  Not
    `asyncio.wait_for(event.wait(), timeout)`: on Python 3.11 that returns, instead of
    raising, when its task is cancelled just as the event is set, and the loop it is in
    runs on: that made a stop wait for ever."""
    waits = [asyncio.ensure_future(e.wait()) for e in (event, also) if e is not None]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _to_the_end(work: Coroutine[object, object, None]) -> None:
    """Await `work` to its end even if the awaiting task is cancelled meanwhile; then
    raise the cancellation."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


def _join_all(watchers: list[KindWatcher], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for watcher in watchers:
        watcher.join(max(0.0, deadline - time.monotonic()))


def _rv(obj: Mapping) -> object:
    """resourceVersion: opaque, compared for equality only."""
    return _meta(obj).get("resourceVersion")


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In a pod, its service account; else the kubeconfig (`--kubeconfig` or the
    default one, `$KUBECONFIG` or ~/.kube/config)."""
    import os

    from kubernetes import config

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config(config_file=kubeconfig)
    return client_of(client.Configuration.get_default_copy())


def client_of(configuration: client.Configuration) -> client.ApiClient:
    """An ApiClient that does not try a timed-out call again: every call here has a
    timeout and a loop of its own that tries again, and the client's retries (three by
    default, read timeouts included) would make a hung call hold a stop four times as
    long.  A kept-alive connection the server had closed is still tried once more."""
    configuration.retries = _NoRetryAfterTimeout(total=1)
    return client.ApiClient(configuration)


class _NoRetryAfterTimeout(Retry):
    def increment(self, method=None, url=None, response=None, error=None, *args, **kw):
        if isinstance(error, ConnectTimeoutError | ReadTimeoutError):
            raise error  # its timeout is all a hung call gets
        return super().increment(method, url, response, error, *args, **kw)


def provider_factory(
    api: client.ApiClient, elector: LeaseElector | None = None, **options: object
) -> Callable[..., KubernetesProvider]:
    """`ControlPlane.provider_factory` of a Kubernetes provider whose status counts the
    ACKs of that control plane's ADS server.  To resolve secretRefs, `options` hold
    `secrets` (a SecretStore) and `credentials` (the translator's CredentialSecrets,
    reading from it)."""

    def make(cache, hub, translator, ads) -> KubernetesProvider:
        provider = KubernetesProvider(
            cache,
            hub,
            translator,
            api=api,
            ads_status=ads.status,
            elector=elector,
            **options,  # type: ignore[arg-type]
        )
        ads.on_status.append(provider.poke)
        return provider

    return make
