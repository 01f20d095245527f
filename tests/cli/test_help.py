"""Every `clrk` command, including ones registered later, answers --help with exit 0."""

from __future__ import annotations

import click
import pytest

from clrk_cli import cli, main


def _paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(command, click.Group):
            out += _paths(command, (*prefix, name))
    return out


def test_there_are_commands():
    assert {"validate", "check", "version"} <= set(cli.commands)


@pytest.mark.parametrize("path", _paths(cli), ids=" ".join)
def test_help_exits_0(capsys, path):
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: clrk " + " ".join(path))
