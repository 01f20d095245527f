"""Who may speak to the control plane's gRPC endpoints, the admin API, the policy stream
and ADS (issue 11, item 5), for servers and clients alike.

- A Unix socket, `unix:/path`: its directory must be its owner's alone (0700), and the
  socket is 0600, so only that user (the gateway's: Envoy, the dialer, the operator's
  `clrk apply` as root) may connect.  No credentials on top.
- TCP, `HOST:PORT`, is opt-in and never open: mutual TLS (the server's certificate and
  key, client certificates verified against a CA file), a bearer token read from a file,
  or both.  A token without TLS only on a loopback address, where nothing can read it
  on the way.  A TCP listener with neither refuses to start.

The token is checked by a server interceptor; a verified client certificate's names
reach the servicer through `client_identity(context)`.  A certificate whose URI SAN is
a gateway's identity (clrk.gateway_identity) binds its caller to that gateway:
`scoped_gateway` gives the servicer the gateway such a caller may act for, whatever it
asked for, and `operators_only` keeps it out of a whole service (the admin API).

Certificates may come as one directory in cert-manager's layout (`tls.crt`, `tls.key`,
`ca.crt`, the files of a mounted `kubernetes.io/tls` Secret): `ServerAuth.from_tls_dir`,
`ClientAuth.from_tls_dir`.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from clrk.gateway_identity import IdentityError, gateway_of
from clrk_runtime.logs import fields

log = logging.getLogger("clrk_runtime.grpc_auth")

UNIX = "unix:"
TOKEN_HEADER = "authorization"
MAX_FILE = 1 << 20
SOCKET_MODE = 0o600
# A mounted kubernetes.io/tls Secret as cert-manager writes it.
TLS_CERT, TLS_KEY, TLS_CA = "tls.crt", "tls.key", "ca.crt"


class AuthError(ValueError):
    """A listener or channel that must not be made, and why (naming the file or flag)."""


def is_unix(address: str) -> bool:
    return address.startswith(UNIX)


def unix_path(address: str) -> str:
    """The path of a `unix:PATH` address (`unix:///abs` and `unix:/abs` alike)."""
    path = address[len(UNIX) :]
    return "/" + path.lstrip("/") if path.startswith("//") else path


def read_secret(path: str, what: str) -> bytes:
    """A file's bytes (a token, a key, a certificate); AuthError naming it otherwise."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise AuthError(f"{what} {path}: {exc.strerror}") from None
    if not data.strip() or len(data) > MAX_FILE:
        raise AuthError(f"{what} {path}: empty or not a {what}")
    return data


def read_token(path: str) -> str:
    token = read_secret(path, "token file").strip()
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        raise AuthError(f"token file {path}: the token must be ASCII") from None
    if any(c.isspace() for c in text):
        raise AuthError(f"token file {path}: the token must be one word")
    return text


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


@dataclass(frozen=True)
class ServerAuth:
    """How a TCP listener authenticates its clients (files are read at start)."""

    token_file: str | None = None
    cert_file: str | None = None  # the server's certificate chain (PEM)
    key_file: str | None = None
    client_ca_file: str | None = None  # mTLS: clients must present a certificate of this CA

    @classmethod
    def from_tls_dir(cls, directory: str, token_file: str | None = None) -> ServerAuth:
        """mTLS from a cert-manager directory: the server's tls.crt and tls.key, clients
        verified against its ca.crt."""
        path = Path(directory)
        return cls(token_file, str(path / TLS_CERT), str(path / TLS_KEY), str(path / TLS_CA))

    def check(self, address: str) -> None:
        """AuthError when a TCP listener on `address` would not be safe."""
        if (self.cert_file is None) != (self.key_file is None):
            raise AuthError("TLS needs both --tls-cert and --tls-key")
        if self.client_ca_file is not None and self.cert_file is None:
            raise AuthError("mTLS (--client-ca) needs the server's --tls-cert and --tls-key")
        if self.client_ca_file is None and self.token_file is None:
            raise AuthError(
                f"a TCP listener ({address}) needs mTLS (--tls-cert, --tls-key, --client-ca) "
                "or a bearer token (--token-file): refusing to serve it open"
            )
        if self.cert_file is None and not _loopback(_host(address)):
            raise AuthError(
                f"a bearer token over plaintext TCP only on loopback, not {address}: add "
                "--tls-cert and --tls-key"
            )

    def credentials(self) -> grpc.ServerCredentials:
        if self.cert_file is None:
            # Token only: the local credentials refuse any peer not on loopback.
            return grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        chain = read_secret(self.cert_file, "certificate file")
        key = read_secret(self.key_file, "key file")
        ca = read_secret(self.client_ca_file, "CA file") if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
        )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        if self.token_file is None:
            return []
        return [BearerTokenInterceptor(read_token(self.token_file))]


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Every call must carry `authorization: Bearer <token>`; otherwise it ends with
    UNAUTHENTICATED before the servicer sees it."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        values = [v for k, v in metadata or () if k.lower() == TOKEN_HEADER]
        if len(values) != 1:
            return False
        value = values[0] if isinstance(values[0], bytes) else values[0].encode()
        return hmac.compare_digest(value, self._expected)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or self.authorized(handler_call_details.invocation_metadata):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only refuses."""

    async def refuse(_request, context) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

    return _handler_like(handler, refuse)


def _handler_like(handler: grpc.RpcMethodHandler, behavior) -> grpc.RpcMethodHandler:
    """A handler of the same shape and (de)serializers as `handler` running `behavior`."""
    kind = (handler.request_streaming, handler.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


@dataclass(frozen=True)
class ClientIdentity:
    """Who the peer proved to be: `unix` (the socket's permissions), `mtls` (`names`: the
    certificate's subject alternative names, else its common name), or `token`.

    `gateway`: the gateway ("namespace/name") an mTLS peer's certificate binds it to;
    `problem`: why a certificate that names a clrk identity cannot be trusted."""

    kind: str
    names: tuple[str, ...] = ()
    gateway: str | None = None
    problem: str | None = None


def client_identity(context) -> ClientIdentity:
    """The identity of the caller of a servicer method (its ServicerContext)."""
    peer = context.peer() or ""
    if peer.startswith("unix:"):
        return ClientIdentity("unix")
    auth = context.auth_context() or {}
    if auth.get("transport_security_type") == [b"ssl"] and context.peer_identities():
        names = tuple(n.decode(errors="replace") for n in context.peer_identities())
        uris = [u.decode(errors="replace") for u in auth.get("peer_uri", ())]
        try:
            return ClientIdentity("mtls", names, gateway_of(uris))
        except IdentityError as exc:
            return ClientIdentity("mtls", names, problem=str(exc))
    return ClientIdentity("token")


async def scoped_gateway(context, wanted: str) -> str:
    """The gateway the caller of a servicer method may act for: `wanted`, unless its
    certificate binds it to a gateway; then that one, and asking for another ends the
    call with PERMISSION_DENIED (an empty `wanted` asks for none in particular)."""
    identity = client_identity(context)
    if identity.problem is not None:
        await _deny(context, identity.problem)
    if identity.gateway is None:
        return wanted
    if wanted and wanted != identity.gateway:
        await _deny(
            context, f"this client's certificate is for gateway {identity.gateway}, not {wanted}"
        )
    return identity.gateway


async def _refuse_gateway_parts(context) -> None:
    identity = client_identity(context)
    if identity.gateway is not None or identity.problem is not None:
        problem = f"a certificate of gateway {identity.gateway} is not an operator's"
        await _deny(context, identity.problem or problem)


async def _deny(context, message: str) -> None:
    """End the call with PERMISSION_DENIED, logged: a part misconfigured, or worse."""
    log.warning("grpc.permission_denied", extra=fields(peer=context.peer(), error=message))
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)


class _OperatorsOnly(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details):
        handler = self._inner.service(handler_call_details)
        return None if handler is None else _guarded(handler)


def operators_only(handler: grpc.GenericRpcHandler) -> grpc.GenericRpcHandler:
    """`handler`'s service, refusing (PERMISSION_DENIED) every caller whose certificate
    names a clrk identity: a dialer's or an Envoy's key must not also apply policy."""
    return _OperatorsOnly(handler)


def _guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.response_streaming:
        behavior = handler.unary_stream or handler.stream_stream

        async def call(request, context):
            await _refuse_gateway_parts(context)
            async for response in behavior(request, context):
                yield response

    else:
        behavior = handler.unary_unary or handler.stream_unary

        async def call(request, context):
            await _refuse_gateway_parts(context)
            return await behavior(request, context)

    return _handler_like(handler, call)


def private_socket_directory(path: str) -> None:
    """Create the directory of a Unix socket 0700, or accept it only when it is a real
    directory of this user that no one else may enter."""
    directory = Path(path).parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise AuthError(
            f"{directory} must be a directory of this user that no one else may enter "
            f"(mode {info.st_mode & 0o777:o}): it holds the socket {Path(path).name}"
        )


def bind(server: grpc.aio.Server, address: str, auth: ServerAuth | None) -> int:
    """Listen on `address` (Unix or TCP with `auth`); the bound TCP port, 0 for Unix.
    AuthError or OSError when it cannot be done safely."""
    if is_unix(address):
        path = unix_path(address)
        private_socket_directory(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left by a killed run
        if server.add_insecure_port(f"{UNIX}{path}") != 1:  # gRPC reports 1 for Unix
            raise OSError(f"cannot listen on {address}")
        os.chmod(path, SOCKET_MODE)
        return 0
    if auth is None:
        auth = ServerAuth()
    auth.check(address)
    port = server.add_secure_port(address, auth.credentials())
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def server(address: str, auth: ServerAuth | None, **options) -> grpc.aio.Server:
    """A gRPC server with the interceptors the listener at `address` needs."""
    interceptors = [] if is_unix(address) or auth is None else auth.interceptors()
    return grpc.aio.server(interceptors=interceptors, **options)


@dataclass(frozen=True)
class ClientAuth:
    """What a client presents to a TCP endpoint (a Unix socket needs nothing)."""

    token_file: str | None = None
    ca_file: str | None = None  # the server's CA (TLS)
    cert_file: str | None = None  # the client's certificate chain (mTLS)
    key_file: str | None = None
    server_name: str | None = None  # the name the server certificate must carry

    @classmethod
    def from_tls_dir(cls, directory: str, server_name: str | None = None) -> ClientAuth:
        """mTLS from a cert-manager directory: this client's tls.crt and tls.key, the
        server verified against its ca.crt."""
        path = Path(directory)
        return cls(None, str(path / TLS_CA), str(path / TLS_CERT), str(path / TLS_KEY), server_name)

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def check(self, address: str) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise AuthError("a client certificate needs both --cert-file and --key-file")
        if self.token_file is not None and not self.tls and not _loopback(_host(address)):
            raise AuthError(
                f"a bearer token is sent over plaintext TCP only to loopback, not {address}: "
                "give the server's CA with --ca-file"
            )

    def credentials(self, address: str) -> grpc.ChannelCredentials | None:
        """None: a plain channel (no TLS, no token)."""
        self.check(address)
        if self.tls:
            channel = grpc.ssl_channel_credentials(
                root_certificates=read_secret(self.ca_file, "CA file") if self.ca_file else None,
                private_key=read_secret(self.key_file, "key file") if self.key_file else None,
                certificate_chain=(
                    read_secret(self.cert_file, "certificate file") if self.cert_file else None
                ),
            )
        elif self.token_file is not None:
            channel = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        else:
            return None
        if self.token_file is None:
            return channel
        token = grpc.access_token_call_credentials(read_token(self.token_file))
        return grpc.composite_channel_credentials(channel, token)

    def options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def channel_arguments(address: str, auth: ClientAuth | None):
    """(target, credentials or None, options) of a channel to `address`."""
    if is_unix(address):
        return f"{UNIX}{unix_path(address)}", None, []
    auth = auth or ClientAuth()
    return address, auth.credentials(address), auth.options()


def aio_channel(address: str, auth: ClientAuth | None = None) -> grpc.aio.Channel:
    target, credentials, options = channel_arguments(address, auth)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


def channel(address: str, auth: ClientAuth | None = None) -> grpc.Channel:
    target, credentials, options = channel_arguments(address, auth)
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)
