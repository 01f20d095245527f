"""`clrk validate -f PATH ...`: every error at once, one per line."""

from __future__ import annotations

from collections import Counter

import click

from clrk.policy.loaded import load_and_compile
from clrk_cli.manifests import manifest_option

_PLURAL = {
    "EgressGateway": ("gateway", "gateways"),
    "EgressL4Route": ("route", "routes"),
    "EgressDenyPolicy": ("deny policy", "deny policies"),
    "EgressCredential": ("credential", "credentials"),
    "Agent": ("agent", "agents"),
}


def _count(n: int, kind: str) -> str:
    one, many = _PLURAL[kind]
    return f"{n} {one if n == 1 else many}"


@click.command()
@manifest_option
def validate(paths: tuple[str, ...]) -> None:
    """Validate manifests.  Exit 0 when valid (warnings allowed), 1 when not.

    Each problem is one line: FILE: document N: KIND/NAME: FIELD.PATH: message
    """
    loaded = load_and_compile(paths)
    findings = loaded.findings
    errors = [f for f in findings if f.is_error]
    for finding in findings:
        click.echo(finding.line())
    warnings = len(findings) - len(errors)
    if errors:
        click.echo(f"invalid: {len(errors)} error(s), {warnings} warning(s)", err=True)
        raise click.exceptions.Exit(1)
    kinds = Counter(
        "Agent" if r.kind in ("DaemonAgent", "TaskAgent") else r.kind for r in loaded.load.resources
    )
    # Credentials are optional: counted only when there are some.
    shown = [k for k in _PLURAL if kinds[k] or k != "EgressCredential"]
    counts = ", ".join(_count(kinds[k], k) for k in shown)
    docs, files = loaded.load.documents, loaded.load.files
    click.echo(
        f"valid: {counts} ({docs} document{'s' * (docs != 1)} in {files} file{'s' * (files != 1)})"
        + (f", {warnings} warning(s)" if warnings else "")
    )
