"""The dialer and the control plane derive Envoy listener addresses the same way."""

from clrk.nexthops import DEFAULT_BASE_PORT, envoy_listener_addresses


def test_each_listener_gets_base_plus_its_position_and_udp_keeps_its_slot():
    got = envoy_listener_addresses([("tcp", "TCP"), ("dgram", "UDP"), ("tls", "TLS")])
    assert got == {
        "tcp": ("127.0.0.1", DEFAULT_BASE_PORT),
        "tls": ("127.0.0.1", DEFAULT_BASE_PORT + 2),
    }


def test_host_and_base_port_are_configurable():
    assert envoy_listener_addresses([("web", "HTTP")], "::1", 20000) == {"web": ("::1", 20000)}
