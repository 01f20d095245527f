"""File provider: manifests on disk -> validated set -> Envoy snapshots + policy stream.

Every change reloads the whole set (a burst of writes is debounced into one reload).
Nothing is half-applied: the set is loaded, validated, translated and every gateway's
snapshot checked before any of it is installed; if any step fails, the last good set
stays in force and the errors are logged and kept for `status()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from clrk.api import LoadResult, Scope
from clrk.api.loader import MANIFEST_SUFFIXES, ManifestCache, load_paths
from clrk.api.resources import Source
from clrk.policy import PolicySet, compile_policies
from clrk_runtime.logs import fields
from clrk_xds.consistency import CLUSTER, LISTENER, SECRET, check
from clrk_xds.policy_stream import PolicyHub
from clrk_xds.snapshot import EMPTY, InconsistentSnapshot, Snapshot, SnapshotCache

log = logging.getLogger("clrk_xds.provider")

# A compiled set -> {node id: GatewayResources}; `clrk_xds.translate.translate` with its
# options bound (`default_translator`).
Translator = Callable[[PolicySet], Mapping[str, object]]


@dataclass(frozen=True)
class Manifests:
    """One consistent read of the manifest files: validated and as written."""

    load: LoadResult
    raw: Mapping[Source, object]


def read_manifests(paths: Sequence[str | Path], cache: ManifestCache | None = None) -> Manifests:
    """One read of the files: validated, and each document as written (for the policy
    stream).  With a cache, unchanged files are neither parsed nor validated again."""
    load = load_paths(paths, cache)
    return Manifests(load, dict(load.raw))


@dataclass(frozen=True)
class Plan:
    """What a reload would install; `errors` non-empty (and blocking) means nothing."""

    version: str
    manifests: Manifests
    snapshots: Mapping[str, Snapshot]
    errors: tuple[str, ...]  # every error, blocking or not, one line each
    blocked: bool


def prepare(
    paths: Sequence[str | Path], translator: Translator, cache: ManifestCache | None = None
) -> Plan:
    """Load, validate, translate and consistency-check: no side effects (but the cache)."""
    manifests = read_manifests(paths, cache)
    load = manifests.load
    version = load.digest
    compiled = compile_policies(load.resources, rejected=load.rejected)
    findings = list(load.findings) + list(compiled.findings)
    errors = [f.line() for f in findings if f.is_error]
    # Object-scope errors (a reference that points nowhere) disable only that object.
    blocked = any(f.is_error and f.scope is Scope.SET for f in load.findings)
    snapshots: dict[str, Snapshot] = {}
    if not blocked:
        try:
            translated = translator(compiled)
        except Exception as exc:  # a translator bug must not take the server down
            log.exception("provider.translate_failed")
            return Plan(version, manifests, {}, (*errors, f"translation failed: {exc}"), True)
        for node, res in sorted(translated.items()):
            try:
                snap = Snapshot.from_messages(res.listeners, res.clusters, res.secrets)
            except InconsistentSnapshot as exc:
                errors += [f"gateway {node}: {p}" for p in exc.problems]
                blocked = True
                continue
            messages = {
                LISTENER: {m.name: m for m in res.listeners},
                CLUSTER: {m.name: m for m in res.clusters},
                SECRET: {m.name: m for m in res.secrets},
            }
            problems = check(snap.resources, messages)
            if problems:
                errors += [f"gateway {node}: {p}" for p in problems]
                blocked = True
            snapshots[node] = snap
    return Plan(version, manifests, snapshots, tuple(errors), blocked)


def default_translator(**options: object) -> Translator:
    """`clrk_xds.translate.translate` with `options` and a chain cache of its own, so
    that a reload rebuilds only the routes that changed."""
    import functools

    from clrk_xds.translate import ChainCache, translate

    return functools.partial(translate, cache=ChainCache(), **options)


@dataclass(frozen=True)
class ProviderStatus:
    version: str | None  # of the set in force (None: nothing valid loaded yet)
    errors: tuple[str, ...]  # of the latest read of the files
    blocked: bool  # the latest read is not in force
    gateways: tuple[str, ...]


@dataclass
class FileProvider:
    paths: Sequence[str | Path]
    cache: SnapshotCache
    hub: PolicyHub | None = None
    translator: Translator | None = None
    debounce_ms: int = 50
    _version: str | None = None
    _errors: tuple[str, ...] = ()
    _blocked: bool = False
    _nodes: set[str] = field(default_factory=set)
    reloads: int = 0
    _manifests: ManifestCache = field(default_factory=ManifestCache)

    def status(self) -> ProviderStatus:
        return ProviderStatus(
            self._version, self._errors, self._blocked, tuple(sorted(self._nodes))
        )

    async def reload(self) -> bool:
        """Read the files and install them if valid; True if a new set is in force."""
        translator = self.translator or default_translator()
        plan = await asyncio.to_thread(prepare, self.paths, translator, self._manifests)
        return self.apply(plan)

    def apply(self, plan: Plan) -> bool:
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
            return False  # same files and same output (a renewed certificate is output)
        for node, snap in plan.snapshots.items():
            self.cache.set_snapshot(node, snap, verified=True)  # checked in prepare
        for gone in self._nodes - plan.snapshots.keys():
            self.cache.set_snapshot(gone, EMPTY)  # a removed gateway loses its listeners
        self._nodes = set(plan.snapshots)
        if self.hub is not None:
            load = plan.manifests.load
            self.hub.publish(load.resources, plan.manifests.raw, load.rejected)
        self._version = plan.version
        log.info(
            "provider.applied",
            extra=fields(version=plan.version, gateways=sorted(plan.snapshots)),
        )
        return True

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
