"""`clrk run --agent [NS/]NAME -- CMD ...`: run a command as a sandboxed agent of the
running `clrk up` (transparent interception as root, the explicit proxies otherwise).

As root the command is confined (clrk_cli.embedded.confine): an unprivileged user, no
capabilities, no_new_privs, its own network, PID, mount and IPC namespaces.  Nothing of
the gateway is within its reach: not its processes, namespaces, rules, sockets or
state directory.  `--privileged` gives all of that up, for debugging only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from clrk_cli.up import DEFAULT_STATE_DIR

PRIVILEGED_WARNING = """\
clrk run --privileged: the command runs as root with every capability, in the sandbox's
network namespace only.  It can leave the sandbox: enter the gateway's namespace, flush
the interception rules, speak from other agents' addresses, read the gateway CA's key
and hand Envoy forged PROXY headers.  For debugging only; never for an untrusted agent."""


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--agent", "agent", required=True, help="The agent: [NAMESPACE/]NAME.")
@click.option("--label", "label_values", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path())
@click.option("--explicit", is_flag=True, help="Use the explicit proxies even as root.")
@click.option(
    "--user",
    help="Run COMMAND as this user (NAME or UID).  Default: the user who ran sudo, else "
    "a uid of the agents' own (65533).  Never root.",
)
@click.option(
    "--privileged",
    is_flag=True,
    help="DEBUGGING ONLY: run COMMAND as root with every capability; it can leave the sandbox.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(agent, label_values, state_dir, explicit, user, privileged, command) -> None:
    """Run COMMAND as AGENT; its exit code is passed through."""
    from clrk_cli.embedded import agent_env
    from clrk_cli.embedded.layout import StateDir
    from clrk_cli.embedded.run_sandbox import RunError, read_info

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
    with _trust_bundle(state) as bundle:
        env = dict(os.environ)
        if bundle is not None:
            env.update(agent_env.trust_env(bundle))
        _credential_env(info, env)
        if os.geteuid() != 0 or explicit:
            _explicit_env(state, ref, info["ports"], env, explicit)
            code = _run(list(command), env)
        else:
            code = _run_sandboxed(state, ref, info, env, user, privileged, list(command))
    raise click.exceptions.Exit(code)


def _credential_env(info: dict, env: dict) -> None:
    """Placeholders in, the secrets' own variables out (clrk_cli.credential_env)."""
    from clrk_cli import credential_env

    try:
        credentials = credential_env.gateway_credentials(info["control_plane"], info["gateway"])
    except (credential_env.CredentialEnvError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    credential_env.apply(env, credentials)


def _explicit_env(state, ref: str, ports: dict, env: dict, explicit: bool) -> None:
    """The explicit proxies in `env`, with the agent's proxy credential (made on first
    use: only the user of `clrk up` may write the state directory)."""
    from clrk_cli.embedded import agent_env
    from clrk_worker_dialer.proxy_credentials import ensure_token

    if not explicit:
        click.echo(
            "clrk run: not root; using the explicit proxies (ALL_PROXY, HTTPS_PROXY, "
            "HTTP_PROXY) instead of a sandbox",
            err=True,
        )
    try:
        token = ensure_token(state.proxy_credentials, ref)
    except OSError as exc:
        raise click.ClickException(
            f"the agent's proxy credential in {state.proxy_credentials}: {exc} (run as the "
            "user of `clrk up`)"
        ) from None
    env.update(agent_env.proxy_env(ref, token, ports["socks5"], ports["http_connect"]))


def _run_sandboxed(state, ref, info, env, user, privileged, command) -> int:
    from clrk_cli.embedded import agent_user, confine
    from clrk_cli.embedded.run_sandbox import RunError, agent_sandbox

    if privileged:
        if user is not None:
            raise click.UsageError("--privileged runs as root: drop --user")
        click.echo(PRIVILEGED_WARNING, err=True)
    else:
        try:
            who = agent_user.choose(user, os.environ)
        except agent_user.UserError as exc:
            raise click.UsageError(str(exc)) from None
        if problem := agent_user.reach_problem(state.root, who):
            raise click.ClickException(
                f"the agent's user ({who.uid}, {who.why}) could reach the gateway's state: "
                f"{problem}.  Keep --state-dir in a directory only root may write, e.g. "
                "/var/lib/clrk"
            )
        env.update(who.env())
        for key in [k for k, v in env.items() if v == "" and k in ("USER", "LOGNAME")]:
            del env[key]
    try:
        with agent_sandbox(state.sandboxes, ref, info["ports"], info.get("netns")) as sandbox:
            if privileged:
                argv = sandbox.exec_argv(command)
            else:
                argv = confine.command(sandbox.name, who.uid, who.gid, command)
            return _run(argv, env)
    except RunError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def _trust_bundle(state) -> Iterator[str | None]:
    """The system CAs and the gateway CA certificate, in a file of this run that any
    user may read (the state directory is the gateway's alone); None without a CA."""
    from clrk_cli.embedded import agent_env

    try:
        ca = state.ca_cert.read_text(errors="replace")
    except OSError:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="clrk-run-"))
    try:
        directory.chmod(0o755)
        bundle = directory / "ca-bundle.pem"
        bundle.write_text(agent_env.bundle_text(_read(agent_env.system_bundle()), ca))
        bundle.chmod(0o644)
        yield str(bundle)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


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
