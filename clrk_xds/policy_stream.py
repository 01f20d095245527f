"""The policy stream: each worker dialer watches its gateway's validated resources.

Pure part: which documents a gateway's dialer needs (`gateway_documents`) and how a
dialer turns an update back into resources (`load_update`).  Shell part: the gRPC
servicer over a `PolicyHub` the provider publishes to, and the `watch_policy` client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import grpc

from clrk.api import LoadResult, Resource, resolve
from clrk.api.loader import check_documents, validate_documents
from clrk.api.resources import AGENT_KINDS, Source
from clrk.logs import fields
from clrk_xds.policy_proto import load as _load_pb2

pb2 = _load_pb2()

SERVICE = "clrk.policy.v1.PolicyStream"
METHOD = "Watch"
FULL_METHOD = f"/{SERVICE}/{METHOD}"

log = logging.getLogger("clrk_xds.policy_stream")


@dataclass(frozen=True)
class PolicyDocument:
    kind: str
    api_version: str
    json: str  # the document as written, as a JSON object
    source_file: str
    source_document: int


@dataclass(frozen=True)
class GatewayPolicyDocs:
    gateway: str  # "namespace/name"
    version: str
    documents: tuple[PolicyDocument, ...]


def docs_version(documents: Sequence[PolicyDocument]) -> str:
    h = hashlib.sha256()
    for d in documents:
        for part in (d.kind, d.api_version, d.json, d.source_file, str(d.source_document)):
            h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def gateway_documents(
    gateway: str,
    resources: Sequence[Resource],
    raw: Mapping[Source, object],
    rejected: frozenset[tuple[str, str, str]] = frozenset(),
) -> GatewayPolicyDocs:
    """The documents a dialer of `gateway` compiles: the gateway, the routes attached to
    it, their deny policies, and every agent (agents are identified by labels, and a
    dialer must know them all to tell agents apart).  Unknown gateway: no documents.
    """
    namespace, _, name = gateway.rpartition("/")
    key = (namespace or "default", name)
    resolution = resolve(resources, rejected)
    chosen: list[Resource] = []
    if key in resolution.gateways:
        chosen.append(resolution.gateways[key])
        for att in resolution.attachments.get(key, ()):
            chosen.append(att.route)
            if att.deny_policy is not None:
                chosen.append(att.deny_policy)
        chosen += [r for r in resources if r.kind in AGENT_KINDS]
    unique = {id(r): r for r in chosen}.values()
    ordered = sorted(unique, key=lambda r: (r.source.file, r.source.document))
    docs = tuple(
        PolicyDocument(
            r.kind,
            _api_version(raw.get(r.source)),
            json.dumps(raw.get(r.source), sort_keys=True, default=str),
            r.source.file,
            r.source.document,
        )
        for r in ordered
    )
    return GatewayPolicyDocs(gateway, docs_version(docs), docs)


def _api_version(raw: object) -> str:
    return str(raw.get("apiVersion", "")) if isinstance(raw, dict) else ""


def load_update(update: pb2.PolicyUpdate, cache: dict | None = None) -> LoadResult:
    """A received update -> validated resources, as `clrk.api.load_paths` returns them;
    pass `.resources` and `.rejected` to `clrk.policy.compile_policies`.

    `cache` (a dict the caller keeps between updates) reuses the validation of documents
    whose JSON did not change, so an update that adds one route validates one document.
    """
    seen: dict = {}
    checked = []
    for d in update.documents:
        key = (d.source_file, d.source_document, d.json)
        hit = (cache or {}).get(key)
        if hit is None:
            try:
                data = json.loads(d.json)
            except ValueError:
                data = None  # validation reports it as a bad document
            (hit,) = check_documents([(Source(d.source_file, d.source_document), data)])
        seen[key] = hit
        checked.append(hit)
    if cache is not None:
        cache.clear()
        cache.update(seen)
    validated = validate_documents((), checked)
    findings = sorted(validated.findings, key=lambda f: (f.file, f.document))
    return LoadResult(
        tuple(validated.resources),
        tuple(findings),
        len({d.source_file for d in update.documents}),
        len(checked),
        frozenset(validated.rejected),
    )


def to_message(docs: GatewayPolicyDocs) -> pb2.PolicyUpdate:
    return pb2.PolicyUpdate(
        version=docs.version,
        gateway=docs.gateway,
        documents=[
            pb2.Document(
                kind=d.kind,
                api_version=d.api_version,
                json=d.json,
                source_file=d.source_file,
                source_document=d.source_document,
            )
            for d in docs.documents
        ],
    )


class PolicyHub:
    """The latest published resource set; watchers wait for the next one.

    Use from the event loop's thread only.
    """

    def __init__(self) -> None:
        self._resources: tuple[Sequence[Resource], Mapping[Source, object], frozenset] | None = None
        self._generation = 0
        self._changed = asyncio.Event()
        self._cache: dict[tuple[int, str], GatewayPolicyDocs] = {}

    def publish(
        self,
        resources: Sequence[Resource],
        raw: Mapping[Source, object],
        rejected: frozenset[tuple[str, str, str]] = frozenset(),
    ) -> None:
        self._resources = (tuple(resources), dict(raw), rejected)
        self._generation += 1
        self._cache.clear()
        self._changed.set()
        self._changed = asyncio.Event()

    def current(self, gateway: str) -> GatewayPolicyDocs | None:
        if self._resources is None:
            return None
        key = (self._generation, gateway)
        if key not in self._cache:
            self._cache[key] = gateway_documents(gateway, *self._resources)
        return self._cache[key]

    async def updates(self, gateway: str) -> AsyncIterator[GatewayPolicyDocs]:
        """The current set once published, then each one with a different version."""
        last: str | None = None
        while True:
            changed = self._changed
            docs = self.current(gateway)
            if docs is not None and docs.version != last:
                last = docs.version
                yield docs
            await changed.wait()


class PolicyStreamServer:
    def __init__(self, hub: PolicyHub) -> None:
        self.hub = hub

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                METHOD: grpc.unary_stream_rpc_method_handler(
                    self._watch,
                    request_deserializer=pb2.WatchRequest.FromString,
                    response_serializer=pb2.PolicyUpdate.SerializeToString,
                )
            },
        )

    async def _watch(
        self, request: pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb2.PolicyUpdate]:
        gateway = request.gateway
        if "/" not in gateway:
            gateway = f"default/{gateway}"
        async for docs in self.hub.updates(gateway):
            log.info(
                "policy.send",
                extra=fields(gateway=gateway, version=docs.version, documents=len(docs.documents)),
            )
            yield to_message(docs)


async def watch_policy(target: str, gateway: str) -> AsyncIterator[pb2.PolicyUpdate]:
    """Updates for `gateway` from the control plane at `target` ("host:port").

    Ends with grpc.aio.AioRpcError when the stream breaks; reconnecting (and keeping the
    last good policy meanwhile) is the caller's choice.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_stream(
            FULL_METHOD,
            request_serializer=pb2.WatchRequest.SerializeToString,
            response_deserializer=pb2.PolicyUpdate.FromString,
        )(pb2.WatchRequest(gateway=gateway))
        async for update in call:
            yield update
