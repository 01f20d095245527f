"""The admin API (proto/clrk/admin/v1): a thin gRPC shell over the pure planners.

- Apply: `admin_apply.plan_apply` decides; a valid plan is also translated and
  consistency-checked over a staging copy (as the provider would) before anything is
  written; then each file is renamed into the applied directory, which the file
  provider watches, and the call returns once the provider serves the new version.
- List: one read of the manifests through `admin_status.object_statuses`.
- Check: `clrk.policy.check.check_connection` over the compiled set in force.
- StreamRecords: tails the records file, `admin_records.RecordFilter` selects.

Wiring into a control plane (one gRPC server for ADS, policy stream and admin):

    admin = AdminServer(provider, applied_dir, records_path)
    server.add_generic_rpc_handlers((..., admin.handler()))

`applied_dir` must be one of the provider's paths (`with_applied_dir` adds it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from clrk.api import load_paths
from clrk.api.findings import Finding
from clrk.api.loader import ManifestCache, manifest_files
from clrk.policy import PolicySet
from clrk.policy.check import CheckInputError, CheckQuery, check_connection
from clrk.policy.loaded import Loaded, compile_loaded
from clrk.records.query import records_from_line
from clrk_runtime.logs import fields
from clrk_runtime.protos import ADMIN_MODULE, load
from clrk_xds.admin_apply import PLACEHOLDER, PLACEHOLDER_TEXT, ApplyPlan, plan_apply
from clrk_xds.admin_records import LineBuffer, RecordFilter
from clrk_xds.admin_status import kinds_for, object_statuses
from clrk_xds.provider import FileProvider, prepare

pb2 = load(ADMIN_MODULE)

SERVICE = "clrk.admin.v1.Admin"
log = logging.getLogger("clrk_xds.admin")


def ensure_applied_dir(path: str | Path) -> Path:
    """Create the applied directory with its placeholder (the loader refuses an empty
    directory, which would block the whole set)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    placeholder = directory / PLACEHOLDER
    if not placeholder.exists():
        placeholder.write_text(PLACEHOLDER_TEXT)
    return directory


def with_applied_dir(manifests: Sequence[str | Path], applied_dir: str | Path) -> list[str]:
    """The provider's paths: the operator's manifests and the applied directory."""
    ensure_applied_dir(applied_dir)
    paths = [str(p) for p in manifests]
    return paths if str(applied_dir) in paths else [*paths, str(applied_dir)]


def _write_atomically(path: Path, text: str) -> None:
    # A hidden *.tmp name: neither the loader nor the provider's watcher looks at it.
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _finding(f: Finding) -> pb2.Finding:
    return pb2.Finding(
        file=f.file,
        document=f.document,
        kind=f.kind,
        name=f.name,
        field=f.field,
        message=f.message,
        severity=str(f.severity),
        scope=str(f.scope),
        line=f.line(),
    )


async def tail_records(
    path: str | Path, flt: RecordFilter, from_start: bool = False, poll: float = 0.2
) -> AsyncIterator[dict]:
    """Matching records appended to `path` (from its start with `from_start`), forever.

    A file that appears, is replaced or shrinks (rotation) is read from its start.
    """
    buf = LineBuffer()
    fh = None
    inode, pos = None, 0
    existed_at_start = os.path.exists(path)
    try:
        while True:
            if fh is None:
                try:
                    fh = open(path, "rb")  # noqa: SIM115 - held across iterations
                except FileNotFoundError:
                    existed_at_start = False
                    await asyncio.sleep(poll)
                    continue
                st = os.fstat(fh.fileno())
                inode = st.st_ino
                pos = st.st_size if existed_at_start and not from_start else 0
                existed_at_start = False  # a later (re)open is a new file: all of it is new
                fh.seek(pos)
                buf.reset()
            data = fh.read(1 << 20)
            if data:
                pos += len(data)
                for line in buf.feed(data):
                    for record in records_from_line(line):
                        if flt.matches(record):
                            yield record
                await asyncio.sleep(0)
                continue
            try:
                st = os.stat(path)
                rotated = st.st_ino != inode or st.st_size < pos
            except FileNotFoundError:
                rotated = True
            if rotated:
                fh.close()
                fh = None
                continue
            await asyncio.sleep(poll)
    finally:
        if fh is not None:
            fh.close()


class AdminServer:
    def __init__(
        self,
        provider: FileProvider,
        applied_dir: str | Path,
        records_path: str | Path | None = None,
        *,
        apply_timeout: float = 10.0,
        poll: float = 0.2,
    ) -> None:
        self.provider = provider
        self.applied_dir = ensure_applied_dir(applied_dir)
        if not any(_same(p, self.applied_dir) for p in provider.paths):
            raise ValueError(f"{applied_dir} is not among the provider's manifest paths")
        self.records_path = None if records_path is None else Path(records_path)
        self.apply_timeout = apply_timeout
        self.poll = poll
        self._apply_lock: asyncio.Lock | None = None
        self._read_lock = threading.Lock()  # the manifest cache is not thread-safe
        self._cache = ManifestCache()
        self._last: tuple[str, Loaded] | None = None
        self._good: dict[str, PolicySet] = {}  # digest -> compiled, the latest few

    # -- reading the manifests (in a worker thread) --------------------------------

    def _applied_path(self) -> str:
        return next(str(p) for p in self.provider.paths if _same(p, self.applied_dir))

    def read(self) -> tuple[str, Loaded]:
        """One read of the provider's files: (digest, validated and compiled)."""
        with self._read_lock:
            load = load_paths(self.provider.paths, self._cache)
            if self._last is not None and self._last[0] == load.digest:
                return self._last
            loaded = compile_loaded(load)
            self._last = (load.digest, loaded)
            if not loaded.blocked:
                self._good[load.digest] = loaded.compiled
                while len(self._good) > 8:
                    del self._good[next(iter(self._good))]
            return self._last

    def _current_texts(self) -> list[tuple[str, str]]:
        out = []
        for given in self.provider.paths:
            path = Path(given)
            if not path.exists():
                continue  # the merged load reports nothing for it; the provider will
            for file in manifest_files(path):
                try:
                    out.append((str(file), file.read_text(encoding="utf-8")))
                except (OSError, UnicodeDecodeError):
                    continue  # reported by the provider's own read
        return out

    def _preflight(self, plan: ApplyPlan) -> list[str]:
        """Translate and check the would-be set as the provider will: its errors if it
        would be refused there, else []."""
        staging = Path(tempfile.mkdtemp(prefix="clrk-apply-"))
        try:
            for file in manifest_files(self.applied_dir):
                shutil.copy2(file, staging / file.name)
            for name, text in plan.writes.items():
                (staging / name).write_text(text, encoding="utf-8")
            applied = self._applied_path()
            paths = [p if str(p) != applied else staging for p in self.provider.paths]
            result = prepare(paths, self.provider.translator)
            return list(result.errors) if result.blocked else []
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- RPCs ----------------------------------------------------------------------

    async def apply(self, request: pb2.ApplyRequest, context) -> pb2.ApplyResponse:
        submitted = [
            (m.name or f"<manifest {i}>", m.text) for i, m in enumerate(request.manifests, 1)
        ]
        if not submitted:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no manifests given")
        if len({name for name, _ in submitted}) != len(submitted):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "manifest names repeat")
        if self._apply_lock is None:
            self._apply_lock = asyncio.Lock()
        async with self._apply_lock:  # one apply at a time: each plans on the last's result
            return await self._apply(submitted, request.dry_run)

    async def _apply(self, submitted: list[tuple[str, str]], dry_run: bool) -> pb2.ApplyResponse:
        current = await asyncio.to_thread(self._current_texts)
        plan = await asyncio.to_thread(plan_apply, current, self._applied_path(), submitted)
        findings = [_finding(f) for f in plan.findings]
        version = self.provider.status().version or ""
        response = pb2.ApplyResponse(
            version=version, findings=findings, changes=list(plan.changes), valid=False
        )
        if plan.refused:
            log.warning("admin.apply_refused", extra=fields(errors=len(plan.loaded.load.errors)))
            return response
        errors = await asyncio.to_thread(self._preflight, plan) if plan.writes else []
        if errors:
            response.errors.extend(errors)
            log.warning("admin.apply_refused", extra=fields(errors=len(errors)))
            return response
        response.valid = True
        if dry_run:
            return response
        try:
            for name, text in plan.writes.items():
                await asyncio.to_thread(_write_atomically, self.applied_dir / name, text)
        except OSError as exc:
            # Files renamed so far hold valid resources only: the set stays valid.
            response.errors.append(f"cannot store the manifests: {exc}")
            return response
        response.applied = True
        log.info("admin.applied", extra=fields(files=sorted(plan.writes)))
        if plan.writes:
            response.version, note = await self._wait_in_force()
            if note:
                response.errors.append(note)
        return response

    async def _wait_in_force(self) -> tuple[str, str]:
        """(version, problem): the provider's version once it serves the files as now."""
        expected = (await asyncio.to_thread(self.read))[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.apply_timeout
        while True:
            status = self.provider.status()
            if status.version == expected:
                return expected, ""
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        return status.version or "", (
            f"stored, but the control plane does not serve it yet (serving {status.version})"
        )

    async def list(self, request: pb2.ListRequest, context) -> pb2.ListResponse:
        try:
            kinds = kinds_for(request.kind)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        digest, loaded = await asyncio.to_thread(self.read)
        status = self.provider.status()
        statuses = object_statuses(loaded, in_force=status.version == digest, kinds=kinds)
        return pb2.ListResponse(
            version=status.version or "",
            blocked=status.blocked,
            errors=list(status.errors),
            resources=[
                pb2.ResourceStatus(
                    kind=s.kind,
                    namespace=s.namespace,
                    name=s.name,
                    source_file=s.source_file,
                    source_document=s.source_document,
                    conditions=[
                        pb2.Condition(
                            type=c.type,
                            status="True" if c.status else "False",
                            reason=c.reason,
                            message=c.message,
                        )
                        for c in s.conditions
                    ],
                    last_errors=list(s.last_errors),
                )
                for s in statuses
            ],
        )

    async def in_force(self) -> tuple[str, PolicySet] | None:
        """(version, compiled set) the control plane serves, as far as the files tell."""
        await asyncio.to_thread(self.read)
        version = self.provider.status().version
        if version in self._good:
            return version, self._good[version]
        if self._good:  # served set not seen here (files changed since): the newest valid
            latest = next(reversed(self._good))
            return latest, self._good[latest]
        return None

    async def check(self, request: pb2.CheckRequest, context) -> pb2.CheckResponse:
        current = await self.in_force()
        if current is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "no valid policy is loaded yet"
            )
        version, policies = current
        query = CheckQuery(
            agent=request.agent,
            dst_ip=request.dst_ip,
            port=request.port,
            protocol=request.protocol or "TCP",
            hostnames=tuple(request.hostnames),
            sni=request.sni or None,
            gateway=request.gateway or None,
            agent_labels=tuple(request.agent_labels),
        )
        try:
            result = check_connection(policies, query)
        except CheckInputError as exc:
            where = f"{exc.param}: " if exc.param else ""
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}{exc}")
        return pb2.CheckResponse(
            decision_json=json.dumps(result.to_json()),
            warnings=list(result.warnings),
            version=version,
        )

    async def stream_records(
        self, request: pb2.StreamRecordsRequest, context
    ) -> AsyncIterator[pb2.Record]:
        if self.records_path is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "this control plane has no records file"
            )
        try:
            flt = RecordFilter(
                name=request.name,
                deny_reason=request.deny_reason,
                agent=request.agent,
                gateway=request.gateway,
                since_ns=request.since_unix_nano,
                signal=request.signal or "log",
                enforcement=request.enforcement,
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        from_start = request.since_unix_nano > 0
        async for record in tail_records(self.records_path, flt, from_start, self.poll):
            yield pb2.Record(json=json.dumps(record, sort_keys=True))

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Apply": unary(
                    self.apply,
                    request_deserializer=pb2.ApplyRequest.FromString,
                    response_serializer=pb2.ApplyResponse.SerializeToString,
                ),
                "List": unary(
                    self.list,
                    request_deserializer=pb2.ListRequest.FromString,
                    response_serializer=pb2.ListResponse.SerializeToString,
                ),
                "Check": unary(
                    self.check,
                    request_deserializer=pb2.CheckRequest.FromString,
                    response_serializer=pb2.CheckResponse.SerializeToString,
                ),
                "StreamRecords": grpc.unary_stream_rpc_method_handler(
                    self.stream_records,
                    request_deserializer=pb2.StreamRecordsRequest.FromString,
                    response_serializer=pb2.Record.SerializeToString,
                ),
            },
        )


def _same(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False
