"""`python -m clrk_worker_dialer` (also `clrk dialer`): run the worker dialer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os

import click


def _addresses(values: tuple[str, ...]) -> list[tuple[str, int]]:
    from clrk_worker_dialer.config import address

    try:
        return [address(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _sources(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        ip, sep, ref = value.partition("=")
        if not sep or not ref:
            raise click.BadParameter(f"{value!r}: expected ADDRESS=NAMESPACE/AGENT")
        out[ip] = ref
    return out


@click.command()
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    type=click.Path(),
    help="Manifests (or use --control-plane).",
)
@click.option(
    "--control-plane",
    help="Follow the control plane's policy stream: unix:PATH, or HOST:PORT with a token "
    "and/or TLS below.",
)
@click.option("--control-plane-token-file", help="TCP: the bearer token to send.")
@click.option("--control-plane-ca", help="TCP: the control plane's CA (TLS).")
@click.option("--control-plane-cert", help="TCP: this dialer's certificate (mTLS).")
@click.option("--control-plane-key", help="TCP: this dialer's private key (mTLS).")
@click.option(
    "--control-plane-tls-dir",
    help="TCP, mTLS: a directory with tls.crt, tls.key and ca.crt (a mounted "
    "kubernetes.io/tls Secret) instead of the three options above.",
)
@click.option(
    "--control-plane-server-name", help="TCP: the name the control plane's certificate carries."
)
@click.option("--gateway", required=True, help="EgressGateway to enforce: NAMESPACE/NAME.")
@click.option("--agent-source", "sources", multiple=True, help="ADDRESS=NAMESPACE/AGENT.")
@click.option("--default-agent", help="The one agent of a sidecar: NAMESPACE/AGENT.")
@click.option(
    "--proxy-credentials",
    type=click.Path(file_okay=False),
    help="Explicit mode: directory of per-agent tokens (file NAMESPACE_NAME) the proxy "
    "password must match; without one only --default-agent may use the proxies.",
)
@click.option("--transparent-tcp", multiple=True, help="Where REDIRECTed TCP arrives.")
@click.option("--transparent-udp", multiple=True, help="Where TPROXYed UDP arrives.")
@click.option("--dns", multiple=True, help="Where DNS (UDP TPROXY and TCP REDIRECT) arrives.")
@click.option("--socks5", help="Explicit SOCKS5 listener, e.g. 127.0.0.1:1080.")
@click.option("--http-connect", help="Explicit HTTP CONNECT listener, e.g. 127.0.0.1:3128.")
@click.option("--next-hop-host", default="127.0.0.1", show_default=True)
@click.option("--next-hop-base-port", default=15100, show_default=True, type=int)
@click.option(
    "--next-hop-socket-dir",
    help="Envoy listens on Unix sockets DIR/LISTENER.sock (the control plane's "
    "--envoy-socket-dir) instead of loopback ports.",
)
@click.option("--resolver", "resolvers", multiple=True, help="Override the gateway's dns.")
@click.option(
    "--own-address", "own", multiple=True, help="This host's addresses or CIDRs (blocked)."
)
@click.option(
    "--watch-own-addresses",
    is_flag=True,
    help="Also block all this network namespace delivers to itself, kept current (netlink).",
)
@click.option("--records", "records_path", default="clrk-records.jsonl", show_default=True)
@click.option(
    "--otlp-endpoint",
    help="Export records over OTLP/gRPC instead of the file (needs --spool-dir).",
)
@click.option(
    "--spool-dir",
    help="Records go to this on-disk spool before the OTLP collector: none is lost to a "
    "crash or a collector that is down.",
)
@click.option(
    "--spool-max-bytes",
    default=256 << 20,
    show_default=True,
    type=click.IntRange(min=128 << 10),
    help="The spool's bound; beyond it records are dropped, loudly.",
)
@click.option("--client-hello-wait", default=1.0, show_default=True, type=float)
@click.option(
    "--sni-confirm-timeout",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to confirm an SNI no DNS answer bound (else sni_unverified).",
)
@click.option(
    "--sni-confirm-concurrency",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="SNI confirmations at once, for all agents together.",
)
@click.option("--udp-idle-timeout", default=60.0, show_default=True, type=float)
@click.option("--no-watch", is_flag=True, help="Do not reload the manifests on change.")
@click.option("--sandboxes", help="Directory where `clrk run` registers its sandboxes.")
@click.option(
    "--spoof-log-group",
    type=click.IntRange(1, 65535),
    help="Record what the sandboxes' anti-spoofing rules drop (their NFLOG group).",
)
@click.option("--ready-file", help="Written once every listener is up.")
@click.option("--log-level", default="info", show_default=True)
def dialer(paths, control_plane, control_plane_token_file, control_plane_ca,
           control_plane_cert, control_plane_key, control_plane_tls_dir,
           control_plane_server_name, gateway, sources, default_agent,
           proxy_credentials, transparent_tcp, transparent_udp, dns, socks5, http_connect,
           next_hop_host, next_hop_base_port, next_hop_socket_dir, resolvers, own,
           watch_own_addresses, records_path, otlp_endpoint, spool_dir, spool_max_bytes,
           client_hello_wait, sni_confirm_timeout, sni_confirm_concurrency,
           udp_idle_timeout, no_watch, sandboxes, spoof_log_group, ready_file,
           log_level) -> None:  # fmt: skip
    """Run the worker dialer: refuse misses before connect, hand the rest to Envoy."""
    from clrk.nexthops import check_socket_dir, socket_dir_problem
    from clrk.policy import OwnAddresses
    from clrk_runtime import logs
    from clrk_runtime.grpc_auth import AuthError, ClientAuth, channel_arguments
    from clrk_worker_dialer.config import DialerConfig
    from clrk_worker_dialer.server import Dialer
    from clrk_worker_dialer.state import PolicyError

    logs.setup(log_level)
    try:
        OwnAddresses.of(own)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--own-address") from None
    config = DialerConfig(
        manifests=list(paths),
        gateway=gateway,
        sources=_sources(sources),
        default_agent=default_agent,
        proxy_credentials_dir=proxy_credentials,
        transparent_tcp=_addresses(transparent_tcp),
        transparent_udp=_addresses(transparent_udp),
        dns=_addresses(dns),
        socks5=_addresses((socks5,))[0] if socks5 else None,
        http_connect=_addresses((http_connect,))[0] if http_connect else None,
        next_hop_host=next_hop_host,
        next_hop_base_port=next_hop_base_port,
        next_hop_socket_dir=next_hop_socket_dir,
        records_path=None if otlp_endpoint else records_path,
        otlp_endpoint=otlp_endpoint,
        spool_dir=spool_dir,
        spool_max_bytes=spool_max_bytes,
        own_addresses=list(own),
        watch_own_addresses=watch_own_addresses,
        resolvers=_addresses(resolvers),
        client_hello_wait=client_hello_wait,
        sni_confirm_timeout=sni_confirm_timeout,
        sni_confirm_concurrency=sni_confirm_concurrency,
        udp_idle_timeout=udp_idle_timeout,
        watch=not no_watch,
        control_plane=control_plane,
        control_plane_auth=ClientAuth(
            control_plane_token_file,
            control_plane_ca,
            control_plane_cert,
            control_plane_key,
            control_plane_server_name,
        ),
        sandboxes_dir=sandboxes,
        spoof_log_group=spoof_log_group,
    )
    if control_plane_tls_dir:
        if control_plane_ca or control_plane_cert or control_plane_key:
            raise click.UsageError(
                "--control-plane-tls-dir or --control-plane-ca/-cert/-key, not both"
            )
        auth = ClientAuth.from_tls_dir(control_plane_tls_dir, control_plane_server_name)
        config.control_plane_auth = dataclasses.replace(auth, token_file=control_plane_token_file)
    if not paths and not control_plane:
        raise click.UsageError("give manifests (-f) or --control-plane")
    if otlp_endpoint and not spool_dir:
        raise click.UsageError(
            "--otlp-endpoint needs --spool-dir: records go to disk before the collector"
        )
    if control_plane:
        try:  # the files are read now: a bad one stops the start, not the first update
            channel_arguments(control_plane, config.control_plane_auth)
        except AuthError as exc:
            raise click.BadParameter(str(exc), param_hint="--control-plane") from None
    if next_hop_socket_dir:
        try:
            check_socket_dir(next_hop_socket_dir)
            # A pod's volume is open to all its containers' users: the directory the
            # dialer and its Envoy share is made inside it, private to their user.
            os.makedirs(next_hop_socket_dir, mode=0o700, exist_ok=True)
        except (ValueError, OSError) as exc:
            raise click.BadParameter(str(exc), param_hint="--next-hop-socket-dir") from None
        problem = socket_dir_problem(next_hop_socket_dir)
        if problem:
            raise click.BadParameter(problem, param_hint="--next-hop-socket-dir")

    async def run() -> None:
        await Dialer(config).run_until_signalled(ready_file)

    _raise_open_files_limit()

    try:
        asyncio.run(run())
    except PolicyError as exc:
        for line in exc.errors:
            click.echo(line, err=True)
        raise click.ClickException("the policy is invalid; nothing to enforce") from None


def _raise_open_files_limit() -> None:
    """A relayed connection holds six descriptors (two sockets, a pipe each way): take
    the whole hard limit rather than the often much lower soft one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # an unlimited hard limit: keep soft
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
