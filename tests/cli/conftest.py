"""Until `clrk.cli` registers the admin commands itself, these tests add them (adding is
a no-op once they are there), so they run through the real `clrk` entry point."""

from __future__ import annotations

from clrk.cli import cli
from clrk.cli.apply import apply
from clrk.cli.get import get
from clrk.cli.records import records

for _command in (apply, get, records):
    if _command.name not in cli.commands:
        cli.add_command(_command)
