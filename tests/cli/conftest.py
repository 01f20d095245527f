"""Until `clrk_cli` registers the admin commands itself, these tests add them (adding is
a no-op once they are there), so they run through the real `clrk` entry point."""

from __future__ import annotations

from clrk_cli import cli
from clrk_cli.apply import apply
from clrk_cli.get import get
from clrk_cli.records import records

for _command in (apply, get, records):
    if _command.name not in cli.commands:
        cli.add_command(_command)
