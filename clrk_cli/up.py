"""`clrk up`: the embedded stack (control plane, ext_proc, Envoy, dialer) under one
supervisor, on the manifests given."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clrk_cli.manifests import manifest_option

if TYPE_CHECKING:
    from clrk_cli.embedded.layout import StateDir

DEFAULT_STATE_DIR = ".clrk"


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _tcp_listen(address, token_file, tls_cert, tls_key, client_ca):
    """The opt-in TCP listener, checked before anything starts (never an open one)."""
    from clrk_cli.embedded.layout import TcpListen
    from clrk_runtime.grpc_auth import AuthError, ServerAuth

    files = (token_file, tls_cert, tls_key, client_ca)
    if address is None:
        if any(files):
            raise click.UsageError("--token-file/--tls-*/--client-ca go with --listen")
        return None
    _listen(address)  # HOST:PORT
    absolute = [str(Path(f).resolve()) if f else None for f in files]
    try:
        ServerAuth(*absolute).check(address)
    except AuthError as exc:
        raise click.UsageError(str(exc)) from None
    return TcpListen(address, *absolute)


def private_state(root: Path) -> None:
    """The state directory is the gateway's alone (issue 11): the CA key, the sandbox
    registrations the dialer trusts, Envoy's sockets and the control plane's live there.
    Made 0700, or tightened to it (and its CA directory too) when it is ours."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(root)
    except OSError as exc:
        raise click.ClickException(f"state directory {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise click.ClickException(
            f"state directory {root} must be a directory of this user (uid {os.geteuid()})"
        )
    for path in (root, root / "ca"):
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(path).st_mode & 0o077:
                path.chmod(0o700)


def _ensure_ca(state_dir: Path) -> None:
    """Create the gateway CA up front (STATE/ca/): `clrk run` puts it in the agents' trust
    variables, and the control plane signs TLS Terminate leaves with it."""
    try:
        from clrk_xds.ca import CAError, GatewayCA
    except ImportError:
        return
    try:
        GatewayCA.load_or_create(state_dir)
    except CAError as exc:
        raise click.ClickException(f"gateway CA: {exc}") from None


def _fits_socket_paths(directory: Path) -> bool:
    from clrk.nexthops import check_socket_dir

    try:
        check_socket_dir(str(directory))
    except ValueError:
        return False
    return True


def socket_directory(state: StateDir) -> Path:
    """The directory of Envoy's listener sockets: STATE/run/envoy, created private, or,
    when socket paths there would be too long, a fresh directory in the system temp
    directory.  mkdtemp makes that one atomically, mode 0700, under a random name, so no
    other local user can squat it beforehand; the supervisor removes it at exit."""
    from clrk_cli.embedded.supervisor import private_directory

    preferred = state.envoy_sockets
    if _fits_socket_paths(preferred):
        try:
            private_directory(preferred)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        return preferred
    try:
        fallback = Path(tempfile.mkdtemp(prefix="clrk-"))
    except OSError as exc:
        raise click.ClickException(
            f"{preferred} is too long a path for Envoy's listener sockets, and no directory "
            f"could be made in the temp directory (TMPDIR) instead: {exc}"
        ) from None
    if not _fits_socket_paths(fallback):
        os.rmdir(fallback)
        raise click.ClickException(
            f"{preferred} and the temp directory {fallback.parent} (TMPDIR) are both too "
            "long a path for Envoy's listener sockets: set TMPDIR to a shorter directory "
            "(such as /tmp) or use a shorter --state-dir"
        )
    return fallback


@click.command()
@manifest_option
@click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    type=click.Path(),
    help="Records, logs, sandbox registry and the gateway CA.",
)
@click.option("--gateway", help="The EgressGateway to run (default: the one with agents).")
@click.option(
    "--metrics-listen",
    default="127.0.0.1:9464",
    show_default=True,
    help="Loopback HTTP: /healthz and /metrics.",
)
@click.option("--otlp-endpoint", help="Export records over OTLP/gRPC instead of the file.")
@click.option(
    "--upstream-ca",
    type=click.Path(exists=True, dir_okay=False),
    help="Trust bundle for TLS re-originated to upstreams (default: the system bundle).",
)
@click.option(
    "--listen",
    "tcp_listen",
    metavar="HOST:PORT",
    help="Also serve the admin API, policy stream and ADS over TCP (they are a Unix socket "
    "in the state directory's reach only otherwise); needs --token-file or mTLS.",
)
@click.option("--token-file", type=click.Path(dir_okay=False), help="TCP: the bearer token.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="TCP: server certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="TCP: server private key.")
@click.option(
    "--client-ca",
    type=click.Path(dir_okay=False),
    help="TCP: clients must present a certificate of this CA (mTLS).",
)
@click.option("--log-level", default="info", show_default=True)
def up(
    paths,
    state_dir,
    gateway,
    metrics_listen,
    otlp_endpoint,
    upstream_ca,
    tcp_listen,
    token_file,
    tls_cert,
    tls_key,
    client_ca,
    log_level,
) -> None:
    """Run the whole gateway here; prints `clrk ready` when every part is healthy and
    stops everything on Ctrl-C/SIGTERM."""
    from clrk.policy.loaded import load_and_compile
    from clrk_cli.embedded.layout import (
        LayoutError,
        Ports,
        StateDir,
        choose_gateway,
        stack,
    )
    from clrk_cli.embedded.netns import current_netns
    from clrk_cli.embedded.supervisor import Supervisor
    from clrk_runtime import logs
    from clrk_xds.envoy_process import EnvoyError, envoy_binary

    logs.setup(log_level)
    listen = _tcp_listen(tcp_listen, token_file, tls_cert, tls_key, client_ca)
    loaded = load_and_compile(paths)
    errors = [f for f in loaded.findings if f.is_error]
    if errors or loaded.policies is None:
        for finding in errors:
            click.echo(finding.line(), err=True)
        raise click.ClickException("the manifests are invalid; nothing started")
    try:
        gateway = choose_gateway(loaded.policies, gateway)
        envoy = envoy_binary()
    except (LayoutError, EnvoyError) as exc:
        raise click.ClickException(str(exc)) from None
    with_extproc = _has_module("clrk_extproc.__main__")
    if not with_extproc:
        click.echo("warning: clrk_extproc has no entry point yet; running without it", err=True)
    state = StateDir(Path(state_dir).resolve())
    private_state(state.root)
    _ensure_ca(state.root)
    sockets = socket_directory(state)
    try:
        ports = Ports()
        children = stack(
            [str(Path(p).resolve()) for p in paths],
            gateway,
            state,
            sockets=sockets,
            ports=ports,
            envoy=envoy,
            with_extproc=with_extproc,
            otlp_endpoint=otlp_endpoint,
            upstream_ca=str(Path(upstream_ca).resolve()) if upstream_ca else None,
            tcp_listen=listen,
        )
        supervisor = Supervisor(
            children,
            state,
            gateway=gateway,
            sockets=sockets,
            ports=ports,
            netns=current_netns(),
            metrics_listen=_listen(metrics_listen),
        )
        asyncio.run(supervisor.run())
    finally:
        # The supervisor removes a temp directory at exit; this covers a start that
        # failed before it ran.
        if not sockets.is_relative_to(state.root):
            shutil.rmtree(sockets, ignore_errors=True)
