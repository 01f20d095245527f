"""`clrk envoy`: run a gateway's Envoy against a remote control plane, as the Envoy
sidecar of an agent pod does: ADS over mutual TLS with the certificate of a mounted
Secret, the admin API on a Unix socket (the agent shares the pod's network, so no port
of Envoy's may listen on it: its listeners are the control plane's --envoy-socket-dir)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


@click.command()
@click.option("--gateway", required=True, help="The gateway: NAMESPACE/NAME (its node id).")
@click.option("--control-plane", required=True, help="ADS: HOST:PORT of the control plane.")
@click.option(
    "--tls-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="tls.crt, tls.key (the gateway's identity) and ca.crt (the control plane's CA).",
)
@click.option("--server-name", help="The name the control plane's certificate carries.")
@click.option(
    "--admin-socket", default="/tmp/envoy-admin.sock", show_default=True, type=click.Path()
)
@click.option(
    "--work-dir",
    default="/tmp",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the bootstrap is written.",
)
@click.option("--log-level", default="warning", show_default=True)
def envoy(gateway, control_plane, tls_dir, server_name, admin_socket, work_dir, log_level):
    """Write the bootstrap of GATEWAY's Envoy and exec Envoy on it."""
    from clrk_xds.envoy_process import EnvoyError, envoy_binary, render_bootstrap

    if control_plane.startswith("unix:"):
        raise click.BadParameter("a remote control plane: HOST:PORT", param_hint="--control-plane")
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not (Path(tls_dir) / name).is_file():
            raise click.BadParameter(f"{tls_dir}/{name} is missing", param_hint="--tls-dir")
    config = render_bootstrap(
        gateway, control_plane, 0, admin_socket=admin_socket, tls_dir=tls_dir,
        server_name=server_name,
    )  # fmt: skip
    path = Path(work_dir) / "clrk-envoy.json"
    path.write_text(json.dumps(config))
    try:
        binary = envoy_binary()
    except EnvoyError as exc:
        raise click.ClickException(str(exc)) from None
    argv = [binary, "-c", str(path), "--disable-hot-restart", "--log-level", log_level]
    os.execv(binary, argv)
