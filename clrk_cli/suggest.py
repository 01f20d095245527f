"""`clrk suggest`: print the EgressL4Routes that would allow what the records of
--state-dir show was denied (reported or enforced); the core is `clrk.records.suggest`."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from clrk.policy.loaded import load_and_compile
from clrk.records.query import iter_records
from clrk.records.suggest import suggest as suggest_routes
from clrk_cli.manifests import filename_option
from clrk_cli.records import RECORDS_FILE, _since
from clrk_xds.admin_records import RecordFilter


def _table(rows: list[tuple[str, ...]]) -> str:
    rows = [("GATEWAY", "AGENT", "LISTENER", "PROTOCOL", "PORT", "DESTINATION"), *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    )


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="CLRK_STATE_DIR",
    required=True,
    help=f"Read DIR/{RECORDS_FILE} (env CLRK_STATE_DIR).",
)
@filename_option(help="The manifests in force: the gateways' listeners, the agents' labels.")
@click.option("--agent", help="Only this agent, as [NAMESPACE/]NAME.")
@click.option("--gateway", help="Only this gateway, as [NAMESPACE/]NAME.")
@click.option("--since", help="Only records of the last 30s, 10m, 2h, 1h30m, ...")
@click.option(
    "--wildcards",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Suggest *.parent where N sibling names of one parent were seen (0: never).",
)
@click.option(
    "-o", "--output", type=click.Choice(["yaml", "table"]), default="yaml", show_default=True
)
def suggest(
    state_dir: str,
    paths: tuple[str, ...],
    agent: str | None,
    gateway: str | None,
    since: str | None,
    wildcards: int,
    output: str,
) -> None:
    """Suggest EgressL4Routes that allow what was denied: exact names, the ports and
    protocol seen, the listener fitting each port, the agents' labels.  Never a blocked
    address or a credential's misuse.

    Exit 0 when the records were read (even if nothing is suggested), 1 on errors.
    """
    loaded = load_and_compile(paths)
    for finding in loaded.findings:
        click.echo(finding.line(), err=True)
    if loaded.policies is None:
        raise click.ClickException("the manifests are invalid (run `clrk validate`)")
    policies = {p.ref: p for p in loaded.policies.gateways.values()}
    flt = RecordFilter(agent=agent or "", gateway=gateway or "", since_ns=_since(since))
    path = Path(state_dir) / RECORDS_FILE
    try:
        found = suggest_routes(
            (r for r in iter_records(str(path)) if flt.matches(r)), policies, wildcards
        )
    except OSError as exc:
        raise click.ClickException(f"cannot read records from {path}: {exc.strerror}") from None
    for reason in found.skipped:
        click.echo(f"not suggested: {reason}", err=True)
    if output == "table":
        click.echo(_table(found.rows) if found.rows else "nothing to suggest")
    elif found.routes:
        click.echo(yaml.safe_dump_all(found.routes, sort_keys=False).rstrip())
    else:
        click.echo("# nothing to suggest")
