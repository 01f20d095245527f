"""What `Apply` of the admin API would do, as a pure function over file texts.

The applied-manifests directory holds one file per applied resource, named after its
identity (`Kind.namespace.name.yaml`, DaemonAgent and TaskAgent sharing `Agent`), so
applying a resource again replaces it, as `kubectl apply` does.  Resources defined in
the operator's own manifest files cannot be replaced through the API: applying one is
a duplicate definition, reported like any other.

The submitted manifests are validated together with every current file except the
applied files they replace, with the same loader and compiler `clrk validate` uses and
under the names the client sent, so the findings are the lines `clrk validate` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import yaml

from clrk.api import LoadResult
from clrk.api.findings import Finding
from clrk.api.loader import ManifestCache, validate_documents
from clrk.api.resources import AGENT_KINDS, Resource
from clrk.policy.loaded import Loaded, compile_loaded

# Keeps an applied directory non-empty: the loader reports an empty directory.
PLACEHOLDER = "_applied.yaml"
PLACEHOLDER_TEXT = "# Resources applied through the clrk admin API, one file each.\n"


@dataclass(frozen=True)
class ApplyPlan:
    loaded: Loaded  # the merged set, validated and compiled
    refused: bool
    writes: Mapping[str, str]  # applied file name -> text (changed or new files only)
    changes: tuple[str, ...]  # "KIND/NAMESPACE/NAME created|configured|unchanged"

    @property
    def findings(self) -> list[Finding]:
        return self.loaded.findings


def applied_file_name(res: Resource) -> str:
    """Object names are DNS subdomains: safe in a file name as they are."""
    group = "Agent" if res.kind in AGENT_KINDS else res.kind
    return f"{group}.{res.namespace}.{res.name}.yaml"


def load_texts(files: Sequence[tuple[str, str]]) -> LoadResult:
    """`clrk.api.load_paths` over (file name, text) pairs instead of paths."""
    cache = ManifestCache()
    checked, findings = [], []
    for name, text in files:
        entry = cache.file(name, text)
        checked.extend(entry.checked)
        findings.extend(entry.problems)
    validated = validate_documents((), checked)
    merged = sorted(findings + validated.findings, key=lambda f: (f.file, f.document))
    raw = tuple((src, data) for src, data, _res, _problems in checked)
    return LoadResult(
        tuple(validated.resources),
        tuple(merged),
        len(files),
        len(raw),
        frozenset(validated.rejected),
        raw,
    )


def load_and_compile_texts(files: Sequence[tuple[str, str]]) -> Loaded:
    """`clrk.policy.loaded.load_and_compile` over texts: the same findings, in order."""
    return compile_loaded(load_texts(files))


def _document_text(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def plan_apply(
    current: Sequence[tuple[str, str]],
    applied_dir: str,
    submitted: Sequence[tuple[str, str]],
) -> ApplyPlan:
    """`current`: (path, text) of every file the provider reads, the applied directory's
    among them; `submitted`: (name, text) from the client.

    Refused when the merged set has an error that blocks the whole set, an error in a
    submitted manifest, or an error the current set does not have (a submission that
    breaks a reference elsewhere).  Errors already there do not block unrelated fixes.
    """
    submitted_names = {name for name, _ in submitted}
    alone = load_texts(submitted)
    replaced = {applied_file_name(r) for r in alone.resources}
    applied = {
        PurePath(path).name: text
        for path, text in current
        if PurePath(path).parent == PurePath(applied_dir)
    }
    kept = [
        (path, text)
        for path, text in current
        if not (PurePath(path).parent == PurePath(applied_dir) and PurePath(path).name in replaced)
    ]
    merged = load_and_compile_texts([*kept, *submitted])
    before = load_and_compile_texts(current)
    old_errors = {f.line() for f in before.findings if f.is_error}
    errors = [f for f in merged.findings if f.is_error]
    refused = (
        merged.blocked
        or any(f.file in submitted_names for f in errors)
        or any(f.line() not in old_errors for f in errors)
    )
    writes: dict[str, str] = {}
    changes: list[str] = []
    raw = dict(merged.load.raw)
    for res in merged.load.resources:
        if res.source.file not in submitted_names:
            continue
        name = applied_file_name(res)
        text = _document_text(raw[res.source])
        verb = "created" if name not in applied else "configured"
        if applied.get(name) == text:
            verb = "unchanged"
        else:
            writes[name] = text
        changes.append(f"{res.kind}/{res.namespace}/{res.name} {verb}")
    return ApplyPlan(merged, refused, {} if refused else writes, tuple(changes))
