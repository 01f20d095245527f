"""Per-route leaf certificates for TLS Terminate listeners (SPEC 7).

Each route attached to a Terminate listener gets one leaf signed by the gateway CA,
with the route's hostnames (exact and ``*.`` wildcards) as SANs.  A wildcard SAN
covers one label, exactly like a route's wildcard (docs/policy.md), so the leaf
verifies for every name the route allows and no other.

Leaves are reused while they have more than a third of their lifetime left, so
Envoy keeps the same secret across unrelated config changes and gets a new one well
before expiry.  Which leaves exist the translator decides from the compiled policy
(`clrk_xds.translate.terminate_leaves`); minting only adds a fresh key and a signature.

Secret names: ``leaf/<route namespace>/<route name>``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from envoy_data_plane.envoy.config.core.v3 import DataSource
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret, TlsCertificate

from clrk.api.resolve import Key
from clrk_xds.ca import CLOCK_SKEW, GatewayCA

LEAF_LIFETIME = datetime.timedelta(days=7)
# Renew when less than this share of the lifetime is left: days of margin for a
# control plane that was down, and the old leaf is still valid while Envoy switches.
RENEW_FRACTION = 1 / 3
SECRET_PREFIX = "leaf/"


@dataclass(frozen=True)
class Leaf:
    name: str  # the SDS secret name
    hostnames: tuple[str, ...]  # sorted, unique; the SANs
    cert_pem: bytes
    key_pem: bytes
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer: bytes  # SHA-256 of the signing CA certificate

    @property
    def renew_at(self) -> datetime.datetime:
        return self.not_after - (self.not_after - self.not_before) * RENEW_FRACTION

    def reusable(
        self, hostnames: tuple[str, ...], ca_fingerprint: bytes, now: datetime.datetime
    ) -> bool:
        return (
            self.hostnames == hostnames
            and self.issuer == ca_fingerprint
            and self.not_before <= now < self.renew_at
        )


def _utc(now: datetime.datetime) -> datetime.datetime:
    """Naive times are taken as UTC (cryptography's convention) so comparisons work."""
    return now if now.tzinfo else now.replace(tzinfo=datetime.UTC)


def secret_name(route: Key) -> str:
    namespace, name = route
    return f"{SECRET_PREFIX}{namespace}/{name}"


def ca_fingerprint(ca: GatewayCA) -> bytes:
    return ca.cert.fingerprint(hashes.SHA256())


def mint_leaf(
    ca: GatewayCA,
    name: str,
    hostnames: Iterable[str],
    now: datetime.datetime,
    lifetime: datetime.timedelta = LEAF_LIFETIME,
) -> Leaf:
    """A fresh EC P-256 server certificate for `hostnames`, signed by `ca`."""
    now = _utc(now)
    sans = tuple(sorted(set(hostnames)))
    if not sans:
        raise ValueError(f"leaf {name!r} needs at least one hostname")
    key = ec.generate_private_key(ec.SECP256R1())
    not_before = now - CLOCK_SKEW
    # Never outlive the CA: a client would reject the chain at the CA's expiry anyway.
    not_after = min(now + lifetime, ca.not_after)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        # CN is informational (clients match SANs only) and limited to 64 characters.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Leaf(
        name=name,
        hostnames=sans,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=ca_fingerprint(ca),
    )


def next_renewal(leaves: Iterable[Leaf]) -> datetime.datetime | None:
    """When the control plane should plan again so no leaf gets near expiry."""
    return min((leaf.renew_at for leaf in leaves), default=None)


class LeafCertificates:
    """The control plane's leaf cache over one CA (not thread-safe; one owner)."""

    def __init__(self, ca: GatewayCA, lifetime: datetime.timedelta = LEAF_LIFETIME) -> None:
        self.ca = ca
        self.lifetime = lifetime
        self._fingerprint = ca_fingerprint(ca)
        self._leaves: dict[str, Leaf] = {}

    @property
    def leaves(self) -> dict[str, Leaf]:
        return dict(self._leaves)

    def mint(self, route_ref: Key, hostnames: Iterable[str], now: datetime.datetime) -> Leaf:
        """The route's leaf for these hostnames: cached unless it is due for renewal."""
        now = _utc(now)
        name = secret_name(route_ref)
        sans = tuple(sorted(set(hostnames)))
        old = self._leaves.get(name)
        if old is not None and old.reusable(sans, self._fingerprint, now):
            return old
        leaf = mint_leaf(self.ca, name, sans, now, self.lifetime)
        self._leaves[name] = leaf
        return leaf

    def next_renewal(self) -> datetime.datetime | None:
        return next_renewal(self._leaves.values())


def to_envoy_secret(leaf: Leaf) -> Secret:
    """The SDS/ADS form: a tls_certificate with the leaf and its key inline."""
    return Secret(
        name=leaf.name,
        tls_certificate=TlsCertificate(
            certificate_chain=DataSource(inline_bytes=leaf.cert_pem),
            private_key=DataSource(inline_bytes=leaf.key_pem),
        ),
    )
