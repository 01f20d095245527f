"""A blocking client of the control plane's admin API (proto/clrk/admin/v1), for the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click
import grpc

from clrk.api.loader import manifest_files
from clrk.policy.check import CheckInputError, CheckQuery
from clrk_runtime.protos import ADMIN_MODULE, load

pb2 = load(ADMIN_MODULE)

SERVICE = "clrk.admin.v1.Admin"
DEFAULT_SERVER = "127.0.0.1:18000"
server_option = click.option(
    "--server",
    default=DEFAULT_SERVER,
    show_default=True,
    envvar="CLRK_SERVER",
    help="The control plane's admin API, HOST:PORT (env CLRK_SERVER).",
)


class AdminError(click.ClickException):
    """The server could not be reached or refused the call: the CLI exits 1."""


def _error(server: str, exc: grpc.RpcError) -> AdminError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return AdminError(f"cannot reach the control plane at {server}: {details}")
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
def connect(server: str, timeout: float = 30.0) -> Iterator[AdminClient]:
    with grpc.insecure_channel(server) as channel:
        yield AdminClient(server, channel, timeout)
