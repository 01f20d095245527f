"""The README's commands: every `clrk` command it shows exists and parses its options;
the offline ones (validate, check) run for real here.  The stack commands (up, run,
records, apply) are exercised against a running gateway in tests/up/test_readme_flows.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from clrk_cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
OFFLINE = {"validate", "check"}


def readme_commands() -> list[list[str]]:
    text = README.read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("clrk "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_readme_shows_the_commands_a_user_needs():
    shown = {argv[0] for argv in readme_commands()}
    assert {"up", "run", "records", "apply", "get", "check", "ca"} <= shown


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_each_readme_command_exists_and_parses(argv, monkeypatch):
    monkeypatch.chdir(README.parent)
    command = cli.commands[argv[0]]
    runner = CliRunner()
    if argv[0] in OFFLINE:
        result = runner.invoke(cli, argv)
        assert result.exit_code == 0, result.output
        return
    # Parse without running: every option and argument the README uses is accepted.
    target = command
    rest = argv[1:]
    while hasattr(target, "commands") and rest and rest[0] in target.commands:
        target, rest = target.commands[rest[0]], rest[1:]
    ctx = target.make_context(argv[0], list(rest), resilient_parsing=True)
    assert ctx.params is not None
