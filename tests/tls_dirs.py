"""Certificates laid out as mounted kubernetes.io/tls Secrets (tls.crt, tls.key, ca.crt,
as cert-manager writes them): a CA, the control plane's serving certificate, gateway
identities (a SPIFFE URI SAN each) and an operator's certificate without one."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clrk.gateway_identity import gateway_uri

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    __test__ = False  # not a test class

    def __init__(self, directory: Path, cn: str = "clrk test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(minutes=5))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, sans: list[x509.GeneralName], server: bool = False) -> str:
        """A directory DIR/name holding tls.crt, tls.key and ca.crt; its path."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(minutes=5))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        out = self.directory / name
        out.mkdir(parents=True, mode=0o755)
        (out / "tls.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (out / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (out / "ca.crt").write_bytes(self.pem)
        return str(out)

    def server(self, name: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> str:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return self.issue(name, sans, server=True)

    def gateway(self, name: str, gateway: str) -> str:
        return self.issue(name, [x509.UniformResourceIdentifier(gateway_uri(gateway))])

    def operator(self, name: str = "operator") -> str:
        return self.issue(name, [x509.DNSName("operator.example")])

    def uris(self, name: str, uris: list[str]) -> str:
        return self.issue(name, [x509.UniformResourceIdentifier(u) for u in uris])
