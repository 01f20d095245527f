"""Manifests -> validated resources -> compiled policies, with the findings of both steps
and the one answer to "may this set be applied at all?"."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clrk.api import LoadResult, load_paths
from clrk.api.findings import Finding, Scope
from clrk.policy.compile import CompileCache, compile_policies
from clrk.policy.compiled import PolicySet


def blocking(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that stop the whole set from being applied (the last good policy
    stays); object-scoped errors only take their own object out."""
    return [f for f in findings if f.is_error and f.scope is Scope.SET]


def blocks_the_set(findings: Iterable[Finding]) -> bool:
    return bool(blocking(findings))


@dataclass(frozen=True)
class Loaded:
    load: LoadResult
    compiled: PolicySet  # of the valid documents, for their reference findings
    blocked: bool  # errors that block the whole set: nothing may be applied

    @property
    def policies(self) -> PolicySet | None:
        return None if self.blocked else self.compiled

    @property
    def findings(self) -> list[Finding]:
        merged = list(self.load.findings) + list(self.compiled.findings)
        return sorted(merged, key=lambda f: (f.file, f.document))


def compile_loaded(load: LoadResult, cache: CompileCache | None = None) -> Loaded:
    """`cache`: the last compile of the same source, to reuse (see CompileCache)."""
    compiled = compile_policies(
        load.resources, rejected=load.rejected, secret_refs=load.secret_refs, cache=cache
    )
    return Loaded(load, compiled, blocks_the_set(load.findings))


def load_and_compile(paths: Sequence[str]) -> Loaded:
    return compile_loaded(load_paths(paths))
