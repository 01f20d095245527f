"""The identity a gateway's remote parts (its dialers and Envoys) prove with their client
certificate: one URI subject alternative name,

    spiffe://clrk.apoxy.dev/ns/NAMESPACE/egressgateway/NAME

The control plane serves such a client that gateway's policy and its Envoy resources
only, whatever gateway or node id the client asks for, and never its admin API."""

from __future__ import annotations

from collections.abc import Iterable

from clrk.api.grammar import check_dns_label, check_object_name

TRUST_DOMAIN = "clrk.apoxy.dev"
SCHEME = "spiffe://"
_PREFIX = f"{SCHEME}{TRUST_DOMAIN}/"


class IdentityError(ValueError):
    """A certificate that names a clrk identity in a way the control plane cannot trust."""


def gateway_uri(gateway: str) -> str:
    """The URI SAN of gateway "namespace/name"."""
    namespace, _, name = gateway.rpartition("/")
    return f"{_PREFIX}ns/{namespace or 'default'}/egressgateway/{name}"


def gateway_of(uris: Iterable[str]) -> str | None:
    """The gateway ("namespace/name") the URI SANs of a verified certificate bind it to;
    None when no URI is in clrk's trust domain (an operator's certificate).

    IdentityError when one is ours but malformed, or when a certificate names two:
    both are refused rather than read generously."""
    found = set()
    for uri in uris:
        if not uri.lower().startswith(_PREFIX):
            continue
        parts = uri[len(_PREFIX) :].split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "egressgateway":
            raise IdentityError(f"{uri}: expected {_PREFIX}ns/NAMESPACE/egressgateway/NAME")
        try:
            namespace, name = check_dns_label(parts[1]), check_object_name(parts[3])
        except ValueError as exc:
            raise IdentityError(f"{uri}: {exc}") from None
        found.add(f"{namespace}/{name}")
    if len(found) > 1:
        raise IdentityError(f"a certificate for more than one gateway: {sorted(found)}")
    return found.pop() if found else None
