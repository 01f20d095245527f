"""A blocking client of the control plane's admin API (proto/clrk/admin/v1), for the CLI.

Where it is: `--server` (unix:PATH, or HOST:PORT with a token and/or TLS), else the Unix
socket of the running `clrk up` of `--state-dir` (read from its up.json: only the user
of `clrk up` may read it, as only that user may connect)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click
import grpc

from clrk.api.loader import manifest_files
from clrk.policy.check import CheckInputError, CheckQuery
from clrk_runtime import grpc_auth
from clrk_runtime.grpc_auth import ClientAuth
from clrk_runtime.protos import ADMIN_MODULE, load

pb2 = load(ADMIN_MODULE)

SERVICE = "clrk.admin.v1.Admin"
DEFAULT_STATE_DIR = ".clrk"  # `clrk up`'s


@dataclass(frozen=True)
class Endpoint:
    """Where the admin API is and how to authenticate (from the command line)."""

    server: str | None = None
    state_dir: str = DEFAULT_STATE_DIR
    auth: ClientAuth = field(default_factory=ClientAuth)

    def address(self) -> str:
        if self.server:
            return self.server
        from clrk_cli.embedded.layout import StateDir
        from clrk_cli.embedded.run_sandbox import RunError, read_info

        try:
            info = read_info(StateDir(Path(self.state_dir).resolve()).info)
        except RunError as exc:
            raise AdminError(f"{exc} (or give --server)") from None
        address = info.get("control_plane")
        if not isinstance(address, str):
            raise AdminError(f"the `clrk up` of {self.state_dir} names no control plane")
        return address


_ENDPOINT_OPTIONS = (
    click.option(
        "--server",
        envvar="CLRK_SERVER",
        help="The control plane's admin API: unix:PATH or HOST:PORT (env CLRK_SERVER). "
        "Default: the running `clrk up` of --state-dir.",
    ),
    click.option(
        "--token-file",
        type=click.Path(dir_okay=False),
        envvar="CLRK_TOKEN_FILE",
        help="TCP: the bearer token to send (env CLRK_TOKEN_FILE).",
    ),
    click.option(
        "--ca-file",
        type=click.Path(dir_okay=False),
        envvar="CLRK_CA_FILE",
        help="TCP: the server's CA, for TLS (env CLRK_CA_FILE).",
    ),
    click.option(
        "--cert-file",
        type=click.Path(dir_okay=False),
        envvar="CLRK_CERT_FILE",
        help="TCP: this client's certificate, for mTLS (env CLRK_CERT_FILE).",
    ),
    click.option(
        "--key-file",
        type=click.Path(dir_okay=False),
        envvar="CLRK_KEY_FILE",
        help="TCP: this client's private key, for mTLS (env CLRK_KEY_FILE).",
    ),
)
STATE_DIR_OPTION = click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    envvar="CLRK_STATE_DIR",
    type=click.Path(file_okay=False),
    help="The state directory of the `clrk up` to ask (env CLRK_STATE_DIR).",
)


def endpoint_options(with_state_dir: bool = True):
    """The options that say where the admin API is; the command gets `endpoint`."""

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, server, token_file, ca_file, cert_file, key_file, **kwargs):
            state_dir = kwargs.pop("state_dir") if with_state_dir else None
            auth = ClientAuth(token_file, ca_file, cert_file, key_file)
            endpoint = Endpoint(server, state_dir or DEFAULT_STATE_DIR, auth)
            return command(*args, endpoint=endpoint, **kwargs)

        options = (*((STATE_DIR_OPTION,) if with_state_dir else ()), *_ENDPOINT_OPTIONS)
        for option in reversed(options):  # click lists them in the order given here
            wrapper = option(wrapper)
        return wrapper

    return decorate


class AdminError(click.ClickException):
    """The server could not be reached or refused the call: the CLI exits 1."""


def _error(server: str, exc: grpc.RpcError) -> AdminError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return AdminError(f"cannot reach the control plane at {server}: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AdminError(f"{server} refused us: {details} (see --token-file, --cert-file)")
    name = code.name if code is not None else "ERROR"
    return AdminError(f"{server}: {name}: {details}")


def read_manifests(paths: Sequence[str]) -> list[pb2.Manifest]:
    """Files and directories as `clrk validate -f` reads them, named as it names them."""
    out = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise click.ClickException(f"{given}: no such file or directory")
        for file in manifest_files(path):
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise click.ClickException(f"{file}: cannot read: {exc}") from None
            out.append(pb2.Manifest(name=str(file), text=text))
    return out


class AdminClient:
    def __init__(self, server: str, channel: grpc.Channel, timeout: float = 30.0) -> None:
        self.server = server
        self.timeout = timeout
        self._channel = channel

    def _unary(self, method: str, request, response_type, timeout: float | None = None):
        call = self._channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return call(request, timeout=timeout or self.timeout, wait_for_ready=False)
        except grpc.RpcError as exc:
            raise _error(self.server, exc) from None

    def apply(self, manifests: Sequence[pb2.Manifest], dry_run: bool = False) -> pb2.ApplyResponse:
        request = pb2.ApplyRequest(manifests=list(manifests), dry_run=dry_run)
        return self._unary("Apply", request, pb2.ApplyResponse)

    def list(self, kind: str = "") -> pb2.ListResponse:
        return self._unary("List", pb2.ListRequest(kind=kind), pb2.ListResponse)

    def check(self, query: CheckQuery) -> tuple[dict, tuple[str, ...]]:
        request = pb2.CheckRequest(
            gateway=query.gateway or "",
            agent=query.agent,
            agent_labels=list(query.agent_labels),
            protocol=query.protocol,
            dst_ip=query.dst_ip,
            port=query.port,
            hostnames=list(query.hostnames),
            sni=query.sni or "",
        )
        call = self._channel.unary_unary(
            f"/{SERVICE}/Check",
            request_serializer=pb2.CheckRequest.SerializeToString,
            response_deserializer=pb2.CheckResponse.FromString,
        )
        try:
            response = call(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise CheckInputError(exc.details()) from None
            raise _error(self.server, exc) from None
        return json.loads(response.decision_json), tuple(response.warnings)

    def stream_records(self, request: pb2.StreamRecordsRequest) -> Iterator[dict]:
        """Records as the server sends them, until the stream ends or is interrupted."""
        call = self._channel.unary_stream(
            f"/{SERVICE}/StreamRecords",
            request_serializer=pb2.StreamRecordsRequest.SerializeToString,
            response_deserializer=pb2.Record.FromString,
        )(request)
        try:
            for record in call:
                yield json.loads(record.json)
        except grpc.RpcError as exc:
            raise _error(self.server, exc) from None
        finally:
            call.cancel()


@contextmanager
def connect(endpoint: Endpoint | str, timeout: float = 30.0) -> Iterator[AdminClient]:
    """A client of the admin API at `endpoint` (or at an address, without credentials)."""
    if isinstance(endpoint, str):
        endpoint = Endpoint(server=endpoint)
    address = endpoint.address()
    try:
        channel = grpc_auth.channel(address, endpoint.auth)
    except grpc_auth.AuthError as exc:
        raise AdminError(str(exc)) from None
    with channel:
        yield AdminClient(address, channel, timeout)
