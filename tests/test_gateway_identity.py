"""A gateway's identity in a client certificate: one SPIFFE URI, read strictly."""

from __future__ import annotations

import pytest

from clrk.gateway_identity import IdentityError, gateway_of, gateway_uri


def test_a_gateway_uri_reads_back_as_its_gateway():
    uri = gateway_uri("team-a/agents")
    assert uri == "spiffe://clrk.apoxy.dev/ns/team-a/egressgateway/agents"
    assert gateway_of([uri]) == "team-a/agents"
    assert gateway_uri("agents") == "spiffe://clrk.apoxy.dev/ns/default/egressgateway/agents"


def test_a_certificate_without_a_clrk_uri_binds_to_no_gateway():
    assert gateway_of([]) is None
    assert gateway_of(["spiffe://example.org/ns/a/egressgateway/b", "https://x"]) is None


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://clrk.apoxy.dev/ns/a/egressgateway",
        "spiffe://clrk.apoxy.dev/ns/a/egressgateway/b/c",
        "spiffe://clrk.apoxy.dev/namespace/a/egressgateway/b",
        "spiffe://clrk.apoxy.dev/ns/a/gateway/b",
        "spiffe://clrk.apoxy.dev/ns/A_B/egressgateway/b",
        "spiffe://clrk.apoxy.dev/ns/a/egressgateway/..",
    ],
)
def test_a_malformed_clrk_uri_is_an_error_not_no_identity(uri):
    with pytest.raises(IdentityError, match=r"clrk\.apoxy\.dev"):
        gateway_of([uri])


def test_a_certificate_for_two_gateways_is_refused():
    with pytest.raises(IdentityError, match="more than one gateway"):
        gateway_of([gateway_uri("a/x"), gateway_uri("a/y")])
    assert gateway_of([gateway_uri("a/x"), gateway_uri("a/x")]) == "a/x"
