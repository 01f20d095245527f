"""Versioned Envoy snapshots per node, and the cache the stream loops read them from.

The cache knows nothing of streams (go-control-plane's split): a stream loop asks for
the current snapshot and waits for the next one.  Versions are content hashes, so the
same resources always carry the same version and an unchanged reload pushes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import betterproto2

from clrk_xds.consistency import CLUSTER, LISTENER, SECRET, check, duplicate_names


class InconsistentSnapshot(ValueError):
    """The snapshot would be rejected by Envoy or leave it half-configured."""

    def __init__(self, node_id: str, problems: list[str]):
        self.node_id = node_id
        self.problems = problems
        super().__init__(f"snapshot for node {node_id!r} is inconsistent: " + "; ".join(problems))


def content_version(resources: Mapping[str, Mapping[str, bytes]]) -> str:
    """A hash of the serialized resources, independent of insertion order."""
    h = hashlib.sha256()
    for type_url in sorted(resources):
        h.update(type_url.encode() + b"\0")
        for name in sorted(resources[type_url]):
            raw = resources[type_url][name]
            h.update(name.encode() + b"\0" + len(raw).to_bytes(8, "big") + raw)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    version: str
    resources: Mapping[str, Mapping[str, bytes]]
    # Per-type versions: a change to clusters must not re-push (or un-NACK) listeners.
    type_versions: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, resources: Mapping[str, Mapping[str, bytes]]) -> Snapshot:
        frozen = {t: MappingProxyType(dict(named)) for t, named in resources.items()}
        return cls(
            content_version(frozen),
            MappingProxyType(frozen),
            MappingProxyType({t: content_version({t: named}) for t, named in frozen.items()}),
        )

    @classmethod
    def from_messages(
        cls,
        listeners: Iterable[betterproto2.Message] = (),
        clusters: Iterable[betterproto2.Message] = (),
        secrets: Iterable[betterproto2.Message] = (),
    ) -> Snapshot:
        """Serialize named Envoy messages; duplicate names are refused, not overwritten."""
        resources: dict[str, dict[str, bytes]] = {}
        for type_url, msgs in ((LISTENER, listeners), (CLUSTER, clusters), (SECRET, secrets)):
            msgs = list(msgs)
            dups = duplicate_names([m.name for m in msgs])
            if dups:
                raise InconsistentSnapshot(
                    "?", [f"{type_url.rsplit('.', 1)[-1]} {d!r}: defined twice" for d in dups]
                )
            resources[type_url] = {m.name: bytes(m) for m in msgs}
        return cls.of(resources)

    def version_of(self, type_url: str) -> str:
        """The version sent for one type; the empty set of a type has a version too."""
        return self.type_versions.get(type_url) or content_version({type_url: {}})

    def named(self, type_url: str) -> Mapping[str, bytes]:
        return self.resources.get(type_url, {})


EMPTY = Snapshot.of({LISTENER: {}, CLUSTER: {}, SECRET: {}})


class SnapshotCache:
    """node id -> current snapshot.  Use from the event loop's thread only."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def set_snapshot(self, node_id: str, snapshot: Snapshot, *, verified: bool = False) -> bool:
        """Install `snapshot` for `node_id`; False if it is the one already there.

        Raises InconsistentSnapshot (and keeps the previous one) if the check fails.
        `verified`: the caller already ran the consistency check on this very snapshot
        (the file provider checks every gateway before installing any), so it is not
        run twice.
        """
        problems = [] if verified else check(snapshot.resources)
        if problems:
            raise InconsistentSnapshot(node_id, problems)
        current = self._snapshots.get(node_id)
        if current is not None and current.version == snapshot.version:
            return False
        self._snapshots[node_id] = snapshot
        event = self._changed.pop(node_id, None)
        if event is not None:
            event.set()
        return True

    def get(self, node_id: str) -> Snapshot | None:
        return self._snapshots.get(node_id)

    def nodes(self) -> list[str]:
        return sorted(self._snapshots)

    async def next_change(self, node_id: str, seen: Snapshot | None) -> Snapshot:
        """Wait until the snapshot of `node_id` is no longer `seen`; return the new one."""
        while (current := self._snapshots.get(node_id)) is seen or current is None:
            event = self._changed.setdefault(node_id, asyncio.Event())
            await event.wait()
        return current
