"""Per-route leaf certificates: that they verify (real openssl, cryptography's path
validation, a real TLS handshake with Python's ssl), and rotation.  Which routes get one
is the translator's (tests/xds/test_translate_l7.py)."""

from __future__ import annotations

import datetime
import socket
import ssl
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clrk_xds.ca import GatewayCA
from clrk_xds.certs import (
    LEAF_LIFETIME,
    LeafCertificates,
    mint_leaf,
    next_renewal,
    secret_name,
    to_envoy_secret,
)
from clrk_xds.envoy_process import EnvoyProcess, validate_config

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)

LLM_SANS = ("*.azure.example.com", "api.example.com", "b.example.com")


@pytest.fixture(scope="module")
def authority():
    return GatewayCA.generate(NOW - 30 * DAY)


@pytest.fixture(scope="module")
def live_authority():
    """A CA valid at the wall-clock time, for the parts that cannot be given a clock
    (Python's ssl, Envoy)."""
    return GatewayCA.generate()


@pytest.fixture(scope="module")
def llm_leaf(authority):
    return mint_leaf(authority, secret_name(("default", "llm")), LLM_SANS, NOW)


# --- verification --------------------------------------------------------------------


def _leaf_cert(leaf) -> x509.Certificate:
    return x509.load_pem_x509_certificate(leaf.cert_pem)


def test_leaf_shape(llm_leaf, authority):
    cert = _leaf_cert(llm_leaf)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert tuple(sans.get_values_for_type(x509.DNSName)) == LLM_SANS
    assert cert.issuer == authority.cert.subject
    assert cert.public_key().curve.name == "secp256r1"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert llm_leaf.not_after == NOW + LEAF_LIFETIME
    assert llm_leaf.not_before < NOW


def _verifier(authority, name, at=NOW):
    return (
        PolicyBuilder()
        .store(Store([authority.cert]))
        .time(at)
        .build_server_verifier(x509.DNSName(name))
    )


@pytest.mark.parametrize("name", ["api.example.com", "b.example.com", "x.azure.example.com"])
def test_path_validation_accepts_each_san(llm_leaf, authority, name):
    chain = _verifier(authority, name).verify(_leaf_cert(llm_leaf), [])
    assert chain[-1] == authority.cert


@pytest.mark.parametrize(
    "name", ["evil.example.org", "azure.example.com", "a.b.azure.example.com", "udp.example.com"]
)
def test_path_validation_rejects_other_names(llm_leaf, authority, name):
    with pytest.raises(VerificationError):
        _verifier(authority, name).verify(_leaf_cert(llm_leaf), [])


def test_path_validation_rejects_an_expired_leaf(llm_leaf, authority):
    with pytest.raises(VerificationError):
        _verifier(authority, "api.example.com", NOW + LEAF_LIFETIME + DAY).verify(
            _leaf_cert(llm_leaf), []
        )


def _openssl_verify(tmp_path, authority, leaf, name):
    (tmp_path / "ca.pem").write_bytes(authority.cert_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem)
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), "-purpose", "sslserver",
         "-attime", str(int(NOW.timestamp())), "-verify_hostname", name,
         str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["api.example.com", "x.azure.example.com"])
def test_openssl_verifies_the_leaf(tmp_path, llm_leaf, authority, name):
    proc = _openssl_verify(tmp_path, authority, llm_leaf, name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": OK" in proc.stdout


@pytest.mark.parametrize("name", ["evil.example.org", "a.b.azure.example.com"])
def test_openssl_rejects_other_names(tmp_path, llm_leaf, authority, name):
    proc = _openssl_verify(tmp_path, authority, llm_leaf, name)
    assert proc.returncode != 0
    assert "hostname mismatch" in proc.stdout + proc.stderr


def _handshake(tmp_path, authority, leaf, sni):
    """A real TLS 1.3 handshake between two in-memory ssl objects: the server serves
    the leaf, the client trusts only the CA and checks the hostname.  Returns the SNI
    the server saw; raises ssl.SSLCertVerificationError on a name mismatch."""
    (tmp_path / "leaf.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "leaf.key").write_bytes(leaf.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "leaf.crt", tmp_path / "leaf.key")
    seen = []
    server_ctx.sni_callback = lambda _obj, name, _ctx: seen.append(name)
    client_ctx = ssl.create_default_context(cadata=authority.cert_pem.decode())
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for who, obj in (("client", client), ("server", server)):
            if not done[who]:
                try:
                    obj.do_handshake()
                    done[who] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read() == b"ping"
    return seen


@pytest.mark.parametrize("sni", ["api.example.com", "x.azure.example.com"])
def test_tls_handshake_with_an_allowed_name(tmp_path, live_authority, sni):
    leaf = mint_leaf(
        live_authority, "leaf/default/llm", LLM_SANS, datetime.datetime.now(datetime.UTC)
    )
    assert _handshake(tmp_path, live_authority, leaf, sni) == [sni]


def test_tls_handshake_with_another_name_fails_hostname_verification(tmp_path, live_authority):
    leaf = mint_leaf(
        live_authority, "leaf/default/llm", LLM_SANS, datetime.datetime.now(datetime.UTC)
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(tmp_path, live_authority, leaf, "evil.example.org")


def test_tls_handshake_with_another_ca_fails(tmp_path, live_authority):
    leaf = mint_leaf(
        GatewayCA.generate(), "leaf/default/llm", LLM_SANS, datetime.datetime.now(datetime.UTC)
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(tmp_path, live_authority, leaf, "api.example.com")


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_name = st.lists(_label, min_size=2, max_size=4).map(".".join)
_pattern = st.tuples(st.booleans(), _name).map(lambda t: ("*." if t[0] else "") + t[1])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patterns=st.lists(_pattern, min_size=1, max_size=5, unique=True), first=_label)
def test_every_allowed_name_verifies(authority, patterns, first):
    leaf = mint_leaf(authority, "leaf/default/r", patterns, NOW)
    cert = _leaf_cert(leaf)
    assert leaf.hostnames == tuple(sorted(patterns))
    for pattern in patterns:
        name = f"{first}.{pattern[2:]}" if pattern.startswith("*.") else pattern
        _verifier(authority, name).verify(cert, [])


# --- reuse and rotation ----------------------------------------------------------------


def test_a_leaf_is_reused_until_its_renewal_window(authority):
    certs = LeafCertificates(authority)
    route = ("default", "llm")
    first = certs.mint(route, LLM_SANS, NOW)
    assert certs.mint(route, LLM_SANS, NOW + DAY) is first
    # 7 days, renewed with a third left: still the same leaf at 4.5 days ...
    assert certs.mint(route, LLM_SANS, NOW + 4.5 * DAY) is first
    # ... and a new one, valid for 7 more days, at 5 days.
    later = NOW + 5 * DAY
    renewed = certs.mint(route, LLM_SANS, later)
    assert renewed.cert_pem != first.cert_pem and renewed.key_pem != first.key_pem
    assert renewed.not_after == later + LEAF_LIFETIME
    assert next_renewal([first]) < later < next_renewal([renewed])


def test_a_leaf_is_reissued_when_its_hostnames_change(authority):
    certs = LeafCertificates(authority)
    first = certs.mint(("default", "all"), ["all.example.com"], NOW)
    second = certs.mint(("default", "all"), ["all2.example.com"], NOW + DAY)
    assert second.hostnames == ("all2.example.com",) and second != first


def test_a_leaf_is_reissued_under_another_ca(authority):
    first = LeafCertificates(authority).mint(("default", "llm"), LLM_SANS, NOW)
    other = GatewayCA.generate(NOW - DAY)
    second = LeafCertificates(other).mint(("default", "llm"), LLM_SANS, NOW)
    assert second != first
    _verifier(other, second.hostnames[-1]).verify(_leaf_cert(second), [])


def test_mint_is_cached_per_route_and_hostnames(authority):
    certs = LeafCertificates(authority)
    leaf = certs.mint(("ns", "r"), ["b.example.com", "a.example.com"], NOW)
    assert leaf.name == "leaf/ns/r"
    assert certs.mint(("ns", "r"), ["a.example.com", "b.example.com", "a.example.com"], NOW) is leaf
    assert certs.mint(("ns", "r"), ["a.example.com"], NOW) is not leaf
    assert certs.next_renewal() == NOW + DAY * 7 - (DAY * 7 + (NOW - leaf.not_before)) / 3


def test_naive_now_is_utc(authority):
    certs = LeafCertificates(authority)
    leaf = certs.mint(("ns", "r"), ["a.example.com"], NOW)
    assert certs.mint(("ns", "r"), ["a.example.com"], NOW.replace(tzinfo=None)) is leaf


def test_a_leaf_never_outlives_its_ca():
    short = GatewayCA.generate(NOW - 3650 * DAY + 2 * DAY)
    leaf = mint_leaf(short, "leaf/ns/r", ["a.example.com"], NOW)
    assert leaf.not_after == short.not_after


def test_a_leaf_needs_a_name(authority):
    with pytest.raises(ValueError, match="at least one hostname"):
        mint_leaf(authority, "leaf/ns/r", [], NOW)


# --- Envoy ---------------------------------------------------------------------------


def test_envoy_secret_carries_the_leaf_inline(llm_leaf):
    secret = to_envoy_secret(llm_leaf)
    assert secret.name == "leaf/default/llm"
    assert secret.tls_certificate.certificate_chain.inline_bytes == llm_leaf.cert_pem
    assert secret.tls_certificate.private_key.inline_bytes == llm_leaf.key_pem
    assert type(secret).parse(bytes(secret)) == secret


def _bootstrap(secret_dict: dict) -> dict:
    """A static Envoy with one TLS listener whose certificate is the secret, by name,
    answering every HTTP request itself with 200 "terminated"."""
    tls = {
        "@type": "type.googleapis.com/"
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [{"name": secret_dict["name"]}]
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "term",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {
                                "status": 200,
                                "body": {"inline_string": "terminated"},
                            },
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "node": {"id": "certs-test", "cluster": "clrk"},
        "static_resources": {
            "secrets": [secret_dict],
            "listeners": [
                {
                    "name": "term",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "transport_socket": {"name": "tls", "typed_config": tls},
                            "filters": [{"name": "hcm", "typed_config": hcm}],
                        }
                    ],
                }
            ],
        },
    }


def test_real_envoy_accepts_the_secret(live_authority):
    leaf = mint_leaf(
        live_authority, "leaf/default/llm", LLM_SANS, datetime.datetime.now(datetime.UTC)
    )
    ok, output = validate_config(_bootstrap(to_envoy_secret(leaf).to_dict()))
    assert ok, output
    broken = to_envoy_secret(leaf).to_dict()
    broken["tlsCertificate"]["privateKey"]["inlineBytes"] = "bm90IGEga2V5"  # "not a key"
    ok, output = validate_config(_bootstrap(broken))
    assert not ok
    assert "Failed to load private key" in output


def _curl(port: int, ca_file, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(ca_file),
         "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/"],
        capture_output=True, text=True, check=False, timeout=20,
    )  # fmt: skip


def test_real_envoy_serves_the_leaf(tmp_path, live_authority):
    """Envoy terminates TLS with the minted leaf; curl trusts only the CA."""
    leaf = mint_leaf(
        live_authority, "leaf/default/llm", LLM_SANS, datetime.datetime.now(datetime.UTC)
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _bootstrap(to_envoy_secret(leaf).to_dict())
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(live_authority.cert_pem)
    with EnvoyProcess(config, log_level="warning"):
        ok = _curl(port, ca_file, "x.azure.example.com")
        bad = _curl(port, ca_file, "evil.example.org")
    assert (ok.returncode, ok.stdout) == (0, "terminated"), ok.stderr
    assert bad.returncode == 60, bad.stderr  # the peer certificate is not OK for this name
    assert "evil.example.org" in bad.stderr
