"""The policy stream's messages, shared by the control plane (which sends them) and the
dialer (which receives them): which documents a gateway's dialer needs
(`gateway_documents`), how they become a message (`to_message`), and how a dialer turns
an update back into resources (`load_update`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clrk.api import LoadResult, Resource, resolve
from clrk.api.loader import check_documents, validate_documents
from clrk.api.resources import AGENT_KINDS, Source
from clrk_runtime.protos import load as _load_pb2

pb2 = _load_pb2()

SERVICE = "clrk.policy.v1.PolicyStream"
METHOD = "Watch"
FULL_METHOD = f"/{SERVICE}/{METHOD}"


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
