"""The gateway's certificate authority: it signs the leaves Envoy serves on TLS Terminate.

Agents trust this CA (``clrk ca print``), so its key must outlive restarts: it is
generated once and kept in ``<state dir>/ca/`` (directory 0700, key 0600), or taken
from files the operator configured.  The pure parts (generate, parse, check) take plain
bytes and a clock; only ``load_or_create`` touches the disk.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CA_DIR = "ca"
CERT_FILE = "ca.crt"
KEY_FILE = "ca.key"
CA_LIFETIME = datetime.timedelta(days=3650)
# Back-date certificates a little so a client whose clock is slightly behind accepts them.
CLOCK_SKEW = datetime.timedelta(minutes=5)
CA_COMMON_NAME = "clrk egress gateway CA"

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CAError(Exception):
    """The CA cannot be loaded or created; the control plane must not start without it."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class GatewayCA:
    cert: x509.Certificate
    key: SigningKey
    cert_path: Path | None = None  # where the PEM lives, for `clrk ca path` and logs

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem(self.key)

    @property
    def not_after(self) -> datetime.datetime:
        return self.cert.not_valid_after_utc

    @classmethod
    def generate(cls, now: datetime.datetime | None = None) -> GatewayCA:
        """A fresh self-signed EC P-256 CA valid for about ten years."""
        now = now or _utcnow()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            # path_length=0: this CA signs leaves only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(
        cls,
        cert_pem: bytes,
        key_pem: bytes,
        *,
        now: datetime.datetime | None = None,
        cert_path: Path | None = None,
    ) -> GatewayCA:
        """Parse and check a CA pair; every problem is a CAError naming it."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CAError(f"CA certificate is not a PEM certificate: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CAError(f"CA key is not an unencrypted PEM private key: {exc}") from None
        check(cert, key, now or _utcnow())
        return cls(cert, key, cert_path)  # type: ignore[arg-type]  # check() narrowed it

    @classmethod
    def load_or_create(
        cls,
        state_dir: Path,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        now: datetime.datetime | None = None,
    ) -> GatewayCA:
        """The configured CA files if given, else ``state_dir/ca/``, created on first use."""
        if (cert_file is None) != (key_file is None):
            raise CAError("configure both the CA certificate file and its key file, or neither")
        if cert_file is not None and key_file is not None:
            return cls.from_pem(
                _read(cert_file), _read(key_file), now=now, cert_path=Path(cert_file)
            )
        if not (Path(state_dir) / CA_DIR).exists():
            _create(Path(state_dir), cls.generate(now))
        return cls.load(state_dir, now=now)

    @classmethod
    def load(cls, state_dir: Path, *, now: datetime.datetime | None = None) -> GatewayCA:
        """The CA persisted in ``state_dir/ca/``; a CAError if there is none."""
        directory = Path(state_dir) / CA_DIR
        if not directory.exists():
            raise CAError(f"no CA in {directory} yet (the control plane creates it on start)")
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        for path in (cert_path, key_path):
            if not path.is_file():
                # Half a CA is an operator problem: overwriting it would silently
                # invalidate the trust agents already have.
                raise CAError(f"{directory} exists but has no {path.name}; fix or remove it")
        return cls.from_pem(_read(cert_path), _read(key_path), now=now, cert_path=cert_path)


def check(cert: x509.Certificate, key: object, now: datetime.datetime) -> None:
    """Fail closed on a pair that cannot sign leaves agents would accept."""
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CAError(f"CA key type {type(key).__name__} is not supported (use EC or RSA)")
    if cert.public_key() != key.public_key():
        raise CAError("CA key does not match the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError("CA certificate is not a CA (basicConstraints CA:TRUE is missing)")
    if now >= cert.not_valid_after_utc:
        raise CAError(f"CA certificate expired at {cert.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc - CLOCK_SKEW:
        raise CAError(f"CA certificate is not valid before {cert.not_valid_before_utc}")


def default_cert_path(state_dir: Path) -> Path:
    return Path(state_dir) / CA_DIR / CERT_FILE


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read {path}: {exc.strerror or exc}") from None


def _create(state_dir: Path, ca: GatewayCA) -> None:
    """Write the pair into a private temp dir, then rename it into place in one step.

    A crash leaves either no ``ca/`` or a complete one; two processes racing both
    succeed and the loser loads the winner's CA.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ca-", dir=state_dir))  # mode 0700
    except OSError as exc:
        raise CAError(f"cannot create the CA under {state_dir}: {exc.strerror or exc}") from None
    try:
        _write(tmp / KEY_FILE, ca.key_pem, 0o600)
        _write(tmp / CERT_FILE, ca.cert_pem, 0o644)
        # The directory stays 0700: agents get a copy of the certificate (`clrk run`,
        # `clrk ca print`), never a path into the gateway's state.
        try:
            tmp.rename(state_dir / CA_DIR)
        except OSError:
            if not (state_dir / CA_DIR).exists():
                raise
    except OSError as exc:
        raise CAError(f"cannot write the CA under {state_dir}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            for child in tmp.iterdir():
                child.unlink()
            tmp.rmdir()


def _write(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL + mode at creation: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
