"""`clrk records`: query the local decision records (SPEC 8), or follow them live
through the control plane's admin API."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import click

from clrk.records.query import iter_records
from clrk_cli.admin_client import DEFAULT_STATE_DIR, endpoint_options
from clrk_xds.admin_records import (
    ENFORCEMENTS,
    SIGNALS,
    RecordFilter,
    parse_since,
    record_table,
)

RECORDS_FILE = "records.jsonl"  # inside --state-dir, as `clrk up` writes it


def _since(text: str | None) -> int:
    if text is None:
        return 0
    try:
        return time.time_ns() - parse_since(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _follow(endpoint, flt: RecordFilter, output: str) -> None:
    from clrk_cli import admin_client

    request = admin_client.pb2.StreamRecordsRequest(
        name=flt.name,
        deny_reason=flt.deny_reason,
        agent=flt.agent,
        gateway=flt.gateway,
        since_unix_nano=flt.since_ns,
        signal=flt.signal,
        enforcement=flt.enforcement,
    )
    with admin_client.connect(endpoint) as client:
        header = output == "table"
        for record in client.stream_records(request):
            if output == "json":
                click.echo(json.dumps(record, sort_keys=True))
            else:
                table = record_table([record]).splitlines()
                click.echo("\n".join(table if header else table[1:]))
                header = False


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="CLRK_STATE_DIR",
    help=f"Read DIR/{RECORDS_FILE} (env CLRK_STATE_DIR).",
)
@click.option("--file", "file", type=click.Path(dir_okay=False), help="Read this records file.")
@click.option("--name", help="Record name, e.g. egress.dial.denied.")
@click.option("--deny-reason", help="clrk.egress.deny_reason, e.g. policy.")
@click.option(
    "--enforcement",
    type=click.Choice(ENFORCEMENTS),
    help="Only denials the gateway enforced, or only those Report mode let through.",
)
@click.option("--agent", help="Agent as [NAMESPACE/]NAME.")
@click.option("--gateway", help="Gateway as [NAMESPACE/]NAME.")
@click.option("--since", help="Only records of the last 30s, 10m, 2h, 1h30m, ...")
@click.option(
    "--signal",
    type=click.Choice(SIGNALS),
    default="log",
    show_default=True,
    help="Each decision is one span and one log record: which to show.",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Stream new records from the control plane's admin API (of --state-dir, or "
    "--server) until ^C.",
)
@endpoint_options(with_state_dir=False)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json: one JSON object per line.",
)
def records(
    state_dir: str | None,
    file: str | None,
    name: str | None,
    deny_reason: str | None,
    enforcement: str | None,
    agent: str | None,
    gateway: str | None,
    since: str | None,
    signal: str,
    follow: bool,
    endpoint,
    output: str,
) -> None:
    """Query decision records: denials, allowed connections and requests.

    Exit 0 when the records were read (even if none match), 1 on errors such as a
    missing records file.
    """
    flt = RecordFilter(
        name=name or "",
        deny_reason=deny_reason or "",
        enforcement=enforcement or "",
        agent=agent or "",
        gateway=gateway or "",
        since_ns=_since(since),
        signal=signal,
    )
    if follow:
        if file:
            raise click.UsageError("--follow reads from the control plane: drop --file")
        _follow(replace(endpoint, state_dir=state_dir or DEFAULT_STATE_DIR), flt, output)
        return
    if endpoint.server:
        raise click.UsageError("--server goes with --follow")
    if bool(state_dir) == bool(file):
        raise click.UsageError("give one of --state-dir DIR or --file FILE")
    path = Path(file) if file else Path(state_dir) / RECORDS_FILE
    try:
        found = [r for r in iter_records(str(path)) if flt.matches(r)]
    except OSError as exc:
        raise click.ClickException(f"cannot read records from {path}: {exc.strerror}") from None
    if output == "json":
        for record in found:
            click.echo(json.dumps(record, sort_keys=True))
    elif found:
        click.echo(record_table(found))
    else:
        click.echo("no matching records", err=True)
