"""Providers: documents from a source -> validated set -> compiled policy -> Envoy
snapshots and dialer policies, installed whole or not at all.

Every provider runs the same pipeline, `plan(load, translator)`: a `LoadResult` of
validated documents (from `clrk.api.load_paths` for files, `clrk.api.load_documents` for
decoded objects such as Kubernetes resources, each with a `Source` naming it) is
compiled once (`clrk.policy.loaded.compile_loaded`), and that compiled set is translated
into each gateway's Envoy snapshot and consistency-checked.  `Provider.apply` installs a
plan: the snapshots into the ADS cache, the compiled set into the policy hub (dialers).
If any step fails, nothing is installed: the last good set stays in force and the errors
are kept for `status()`.  A plan's `loaded` is also what status is written from
(`clrk_xds.admin_status.object_statuses`: Accepted and Programmed per object).

`FileProvider` reads files and reloads the whole set on every change (a burst of
writes is debounced into one reload).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from clrk.api import LoadResult
from clrk.api.loader import MANIFEST_SUFFIXES, ManifestCache, load_paths
from clrk.policy import PolicySet
from clrk.policy.compile import CompileCache
from clrk.policy.loaded import Loaded, compile_loaded
from clrk_runtime.logs import fields
from clrk_xds import gc_pause
from clrk_xds.consistency import CLUSTER, LISTENER, SECRET, check
from clrk_xds.policy_stream import PolicyHub
from clrk_xds.snapshot import EMPTY, InconsistentSnapshot, Snapshot, SnapshotCache

log = logging.getLogger("clrk_xds.provider")

# A compiled set -> {node id: GatewayResources}; `clrk_xds.translate.translate` with its
# options bound (`default_translator`).
Translator = Callable[[PolicySet], Mapping[str, object]]


@dataclass(frozen=True)
class Plan:
    """What installing one document set would do; `blocked` means nothing may be."""

    version: str
    loaded: Loaded  # the validated and compiled set, with every finding and condition
    snapshots: Mapping[str, Snapshot]
    errors: tuple[str, ...]  # every error, blocking or not, one line each
    blocked: bool

    @property
    def policies(self) -> PolicySet:
        return self.loaded.compiled


def _snapshot(node: str, res) -> tuple[Snapshot | None, list[str]]:
    try:
        snap = Snapshot.from_messages(res.listeners, res.clusters, res.secrets)
    except InconsistentSnapshot as exc:
        return None, [f"gateway {node}: {p}" for p in exc.problems]
    messages = {
        LISTENER: {m.name: m for m in res.listeners},
        CLUSTER: {m.name: m for m in res.clusters},
        SECRET: {m.name: m for m in res.secrets},
    }
    return snap, [f"gateway {node}: {p}" for p in check(snap.resources, messages)]


def plan(load: LoadResult, translator: Translator, compiled: CompileCache | None = None) -> Plan:
    """Compile, translate and consistency-check one validated set; no side effects but
    on `compiled`, the last compile of the same source, whose unchanged parts it reuses."""
    with gc_pause.paused():
        return _plan(load, translator, compiled)


def _plan(load: LoadResult, translator: Translator, compiled: CompileCache | None) -> Plan:
    loaded = compile_loaded(load, compiled)
    errors = [f.line() for f in loaded.findings if f.is_error]
    blocked = loaded.blocked
    snapshots: dict[str, Snapshot] = {}
    if not blocked:
        try:
            translated = translator(loaded.compiled)
        except Exception as exc:  # a translator bug must not take the server down
            log.exception("provider.translate_failed")
            return Plan(load.digest, loaded, {}, (*errors, f"translation failed: {exc}"), True)
        for node, res in sorted(translated.items()):
            try:
                snap, problems = _snapshot(node, res)
            except Exception as exc:  # messages built unvalidated are checked only here
                log.exception("provider.translate_failed")
                snap, problems = None, [f"gateway {node}: translation failed: {exc}"]
            errors += problems
            blocked = blocked or bool(problems)
            if snap is not None:
                snapshots[node] = snap
    return Plan(load.digest, loaded, snapshots, tuple(errors), blocked)


def read_manifests(paths: Sequence[str | Path], cache: ManifestCache | None = None) -> LoadResult:
    """One read of the files, validated.  With a cache, unchanged files are neither
    parsed nor validated again."""
    return load_paths(paths, cache)


def prepare(
    paths: Sequence[str | Path],
    translator: Translator,
    cache: ManifestCache | None = None,
    compiled: CompileCache | None = None,
) -> Plan:
    """`plan` of the files at `paths`."""
    with gc_pause.paused():
        return plan(read_manifests(paths, cache), translator, compiled)


def default_translator(
    own_addresses: Callable[[], Iterable[str]] | None = None, **options: object
) -> Translator:
    """`clrk_xds.translate.translate` with `options` and a chain cache of its own, so
    that a reload rebuilds only the routes that changed.  `own_addresses()`: the gateway
    host's addresses at the time of each translation (they change at run time)."""
    import functools

    from clrk_xds.translate import ChainCache, translate

    base = functools.partial(translate, cache=ChainCache(), **options)
    if own_addresses is None:
        return base
    current = own_addresses

    def translator(policies: PolicySet) -> Mapping[str, object]:
        return base(policies, own_addresses=tuple(current()))

    return translator


@dataclass(frozen=True)
class ProviderStatus:
    version: str | None  # of the set in force (None: nothing valid loaded yet)
    errors: tuple[str, ...]  # of the latest read of the files
    blocked: bool  # the latest read is not in force
    gateways: tuple[str, ...]


@dataclass
class Provider:
    """Installs plans into the ADS cache and the policy hub; keeps what status shows.
    A provider of a new source reads its documents, runs `plan` and calls `apply`."""

    cache: SnapshotCache
    hub: PolicyHub | None = None
    translator: Translator | None = None
    _version: str | None = field(default=None, init=False)
    _errors: tuple[str, ...] = field(default=(), init=False)
    _blocked: bool = field(default=False, init=False)
    _nodes: set[str] = field(default_factory=set, init=False)
    reloads: int = field(default=0, init=False)
    # Reloads come from the source, leaf renewal, address changes and credential files:
    # one at a time, so the caches are never shared between threads and the newest read
    # is applied last.
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def __post_init__(self) -> None:
        if self.translator is None:
            self.translator = default_translator()

    def status(self) -> ProviderStatus:
        return ProviderStatus(
            self._version, self._errors, self._blocked, tuple(sorted(self._nodes))
        )

    def apply(self, plan: Plan) -> bool:
        """Install `plan` unless it is blocked; True if a new set is in force."""
        self.reloads += 1
        self._errors, self._blocked = plan.errors, plan.blocked
        for line in plan.errors:
            log.error("provider.error", extra=fields(error=line))
        if plan.blocked:
            log.warning(
                "provider.rejected",
                extra=fields(kept_version=self._version, errors=len(plan.errors)),
            )
            return False
        if plan.version == self._version and all(
            (current := self.cache.get(node)) is not None and current.version == snap.version
            for node, snap in plan.snapshots.items()
        ):
            return False  # same documents and same output (a renewed certificate is output)
        for node, snap in plan.snapshots.items():
            self.cache.set_snapshot(node, snap, verified=True)  # checked in `plan`
        for gone in self._nodes - plan.snapshots.keys():
            self.cache.set_snapshot(gone, EMPTY)  # a removed gateway loses its listeners
        self._nodes = set(plan.snapshots)
        if self.hub is not None:
            self.hub.publish(plan.policies)
        self._version = plan.version
        log.info(
            "provider.applied",
            extra=fields(version=plan.version, gateways=sorted(plan.snapshots)),
        )
        return True


@dataclass
class FileProvider(Provider):
    paths: Sequence[str | Path] = ()
    debounce_ms: int = 50
    _manifests: ManifestCache = field(default_factory=ManifestCache, init=False)
    # Resource objects of unchanged documents stay the same, so their compile is reused.
    _compiled: CompileCache = field(default_factory=CompileCache, init=False)

    async def reload(self) -> bool:
        """Read the files and install them if valid; True if a new set is in force."""
        assert self.translator is not None
        async with self._reloading:
            plan = await asyncio.to_thread(
                prepare, self.paths, self.translator, self._manifests, self._compiled
            )
            return self.apply(plan)

    def _watch_roots(self) -> list[Path]:
        # A file is watched through its directory: editors replace files by renaming.
        # A path that does not exist yet is watched through its parent until it appears.
        return [p if p.is_dir() else p.parent for p in map(Path, self.paths)]

    def _relevant(self, _change: watchfiles.Change, path: str) -> bool:
        p = Path(path)
        return p.suffix in MANIFEST_SUFFIXES or not p.suffix  # files or directories

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Load once, then reload on every change until `stop` is set."""
        await self.reload()
        async for _changes in watchfiles.awatch(
            *self._watch_roots(),
            watch_filter=self._relevant,
            debounce=self.debounce_ms,
            step=min(10, self.debounce_ms),  # yield 10 ms after the last change
            stop_event=stop,
            recursive=True,
        ):
            await self.reload()
