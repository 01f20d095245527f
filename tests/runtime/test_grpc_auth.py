"""clrk_runtime.grpc_auth over real gRPC: a Unix socket only its owner may reach, and TCP
only with a bearer token or mutual TLS (never open), for unary and streaming methods;
the servicer sees who the client proved to be."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clrk_runtime import grpc_auth
from clrk_runtime.grpc_auth import AuthError, ClientAuth, ServerAuth, client_identity
from tests.tls_dirs import TestCA

SERVICE = "clrk.test.Probe"
NOBODY = 65534


def _handlers() -> grpc.GenericRpcHandler:
    async def who(_request: bytes, context) -> bytes:
        identity = client_identity(context)
        return f"{identity.kind}:{','.join(identity.names)}".encode()

    async def echo(requests, _context):
        async for request in requests:
            yield request

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Who": grpc.unary_unary_rpc_method_handler(who),
            "Echo": grpc.stream_stream_rpc_method_handler(echo),
        },
    )


@contextlib.asynccontextmanager
async def serving(address: str, auth: ServerAuth | None):
    server = grpc_auth.server(address, auth)
    server.add_generic_rpc_handlers((_handlers(),))
    port = grpc_auth.bind(server, address, auth)
    await server.start()
    try:
        yield address if grpc_auth.is_unix(address) else f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


async def ask(address: str, auth: ClientAuth | None = None) -> str:
    """Both shapes of call; the unary one's answer (who the server saw)."""
    async with grpc_auth.aio_channel(address, auth) as channel:
        answer = await channel.unary_unary(f"/{SERVICE}/Who")(b"", timeout=5)
        stream = channel.stream_stream(f"/{SERVICE}/Echo")(iter([b"a", b"b"]), timeout=5)
        assert [m async for m in stream] == [b"a", b"b"]
        return answer.decode()


def bind(address: str, auth: ServerAuth | None = None) -> None:
    """Bind a fresh server (within an event loop, as gRPC's asyncio server wants)."""

    async def go():
        server = grpc_auth.server(address, auth)
        try:
            grpc_auth.bind(server, address, auth)
        finally:
            await server.stop(grace=None)

    asyncio.run(go())


# --- Unix sockets ----------------------------------------------------------------------------


def test_a_unix_socket_is_its_owners_alone(tmp_path):
    address = f"unix:{tmp_path / 'run' / 'control.socket'}"

    async def go():
        async with serving(address, None) as target:
            path = tmp_path / "run" / "control.socket"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert await ask(target) == "unix:"

    asyncio.run(go())


@pytest.mark.parametrize("mode", [0o755, 0o710, 0o707])
def test_a_socket_directory_others_may_enter_is_refused(tmp_path, mode):
    (tmp_path / "run").mkdir(mode=mode)
    (tmp_path / "run").chmod(mode)
    with pytest.raises(AuthError, match="no one else may enter"):
        bind(f"unix:{tmp_path / 'run' / 'control.socket'}")


def test_a_socket_directory_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "real")
    with pytest.raises(AuthError):
        bind(f"unix:{tmp_path / 'run' / 'c.socket'}")


CONNECT_AS_NOBODY = """
import os, socket, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_another_local_user_cannot_connect_to_the_socket():
    top = Path(tempfile.mkdtemp(prefix="clrk-test-socket-"))  # /tmp: searchable by all
    path = top / "run" / "control.socket"

    def connect_as_nobody() -> str:
        out = subprocess.run(
            [sys.executable, "-c", CONNECT_AS_NOBODY, str(path)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return out.stdout.strip() or out.stderr

    async def go():
        async with serving(f"unix:{path}", None):
            top.chmod(0o711)
            assert await asyncio.to_thread(connect_as_nobody) == "PermissionError"
            path.parent.chmod(0o711)  # even with its directory opened up: the socket is 0600
            assert await asyncio.to_thread(connect_as_nobody) == "PermissionError"
            path.chmod(0o666)  # the control: this is what the modes above prevent
            assert await asyncio.to_thread(connect_as_nobody) == "connected"

    try:
        asyncio.run(go())
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- TCP: never open -------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1:0", "0.0.0.0:0", "[::1]:0"])
def test_a_tcp_listener_without_token_or_mtls_refuses_to_start(address):
    with pytest.raises(AuthError, match="refusing to serve it open"):
        bind(address)
    with pytest.raises(AuthError, match="refusing"):
        ServerAuth().check(address)


def test_a_plaintext_token_is_for_loopback_only(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with pytest.raises(AuthError, match="only on loopback"):
        ServerAuth(token_file=str(token)).check("0.0.0.0:18000")
    ServerAuth(token_file=str(token)).check("127.0.0.1:18000")
    ServerAuth(token_file=str(token)).check("[::1]:18000")
    with pytest.raises(AuthError, match="only to loopback"):
        ClientAuth(token_file=str(token)).credentials("192.0.2.1:18000")


@pytest.mark.parametrize("content", ["", "\n", "two words\n"])
def test_an_unusable_token_file_stops_the_start(tmp_path, content):
    token = tmp_path / "token"
    token.write_text(content)
    with pytest.raises(AuthError, match=str(token)):
        ServerAuth(token_file=str(token)).interceptors()
    with pytest.raises(AuthError, match="token file"):
        ServerAuth(token_file=str(tmp_path / "missing")).interceptors()


def test_a_bearer_token_is_required_on_every_call(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("s3cre\n")

    async def go():
        async with serving("127.0.0.1:0", ServerAuth(token_file=str(token))) as target:
            assert await ask(target, ClientAuth(token_file=str(token))) == "token:"
            for client in (None, ClientAuth(token_file=str(wrong))):
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await ask(target, client)
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # A streaming call without the token is refused as well.
            async with grpc.aio.insecure_channel(target) as channel:
                stream = channel.stream_stream(f"/{SERVICE}/Echo")(iter([b"a"]), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    [m async for m in stream]
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(go())


# --- mTLS ------------------------------------------------------------------------------------

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, key, cert) -> tuple[str, str]:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path.with_suffix(".pem")), str(path.with_suffix(".key"))


def _ca(path, cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(path, key, cert)
    return key, cert


def _leaf(path, ca, cn: str, san: x509.GeneralName, usage) -> tuple[str, str]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write(path, key, cert)


@pytest.fixture
def pki(tmp_path):
    ca = _ca(tmp_path / "ca", "clrk test CA")
    other = _ca(tmp_path / "other-ca", "someone else's CA")
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    server = _leaf(
        tmp_path / "server", ca, "control plane", loopback, ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = _leaf(tmp_path / "client", ca, "dialer 1", x509.DNSName("dialer-1.example"),
                   ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    stranger = _leaf(tmp_path / "stranger", other, "stranger", x509.DNSName("dialer-1.example"),
                     ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    return {"ca": str(tmp_path / "ca.pem"), "server": server, "client": client,
            "stranger": stranger}  # fmt: skip


def test_mutual_tls_admits_only_certificates_of_the_configured_ca(pki):
    auth = ServerAuth(cert_file=pki["server"][0], key_file=pki["server"][1],
                      client_ca_file=pki["ca"])  # fmt: skip

    def client(cert_and_key=None) -> ClientAuth:
        cert, key = cert_and_key or (None, None)
        return ClientAuth(ca_file=pki["ca"], cert_file=cert, key_file=key)

    async def go():
        async with serving("0.0.0.0:0", auth) as target:
            # The servicer sees the verified certificate's names.
            assert await ask(target, client(pki["client"])) == "mtls:dialer-1.example"
            for stranger in (None, pki["stranger"]):
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await ask(target, client(stranger))
                assert error.value.code() == grpc.StatusCode.UNAVAILABLE  # no handshake
            with pytest.raises(grpc.aio.AioRpcError):
                await ask(target)  # plaintext to a TLS port

    asyncio.run(go())


def test_a_token_can_be_required_on_top_of_tls(pki, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret")
    auth = ServerAuth(str(token), pki["server"][0], pki["server"][1])  # TLS, no client certs

    async def go():
        async with serving("0.0.0.0:0", auth) as target:
            assert await ask(target, ClientAuth(str(token), ca_file=pki["ca"])) == "token:"
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await ask(target, ClientAuth(ca_file=pki["ca"]))
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(go())


def test_half_a_tls_configuration_is_refused(pki):
    with pytest.raises(AuthError, match="both"):
        ServerAuth(cert_file=pki["server"][0], client_ca_file=pki["ca"]).check("0.0.0.0:1")
    with pytest.raises(AuthError, match="needs the server's"):
        ServerAuth(client_ca_file=pki["ca"]).check("0.0.0.0:1")
    with pytest.raises(AuthError, match="both"):
        ClientAuth(cert_file=pki["client"][0]).check("127.0.0.1:1")


def test_nothing_listens_where_a_refused_tcp_listener_would_have():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(AuthError):
        bind(f"127.0.0.1:{port}")
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


# --- gateway identities ---------------------------------------------------------------------


def _scoped_handlers() -> list[grpc.GenericRpcHandler]:
    async def watch(request: bytes, context):
        yield (await grpc_auth.scoped_gateway(context, request.decode())).encode()

    async def apply(_request: bytes, _context) -> bytes:
        return b"applied"

    async def tail(_request: bytes, _context):
        yield b"record"

    watching = grpc.method_handlers_generic_handler(
        SERVICE, {"Watch": grpc.unary_stream_rpc_method_handler(watch)}
    )
    admin = grpc.method_handlers_generic_handler(
        "clrk.test.Admin",
        {
            "Apply": grpc.unary_unary_rpc_method_handler(apply),
            "Tail": grpc.unary_stream_rpc_method_handler(tail),
        },
    )
    return [watching, grpc_auth.operators_only(admin)]


def test_a_gateway_certificate_binds_its_caller_to_that_gateway_and_out_of_the_admin_api(
    tmp_path,
):
    ca = TestCA(tmp_path)
    auth = ServerAuth.from_tls_dir(ca.server("server", ips=("127.0.0.1",)))
    gateway = ClientAuth.from_tls_dir(ca.gateway("gw", "team-a/agents"))
    operator = ClientAuth.from_tls_dir(ca.operator())
    malformed = ClientAuth.from_tls_dir(
        ca.uris("bad", ["spiffe://clrk.apoxy.dev/ns/team-a/egressgateway"])
    )

    async def call(target, client, method, request=b""):
        async with grpc_auth.aio_channel(target, client) as channel:
            if method == "Apply":
                return [await channel.unary_unary("/clrk.test.Admin/Apply")(request, timeout=5)]
            path = f"/{SERVICE}/Watch" if method == "Watch" else "/clrk.test.Admin/Tail"
            return [m async for m in channel.unary_stream(path)(request, timeout=5)]

    async def refused(*args) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(*args)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        return error.value.details()

    async def go():
        server = grpc_auth.server("127.0.0.1:0", auth)
        server.add_generic_rpc_handlers(tuple(_scoped_handlers()))
        target = f"127.0.0.1:{grpc_auth.bind(server, '127.0.0.1:0', auth)}"
        await server.start()
        try:
            assert await call(target, gateway, "Watch", b"team-a/agents") == [b"team-a/agents"]
            assert await call(target, gateway, "Watch", b"") == [b"team-a/agents"]
            assert "not team-a/other" in await refused(target, gateway, "Watch", b"team-a/other")
            assert await call(target, operator, "Watch", b"team-a/other") == [b"team-a/other"]
            for method in ("Apply", "Tail"):
                assert "not an operator's" in await refused(target, gateway, method)
                assert "clrk.apoxy.dev" in await refused(target, malformed, method)
            assert "expected" in await refused(target, malformed, "Watch", b"team-a/agents")
            assert await call(target, operator, "Apply") == [b"applied"]
            assert await call(target, operator, "Tail") == [b"record"]
        finally:
            await server.stop(grace=None)

    asyncio.run(go())


def test_a_tls_directory_is_read_as_cert_manager_lays_it_out(tmp_path):
    server = ServerAuth.from_tls_dir("/s", token_file="/t")
    assert (server.cert_file, server.key_file, server.client_ca_file, server.token_file) == (
        "/s/tls.crt", "/s/tls.key", "/s/ca.crt", "/t",
    )  # fmt: skip
    client = ClientAuth.from_tls_dir("/c", server_name="cp.example")
    assert (client.cert_file, client.key_file, client.ca_file) == (
        "/c/tls.crt", "/c/tls.key", "/c/ca.crt",
    )  # fmt: skip
    assert client.options() == [("grpc.ssl_target_name_override", "cp.example")]
