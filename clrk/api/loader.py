"""Multi-document YAML manifests -> validated resources, with every finding together.

Nothing here raises on bad input: YAML syntax, schema and duplicate errors all become
findings, so one run reports everything an operator has to fix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from pydantic import ValidationError

from clrk.api import yaml_plain
from clrk.api.findings import Finding, field_path
from clrk.api.resources import (
    AGENT_KINDS,
    API_VERSION,
    SPEC_MODELS,
    ObjectMeta,
    Resource,
    Source,
)

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
UNKNOWN = "?"


@dataclass(frozen=True)
class LoadResult:
    resources: tuple[Resource, ...]
    findings: tuple[Finding, ...]
    files: int = 0
    documents: int = 0
    # (kind, namespace, name) of documents that failed validation, where known: a
    # reference to one of them is reported as "invalid", not "does not exist".
    rejected: frozenset[tuple[str, str, str]] = frozenset()
    raw: tuple[tuple[Source, object], ...] = ()  # every decoded document, as written
    digest: str = ""  # content hash of the files read (load_paths only)
    # The source resolves an EgressCredential's secretRef (the Kubernetes provider's
    # objects): elsewhere a secretRef is a finding.
    secret_refs: bool = False

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.is_error)


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster
_RESOLVER = yaml.resolver.Resolver()
# A scalar's tag (YAML 1.1's implicit resolution: `yes` is a bool, `0x1f` an int) depends
# on its text alone, and the same keys and values come back in every document.  The cache
# lives as long as the process: it keeps collections' tags (no text) and short plain
# scalars' only, not a file's long values (a block scalar of megabytes).  Quoted and block
# scalars are strings without a look at their text.
_resolve_cached = functools.lru_cache(maxsize=4096)(_RESOLVER.resolve)
_CACHED_SCALAR_CHARS = 128


def _resolve(kind, value, implicit):  # type: ignore[no-untyped-def]
    if value is None or (implicit[0] and len(value) <= _CACHED_SCALAR_CHARS):
        return _resolve_cached(kind, value, implicit)
    return _RESOLVER.resolve(kind, value, implicit)


class _StrictLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader that rejects duplicate keys and aliases.

    A duplicated `ports:` key silently drops one list in plain YAML; aliases let a small
    file expand into an enormous object graph.  Both are refused for policy files.  The
    checks live in the constructor (pure Python even on top of libyaml's parser): an
    alias is the same node reached a second time.
    """

    resolve = staticmethod(_resolve)

    def construct_object(self, node, deep=False):  # type: ignore[no-untyped-def]
        if node in self.constructed_objects or node in self.recursive_objects:
            raise yaml.MarkedYAMLError(
                None, None, "YAML aliases (*name) are not allowed in policy files", node.start_mark
            )
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            # A value its tag cannot read (`!!bool maybe`, `!!int ''`, an untagged YAML 1.1
            # sexagesimal float too large for a float): PyYAML's constructors raise
            # KeyError, IndexError, OverflowError...  Named here, where the node is known.
            raise yaml.constructor.ConstructorError(
                None, None, _unreadable(node), node.start_mark
            ) from exc

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a complex key: the base class reports it as unhashable
            key = self.construct_scalar(key_node)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unreadable(node: yaml.Node) -> str:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    what = _shown(node.value) if isinstance(node, yaml.ScalarNode) else "the value"
    return f"cannot read {what} as {tag}"


def _yaml_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return f"invalid YAML: {where}{exc.problem or exc.context}"
    return f"invalid YAML: {exc}"


def parse_yaml(text: str, file: str) -> tuple[list[tuple[Source, object]], list[Finding]]:
    """Split a YAML stream into (source, document) pairs; empty documents are skipped."""
    plain = yaml_plain.documents(text, _StrictLoader)
    if plain is not None:
        return [(Source(file, i), d) for i, d in enumerate(plain, start=1) if d is not None], []
    docs: list[tuple[Source, object]] = []
    index = 0
    try:
        for index, data in enumerate(yaml.load_all(text, Loader=_StrictLoader), start=1):
            if data is not None:
                docs.append((Source(file, index), data))
    except yaml.YAMLError as exc:
        message = _yaml_message(exc)
    except Exception as exc:  # any other bad input: text libyaml cannot take, deep nesting
        message = f"invalid YAML: {exc}"
    else:
        return docs, []
    return docs, [Finding(file, index + 1, UNKNOWN, UNKNOWN, "<document>", message)]


def _pydantic_message(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind in ("too_short", "too_long"):
        ctx = err.get("ctx", {})
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return f"needs {'at least' if kind == 'too_short' else 'at most'} {bound} item(s)"
    msg: str = err["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if msg.startswith("Assertion failed, "):
        return msg[len("Assertion failed, ") :]
    return f"{msg[:1].lower()}{msg[1:]} (got {_shown(err.get('input'))})"


def _shown(value: object) -> str:
    """A value in a message: its repr, cut short."""
    got = repr(value)
    return got if len(got) <= 60 else got[:57] + "..."


def _validation_findings(exc: ValidationError, prefix: str, src: Source, kind: str, name: str):
    for err in exc.errors():
        yield Finding(
            src.file,
            src.document,
            kind,
            name,
            field_path((prefix, *err["loc"])),
            _pydantic_message(err),
        )


def validate_document(src: Source, data: object) -> tuple[Resource | None, list[Finding]]:
    """One decoded document -> a resource, or the findings that explain why not."""

    def fail(kind: str, name: str, path: str, message: str) -> tuple[None, list[Finding]]:
        return None, [Finding(src.file, src.document, kind, name, path, message)]

    if not isinstance(data, dict):
        return fail(
            UNKNOWN, UNKNOWN, "<document>", f"expected a mapping, got {type(data).__name__}"
        )
    meta_raw = data.get("metadata")
    name = meta_raw.get("name") if isinstance(meta_raw, dict) else None
    name = name if isinstance(name, str) and name else UNKNOWN
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        return fail(UNKNOWN, name, "kind", "required field is missing")
    if kind not in SPEC_MODELS:
        known = ", ".join(sorted(SPEC_MODELS))
        return fail(kind, name, "kind", f"unknown kind {kind!r}; expected one of {known}")
    findings: list[Finding] = []
    api_version = data.get("apiVersion")
    if api_version != API_VERSION:
        findings.append(
            Finding(
                src.file,
                src.document,
                kind,
                name,
                "apiVersion",
                f"must be {API_VERSION!r}, not {api_version!r}",
            )
        )
    for key in data:
        if key not in _TOP_LEVEL:
            findings.append(Finding(src.file, src.document, kind, name, str(key), "unknown field"))
    meta = None
    if meta_raw is None:
        findings.append(
            Finding(src.file, src.document, kind, name, "metadata", "required field is missing")
        )
    else:
        try:
            meta = ObjectMeta.model_validate(meta_raw)
        except ValidationError as exc:
            findings.extend(_validation_findings(exc, "metadata", src, kind, name))
    spec_raw = data.get("spec")
    spec = None
    if spec_raw is None and kind in AGENT_KINDS:
        spec_raw = {}
    if spec_raw is None:
        findings.append(
            Finding(src.file, src.document, kind, name, "spec", "required field is missing")
        )
    else:
        try:
            spec = SPEC_MODELS[kind].model_validate(spec_raw)
        except ValidationError as exc:
            findings.extend(_validation_findings(exc, "spec", src, kind, name))
    if findings or meta is None or spec is None:
        return None, findings
    return Resource(kind, meta, spec, src), []


def _identity(res: Resource) -> tuple[str, str, str]:
    # DaemonAgent and TaskAgent both name an agent: one identity space for the two kinds.
    group = "Agent" if res.kind in AGENT_KINDS else res.kind
    return (group, res.namespace, res.name)


def _claimed_identity(data: object) -> tuple[str, str, str] | None:
    """(kind, namespace, name) a rejected document meant to define, if it says."""
    if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
        return None
    meta = data["metadata"]
    kind, name, namespace = data.get("kind"), meta.get("name"), meta.get("namespace", "default")
    if all(isinstance(v, str) for v in (kind, name, namespace)):
        return (kind, namespace, name)
    return None


@dataclass
class _Validated:
    resources: list[Resource] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    rejected: set[tuple[str, str, str]] = field(default_factory=set)


# One document after validation: (source, data, resource or None, its findings).
Checked = tuple[Source, object, "Resource | None", list[Finding]]


def check_documents(docs: Iterable[tuple[Source, object]]) -> list[Checked]:
    return [(src, data, *validate_document(src, data)) for src, data in docs]


def validate_documents(
    docs: Iterable[tuple[Source, object]], checked: Iterable[Checked] | None = None
) -> _Validated:
    """Validate each document, then the set (one definition per identity)."""
    out = _Validated()
    resources, findings = out.resources, out.findings
    first_seen: dict[tuple[str, str, str], Resource] = {}
    for src, data, res, problems in check_documents(docs) if checked is None else checked:
        findings.extend(problems)
        if res is None:
            if (claimed := _claimed_identity(data)) is not None:
                out.rejected.add(claimed)
            continue
        key = _identity(res)
        if key in first_seen:
            prev = first_seen[key]
            findings.append(
                Finding(
                    src.file,
                    src.document,
                    res.kind,
                    res.name,
                    "metadata.name",
                    f"{res.ref} is already defined by {prev.kind} in "
                    f"{prev.source.file} document {prev.source.document}",
                )
            )
            continue
        first_seen[key] = res
        resources.append(res)
    return out


def _result(
    validated: _Validated,
    parse_findings: list[Finding],
    files: int,
    docs: int,
    raw: tuple[tuple[Source, object], ...] = (),
    digest: str = "",
) -> LoadResult:
    findings = sorted(parse_findings + validated.findings, key=lambda f: (f.file, f.document))
    return LoadResult(
        tuple(validated.resources),
        tuple(findings),
        files,
        docs,
        frozenset(validated.rejected),
        raw,
        digest,
    )


@dataclass
class _FileEntry:
    text: str
    checked: list[Checked]
    problems: list[Finding]


_DOCUMENT_MARKER = re.compile(r"^(?:---|\.\.\.)(?=[ \t\r\n]|$)", re.MULTILINE)


def split_documents(text: str) -> list[str]:
    """The YAML stream cut before every document marker (`---` or `...` at column 0).

    YAML forbids such a line inside any content (c-forbidden), so each piece parses on
    its own to exactly the documents it holds in the whole stream.
    """
    starts = [m.start() for m in _DOCUMENT_MARKER.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


class ManifestCache:
    """Parsed and validated documents, reused while their text is unchanged.

    Kept per file and, inside a rewritten file, per document: a reload after appending
    a route to a file of a thousand parses and validates one document.
    """

    def __init__(self) -> None:
        self._files: dict[str, _FileEntry] = {}
        # (file, first document index, piece text) -> its checked documents
        self._pieces: dict[tuple[str, int, str], tuple[list[Checked], int]] = {}

    def file(self, name: str, text: str) -> _FileEntry:
        entry = self._files.get(name)
        if entry is None or entry.text != text:
            entry = self._files[name] = self._parse(name, text)
        return entry

    def _parse(self, name: str, text: str) -> _FileEntry:
        pieces: dict[tuple[str, int, str], tuple[list[Checked], int]] = {}
        checked: list[Checked] = []
        index = 0
        for piece in split_documents(text):
            key = (name, index, piece)
            hit = self._pieces.get(key) or _parse_piece(piece, name, index)
            if hit is None:
                # Report errors exactly as a whole-file parse does (line numbers).
                whole, problems = parse_yaml(text, name)
                return _FileEntry(text, check_documents(whole), problems)
            pieces[key] = hit
            checked.extend(hit[0])
            index += hit[1]
        for key in [k for k in self._pieces if k[0] == name]:
            del self._pieces[key]
        self._pieces.update(pieces)
        return _FileEntry(text, checked, [])

    def retain(self, names: set[str]) -> None:
        for name in set(self._files) - names:
            del self._files[name]
        for key in [k for k in self._pieces if k[0] not in names]:
            del self._pieces[key]


def _parse_piece(piece: str, name: str, first: int) -> tuple[list[Checked], int] | None:
    """(checked documents, how many documents including empty ones), None on any error."""
    plain = yaml_plain.documents(piece, _StrictLoader)
    if plain is not None:
        docs = [(Source(name, first + i), d) for i, d in enumerate(plain, start=1) if d is not None]
        return check_documents(docs), len(plain)
    docs = []
    count = 0
    try:
        for count, data in enumerate(yaml.load_all(piece, Loader=_StrictLoader), start=1):
            if data is not None:
                docs.append((Source(name, first + count), data))
    except Exception:  # whatever it is, the whole file's parse reports it
        return None
    return check_documents(docs), count


def manifest_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    return [path]


def load_paths(paths: Sequence[str | Path], cache: ManifestCache | None = None) -> LoadResult:
    """Files and directories (recursively, *.yaml|*.yml|*.json, in name order)."""
    cache = cache if cache is not None else ManifestCache()
    checked: list[Checked] = []
    findings: list[Finding] = []
    digest = hashlib.sha256()
    seen: set[str] = set()
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
            findings.append(
                Finding(
                    str(path),
                    0,
                    UNKNOWN,
                    UNKNOWN,
                    "<file>",
                    "directory holds no *.yaml, *.yml or *.json manifests",
                )
            )
        for file in listed:
            files += 1
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                findings.append(
                    Finding(str(file), 0, UNKNOWN, UNKNOWN, "<file>", f"cannot read: {exc}")
                )
                continue
            name = str(file)
            seen.add(name)
            digest.update(f"{name}\0{len(text)}\0".encode() + text.encode() + b"\0")
            entry = cache.file(name, text)
            checked.extend(entry.checked)
            findings.extend(entry.problems)
    cache.retain(seen)
    raw = tuple((src, data) for src, data, _res, _problems in checked)
    validated = validate_documents((), checked)
    return _result(validated, findings, files, len(raw), raw, digest.hexdigest()[:16])


def load_text(text: str, file: str = "<input>") -> LoadResult:
    docs, findings = parse_yaml(text, file)
    return _result(validate_documents(docs), findings, 1, len(docs))


def load_documents(
    docs: Iterable[tuple[Source, object]], *, secret_refs: bool = False
) -> LoadResult:
    """Already-decoded documents, each with the `Source` that names it (a Kubernetes
    object, say): validated exactly as the documents of files are, and with a digest
    of their content, so a provider of any source versions its sets alike.
    `secret_refs`: the source resolves credentials' secretRefs (Kubernetes)."""
    docs = list(docs)
    digest = hashlib.sha256()
    for src, data in docs:
        text = json.dumps(data, sort_keys=True, default=str)
        digest.update(f"{src.file}\0{src.document}\0{text}\0".encode())
    files = len({src.file for src, _ in docs})
    result = _result(
        validate_documents(docs), [], files, len(docs), tuple(docs), digest.hexdigest()[:16]
    )
    return replace(result, secret_refs=secret_refs)


def load_objects(objects: Iterable[object], file: str = "<objects>") -> LoadResult:
    """Decoded documents of one source (tests, benchmarks): `load_documents`."""
    return load_documents((Source(file, i), obj) for i, obj in enumerate(objects, start=1))


__all__ = [
    "LoadResult",
    "ManifestCache",
    "load_documents",
    "load_objects",
    "load_paths",
    "load_text",
    "validate_document",
]
