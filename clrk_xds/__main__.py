"""`python -m clrk_xds --manifests PATH --listen unix:PATH`: the control plane.

`--provider kubernetes` reads the clrk custom objects of a cluster instead of files
(in a pod through its service account, else a kubeconfig), and writes their status as
the holder of a Lease.

`--listen` takes a Unix socket (`unix:PATH`, whose directory must be its owner's alone)
or `HOST:PORT`; a TCP listener needs mTLS (--tls-cert, --tls-key, --client-ca, or all
three as --tls-dir in cert-manager's layout) or a bearer token (--token-file), else the
control plane refuses to start.  A client certificate whose URI SAN is a gateway's
identity gets that gateway's policy and Envoy resources only, and no admin API."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import socket

from clrk.nexthops import check_socket_dir, socket_dir_problem
from clrk_runtime.grpc_auth import AuthError, ServerAuth, is_unix
from clrk_runtime.logs import fields, setup
from clrk_xds.server import main


def extproc_address(text: str) -> tuple[str, int] | str:
    """`host:port`, `[v6]:port`, or `unix:/path` (the path of a Unix socket)."""
    if text.startswith("unix:"):
        return text.removeprefix("unix:")
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clrk_xds", description=__doc__)
    parser.add_argument(
        "--manifests", action="append", default=[], help="file or directory (repeatable)"
    )
    parser.add_argument(
        "--provider",
        choices=("file", "kubernetes"),
        default="file",
        help="where the policy comes from: --manifests files, or a cluster's custom objects",
    )
    parser.add_argument("--kubeconfig", help="kubernetes: outside a pod, this kubeconfig")
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "clrk-system"),
        help="kubernetes: namespace of the Lease that elects the status writer",
    )
    parser.add_argument("--lease-name", default="clrk-control-plane")
    parser.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME", socket.gethostname()),
        help="kubernetes: this replica's name in the Lease",
    )
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        help="gRPC address of ADS, the policy stream and the admin API: unix:PATH or "
        "HOST:PORT (repeatable)",
    )
    parser.add_argument("--token-file", help="TCP: clients must send this bearer token")
    parser.add_argument("--tls-cert", help="TCP: the server's certificate chain (PEM)")
    parser.add_argument("--tls-key", help="TCP: the server's private key (PEM)")
    parser.add_argument(
        "--client-ca", help="TCP: clients must present a certificate of this CA (mTLS)"
    )
    parser.add_argument(
        "--tls-dir",
        help="TCP, mTLS: a directory with tls.crt, tls.key and ca.crt (a mounted "
        "kubernetes.io/tls Secret) instead of --tls-cert, --tls-key and --client-ca",
    )
    parser.add_argument(
        "--envoy-host", default=None, help="address the Envoy listeners bind (default 127.0.0.1)"
    )
    parser.add_argument(
        "--envoy-base-port", type=int, default=None, help="first Envoy listener port"
    )
    parser.add_argument(
        "--envoy-socket-dir",
        default=None,
        help="Envoy listens on Unix sockets DIR/LISTENER.sock instead of ports (the dialer's "
        "--next-hop-socket-dir)",
    )
    parser.add_argument(
        "--status-listen",
        default=None,
        help="serve GET /status (JSON) here, e.g. 127.0.0.1:18001 (keep it on loopback)",
    )
    parser.add_argument(
        "--applied-dir", default=None, help="where resources applied through the admin API live"
    )
    parser.add_argument("--records", default=None, help="records file the admin API streams")
    parser.add_argument(
        "--state-dir", default=None, help="keeps the gateway CA (TLS Terminate needs it)"
    )
    parser.add_argument(
        "--extproc", default=None, help="clrk_extproc address: host:port or unix:/path.sock"
    )
    parser.add_argument(
        "--upstream-ca", default=None, help="trust bundle for re-originated TLS (default: system)"
    )
    parser.add_argument(
        "--own-address",
        action="append",
        default=[],
        help="an address or CIDR of the gateway host, always blocked in Envoy's guard (repeatable)",
    )
    parser.add_argument(
        "--watch-own-addresses",
        action="store_true",
        help="also block everything this network namespace delivers to itself (its local "
        "routing table), kept current (netlink): "
        "where the control plane shares the namespace of the Envoy it serves",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup(args.log_level)
    factory = credentials = None
    if args.provider == "kubernetes":
        if args.manifests or args.applied_dir:
            parser.error("--provider kubernetes reads no --manifests and has no --applied-dir")
        factory, credentials = _kubernetes(args)
    elif not args.manifests:
        parser.error("--manifests is required (or --provider kubernetes)")
    auth = ServerAuth(args.token_file, args.tls_cert, args.tls_key, args.client_ca)
    if args.tls_dir:
        if args.tls_cert or args.tls_key or args.client_ca:
            parser.error("--tls-dir or --tls-cert/--tls-key/--client-ca, not both")
        auth = ServerAuth.from_tls_dir(args.tls_dir, args.token_file)
    try:
        for address in args.listen:
            if not is_unix(address):
                auth.check(address)
        # Read now: a missing or empty file stops the start, not the first client.
        auth.interceptors()
        if auth.cert_file is not None:
            auth.credentials()
    except AuthError as exc:
        parser.error(str(exc))
    for address in args.own_address:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            parser.error(f"--own-address: {address!r} is not an IPv4 or IPv6 address or CIDR")
    options: dict[str, object] = {"envoy_host": args.envoy_host, "base_port": args.envoy_base_port}
    if args.envoy_socket_dir:
        try:
            check_socket_dir(args.envoy_socket_dir)
        except ValueError as exc:
            parser.error(f"--envoy-socket-dir: {exc}")
        # Not here at all: the Envoys are remote (sidecars of agent pods), and their
        # dialers check the directory where it is.
        if not os.path.lexists(args.envoy_socket_dir):
            logging.getLogger("clrk_xds").info(
                "envoy_socket_dir.remote", extra=fields(path=args.envoy_socket_dir)
            )
        elif problem := socket_dir_problem(args.envoy_socket_dir):
            parser.error(f"--envoy-socket-dir: {problem}")
        options["socket_dir"] = args.envoy_socket_dir
    if args.upstream_ca:
        options["upstream_ca"] = args.upstream_ca
    if args.extproc:
        options["extproc_address"] = extproc_address(args.extproc)
    options = {k: v for k, v in options.items() if v is not None}
    asyncio.run(
        main(
            args.manifests,
            args.listen,
            args.status_listen,
            args.applied_dir,
            args.records,
            args.state_dir,
            auth,
            factory,
            args.own_address,
            args.watch_own_addresses,
            credentials,
            **options,
        )
    )


def _kubernetes(args: argparse.Namespace):
    """The provider's factory, and the credentials' reader that also reads the Secrets
    it watches."""
    from clrk_xds.credential_secrets import CredentialSecrets
    from clrk_xds.k8s_acks import AckBoard
    from clrk_xds.k8s_lease import LeaseElector
    from clrk_xds.k8s_secrets import SecretStore
    from clrk_xds.provider_kubernetes import api_client, provider_factory

    api = api_client(args.kubeconfig)
    elector = LeaseElector(api, args.lease_namespace, args.lease_name, args.identity)
    acks = AckBoard(api, args.lease_namespace, args.identity)
    secrets = SecretStore(api)
    credentials = CredentialSecrets(secret_refs=secrets)
    factory = provider_factory(api, elector, acks=acks, secrets=secrets, credentials=credentials)
    return factory, credentials


if __name__ == "__main__":
    cli()
