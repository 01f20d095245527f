"""File provider: manifests on disk -> validated set -> Envoy snapshots + policy stream.

Every change reloads the whole set (a burst of writes is debounced into one reload).
Nothing is half-applied: the set is loaded, validated, translated and every gateway's
snapshot checked before any of it is installed; if any step fails, the last good set
stays in force and the errors are logged and kept for `status()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from clrk.api import Finding, LoadResult, Scope
from clrk.api.loader import (
    MANIFEST_SUFFIXES,
    UNKNOWN,
    manifest_files,
    parse_yaml,
    validate_documents,
)
from clrk.api.resources import Source
from clrk.logs import fields
from clrk.policy import compile_policies
from clrk_xds.consistency import check
from clrk_xds.policy_stream import PolicyHub
from clrk_xds.snapshot import EMPTY, InconsistentSnapshot, Snapshot, SnapshotCache

log = logging.getLogger("clrk_xds.provider")

# (resources, rejected=...) -> {node id: GatewayResources}; clrk_xds.translate.translate.
Translator = Callable[..., Mapping[str, object]]


@dataclass(frozen=True)
class Manifests:
    """One consistent read of the manifest files: validated and as written."""

    load: LoadResult
    raw: Mapping[Source, object]


def read_manifests(paths: Sequence[str | Path]) -> Manifests:
    """Like clrk.api.load_paths, but keeps each document as written (for the policy
    stream) from the same single read of each file."""
    docs: list[tuple[Source, object]] = []
    findings: list[Finding] = []
    files = 0
    for given in paths:
        path = Path(given)
        if not path.exists():
            findings.append(
                Finding(str(path), 0, UNKNOWN, UNKNOWN, "<file>", "no such file or directory")
            )
            continue
        listed = manifest_files(path)
        if not listed:
            findings.append(Finding(str(path), 0, UNKNOWN, UNKNOWN, "<file>", "holds no manifests"))
        for file in listed:
            files += 1
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                findings.append(
                    Finding(str(file), 0, UNKNOWN, UNKNOWN, "<file>", f"cannot read: {exc}")
                )
                continue
            file_docs, problems = parse_yaml(text, str(file))
            docs.extend(file_docs)
            findings.extend(problems)
    validated = validate_documents(docs)
    findings = sorted(findings + validated.findings, key=lambda f: (f.file, f.document))
    load = LoadResult(
        tuple(validated.resources),
        tuple(findings),
        files,
        len(docs),
        frozenset(validated.rejected),
    )
    return Manifests(load, dict(docs))


def set_version(raw: Mapping[Source, object]) -> str:
    h = hashlib.sha256()
    for src in sorted(raw, key=lambda s: (s.file, s.document)):
        h.update(f"{src.file}\0{src.document}\0".encode())
        h.update(json.dumps(raw[src], sort_keys=True, default=str).encode() + b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """What a reload would install; `errors` non-empty (and blocking) means nothing."""

    version: str
    manifests: Manifests
    snapshots: Mapping[str, Snapshot]
    errors: tuple[str, ...]  # every error, blocking or not, one line each
    blocked: bool


def prepare(paths: Sequence[str | Path], translator: Translator) -> Plan:
    """Load, validate, translate and consistency-check: no side effects."""
    manifests = read_manifests(paths)
    load = manifests.load
    version = set_version(manifests.raw)
    compiled = compile_policies(load.resources, rejected=load.rejected)
    findings = list(load.findings) + list(compiled.findings)
    errors = [f.line() for f in findings if f.is_error]
    # Object-scope errors (a reference that points nowhere) disable only that object.
    blocked = any(f.is_error and f.scope is Scope.SET for f in load.findings)
    snapshots: dict[str, Snapshot] = {}
    if not blocked:
        try:
            translated = translator(load.resources, rejected=load.rejected)
        except Exception as exc:  # a translator bug must not take the server down
            log.exception("provider.translate_failed")
            return Plan(version, manifests, {}, (*errors, f"translation failed: {exc}"), True)
        for node, res in sorted(translated.items()):
            errors += [f.line() for f in getattr(res, "findings", ()) if f.is_error]
            try:
                snap = Snapshot.from_messages(res.listeners, res.clusters, res.secrets)
            except InconsistentSnapshot as exc:
                errors += [f"gateway {node}: {p}" for p in exc.problems]
                blocked = True
                continue
            problems = check(snap.resources)
            if problems:
                errors += [f"gateway {node}: {p}" for p in problems]
                blocked = True
            snapshots[node] = snap
    return Plan(version, manifests, snapshots, tuple(errors), blocked)


def default_translator() -> Translator:
    from clrk_xds.translate import translate

    return translate


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

    def status(self) -> ProviderStatus:
        return ProviderStatus(
            self._version, self._errors, self._blocked, tuple(sorted(self._nodes))
        )

    async def reload(self) -> bool:
        """Read the files and install them if valid; True if a new set is in force."""
        translator = self.translator or default_translator()
        plan = await asyncio.to_thread(prepare, self.paths, translator)
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
        if plan.version == self._version:
            return False
        for node, snap in plan.snapshots.items():
            self.cache.set_snapshot(node, snap)  # checked in prepare: cannot raise here
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
            step=min(50, self.debounce_ms),
            stop_event=stop,
            recursive=True,
        ):
            await self.reload()
