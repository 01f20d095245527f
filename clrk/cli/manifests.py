"""Shared by commands that read manifests: load, compile, and report findings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import click

from clrk.api import LoadResult, load_paths
from clrk.api.findings import Finding, Scope
from clrk.policy import PolicySet, compile_policies


def filename_option(
    *, required: bool = True, help: str = "Manifest file or directory (repeatable)."
):
    """`-f/--filename PATH` (repeatable) into the command's `paths`."""
    return click.option(
        "-f", "--filename", "paths", multiple=True, required=required, type=click.Path(), help=help
    )


manifest_option = filename_option()


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


def load_and_compile(paths: Sequence[str]) -> Loaded:
    load = load_paths(paths)
    blocked = any(f.is_error and f.scope is Scope.SET for f in load.findings)
    return Loaded(load, compile_policies(load.resources, rejected=load.rejected), blocked)
