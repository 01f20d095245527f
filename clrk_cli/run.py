"""`clrk run --agent [NS/]NAME -- CMD ...`: run a command as a sandboxed agent of the
running `clrk up` (transparent interception as root, the explicit proxies otherwise)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from clrk_cli.up import DEFAULT_STATE_DIR


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--agent", "agent", required=True, help="The agent: [NAMESPACE/]NAME.")
@click.option("--label", "label_values", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path())
@click.option("--explicit", is_flag=True, help="Use the explicit proxies even as root.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(agent, label_values, state_dir, explicit, command) -> None:
    """Run COMMAND as AGENT; its exit code is passed through."""
    from clrk_cli.embedded import agent_env
    from clrk_cli.embedded.layout import StateDir
    from clrk_cli.embedded.run_sandbox import RunError, agent_sandbox, read_info

    try:
        ref = agent_env.agent_ref(agent)
        agent_env.labels(label_values)  # validated; identity comes from the declared agent
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    state = StateDir(Path(state_dir).resolve())
    try:
        info = read_info(state.info)
    except RunError as exc:
        raise click.ClickException(str(exc)) from None
    env = dict(os.environ)
    if state.ca_cert.is_file():
        bundle = state.run / "ca-bundle.pem"
        text = agent_env.bundle_text(
            _read(agent_env.system_bundle()), state.ca_cert.read_text(errors="replace")
        )
        bundle.write_text(text)
        env.update(agent_env.trust_env(str(bundle)))
    ports = info["ports"]
    if os.geteuid() != 0 or explicit:
        if not explicit:
            click.echo(
                "clrk run: not root; using the explicit proxies (ALL_PROXY, HTTPS_PROXY, "
                "HTTP_PROXY) instead of a sandbox",
                err=True,
            )
        env.update(agent_env.proxy_env(ref, ports["socks5"], ports["http_connect"]))
        code = _run(list(command), env)
    else:
        try:
            with agent_sandbox(state.sandboxes, ref, ports, info.get("netns")) as sandbox:
                code = _run(sandbox.exec_argv(list(command)), env)
        except RunError as exc:
            raise click.ClickException(str(exc)) from None
    raise click.exceptions.Exit(code)


def _read(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _run(argv: list[str], env: dict) -> int:
    """Run argv to completion; SIGTERM/SIGINT/SIGHUP are passed on to it (a terminal's
    Ctrl-C reaches it directly), and we wait for it so the sandbox goes afterwards."""
    from clrk_cli.embedded.agent_env import exit_code

    try:
        proc = subprocess.Popen(argv, env=env)
    except OSError as exc:
        click.echo(f"clrk run: {argv[0]}: {exc.strerror}", err=True)
        return 127
    previous = {}

    def forward(signum, _frame) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                returncode = proc.wait()
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.stdout.flush()
    return exit_code(returncode)
