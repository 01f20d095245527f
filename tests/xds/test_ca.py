"""The gateway CA: generation, persistence in the state dir, configured files, failing closed."""

from __future__ import annotations

import datetime
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from clrk_xds import ca as ca_mod
from clrk_xds.ca import CA_LIFETIME, CAError, GatewayCA, default_cert_path

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def _self_signed(key, *, is_ca=True, days=365, now=NOW):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if is_ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), True)
    return builder.sign(key, hashes.SHA256())


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_generated_ca_is_an_ec_p256_ca_for_ten_years():
    authority = GatewayCA.generate(NOW)
    cert = authority.cert
    assert isinstance(authority.key, ec.EllipticCurvePrivateKey)
    assert authority.key.curve.name == "secp256r1"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.not_valid_after_utc == NOW + CA_LIFETIME
    assert cert.not_valid_before_utc < NOW
    assert cert.issuer == cert.subject
    assert authority.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in authority.key_pem


def test_first_load_creates_and_second_load_returns_the_same_ca(tmp_path):
    first = GatewayCA.load_or_create(tmp_path, now=NOW)
    second = GatewayCA.load_or_create(tmp_path, now=NOW)
    assert first.cert_pem == second.cert_pem
    assert first.key_pem == second.key_pem
    assert first.cert_path == second.cert_path == default_cert_path(tmp_path)
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == first.cert_pem
    # No temp directory is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]


def test_the_ca_directory_and_key_are_private_the_certificate_readable(tmp_path):
    GatewayCA.load_or_create(tmp_path / "state", now=NOW)
    directory = tmp_path / "state" / "ca"
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "ca.crt").stat().st_mode) & 0o044 == 0o044
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_configured_files_are_used_as_given(tmp_path):
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _self_signed(key)
    cert_file, key_file = tmp_path / "op.crt", tmp_path / "op.key"
    cert_file.write_bytes(_cert_pem(cert))
    key_file.write_bytes(_key_pem(key))
    state = tmp_path / "state"
    loaded = GatewayCA.load_or_create(state, cert_file=cert_file, key_file=key_file, now=NOW)
    assert loaded.cert == cert
    assert loaded.cert_path == cert_file
    assert not state.exists()  # nothing generated, nothing copied


def test_configured_rsa_ca_is_accepted(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    loaded = GatewayCA.from_pem(_cert_pem(_self_signed(key)), _key_pem(key), now=NOW)
    assert isinstance(loaded.key, rsa.RSAPrivateKey)


def test_both_configured_files_or_neither(tmp_path):
    with pytest.raises(CAError, match="both"):
        GatewayCA.load_or_create(tmp_path, cert_file=tmp_path / "x.crt", now=NOW)
    with pytest.raises(CAError, match="both"):
        GatewayCA.load_or_create(tmp_path, key_file=tmp_path / "x.key", now=NOW)


def test_missing_configured_file_is_an_error(tmp_path):
    with pytest.raises(CAError, match="cannot read"):
        GatewayCA.load_or_create(
            tmp_path, cert_file=tmp_path / "no.crt", key_file=tmp_path / "no.key", now=NOW
        )


@pytest.mark.parametrize("missing", ["ca.crt", "ca.key"])
def test_half_a_ca_is_an_error_and_is_not_overwritten(tmp_path, missing):
    original = GatewayCA.load_or_create(tmp_path, now=NOW)
    (tmp_path / "ca" / missing).unlink()
    with pytest.raises(CAError, match=f"has no {missing}"):
        GatewayCA.load_or_create(tmp_path, now=NOW)
    if missing == "ca.key":
        assert (tmp_path / "ca" / "ca.crt").read_bytes() == original.cert_pem
    else:
        assert (tmp_path / "ca" / "ca.key").read_bytes() == original.key_pem


def test_load_without_a_ca_is_an_error(tmp_path):
    with pytest.raises(CAError, match="no CA"):
        GatewayCA.load(tmp_path)
    assert not (tmp_path / "ca").exists()


def test_losing_a_creation_race_loads_the_winner(tmp_path):
    winner = GatewayCA.generate(NOW)
    ca_mod._create(tmp_path, winner)
    ca_mod._create(tmp_path, GatewayCA.generate(NOW))  # the rename fails: ca/ exists
    assert GatewayCA.load(tmp_path, now=NOW).cert == winner.cert
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]


def _pair(**kw):
    key = ec.generate_private_key(ec.SECP256R1())
    return _cert_pem(_self_signed(key, **kw)), _key_pem(key)


@pytest.mark.parametrize(
    ("cert_pem", "key_pem", "message"),
    [
        (b"not a cert", _pair()[1], "not a PEM certificate"),
        (_pair()[0], b"not a key", "not an unencrypted PEM private key"),
        (_pair()[0], _pair()[1], "does not match"),
        (*_pair(is_ca=False), "not a CA"),
        (*_pair(is_ca=None), "not a CA"),
        (*_pair(days=-0.5), "expired"),
    ],
    ids=["garbage-cert", "garbage-key", "mismatch", "ca-false", "no-constraints", "expired"],
)
def test_bad_pairs_fail_closed(cert_pem, key_pem, message):
    with pytest.raises(CAError, match=message):
        GatewayCA.from_pem(cert_pem, key_pem, now=NOW)


def test_not_yet_valid_ca_is_rejected():
    cert_pem, key_pem = _pair(now=NOW + datetime.timedelta(days=30))
    with pytest.raises(CAError, match="not valid before"):
        GatewayCA.from_pem(cert_pem, key_pem, now=NOW)


def test_unsupported_key_type_is_rejected():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, None)
    )
    with pytest.raises(CAError, match="not supported"):
        GatewayCA.from_pem(_cert_pem(cert), _key_pem(key), now=NOW)
