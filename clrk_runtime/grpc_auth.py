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
reach the servicer through `client_identity(context)` (what a Kubernetes provider
needs to tell remote dialers and Envoys apart).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

UNIX = "unix:"
TOKEN_HEADER = "authorization"
MAX_FILE = 1 << 20
SOCKET_MODE = 0o600


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

    kind = (handler.request_streaming, handler.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


@dataclass(frozen=True)
class ClientIdentity:
    """Who the peer proved to be: `unix` (the socket's permissions), `mtls` (`names`: the
    certificate's subject alternative names, else its common name), or `token`."""

    kind: str
    names: tuple[str, ...] = ()


def client_identity(context) -> ClientIdentity:
    """The identity of the caller of a servicer method (its ServicerContext)."""
    peer = context.peer() or ""
    if peer.startswith("unix:"):
        return ClientIdentity("unix")
    auth = context.auth_context() or {}
    if auth.get("transport_security_type") == [b"ssl"] and context.peer_identities():
        names = tuple(n.decode(errors="replace") for n in context.peer_identities())
        return ClientIdentity("mtls", names)
    return ClientIdentity("token")


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
