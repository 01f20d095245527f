"""Dialer configuration parsing."""

from __future__ import annotations

import pytest

from clrk_worker_dialer.config import address, gateway_key, system_resolvers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1080", ("127.0.0.1", 1080)),
        ("[::]:15001", ("::", 15001)),
        ("15002", ("0.0.0.0", 15002)),
    ],
)
def test_listen_addresses_parse(text, expected):
    assert address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "localhost:80", "[::1]", "1.2.3.4:0"])
def test_listen_addresses_need_an_ip_and_a_port(text):
    with pytest.raises(ValueError):
        address(text)


def test_a_bare_gateway_name_is_in_the_default_namespace():
    assert gateway_key("gw") == ("default", "gw")
    assert gateway_key("team/gw") == ("team", "gw")


def test_system_resolvers_come_from_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nsearch a\n")
    assert system_resolvers(str(conf)) == [("192.0.2.53", 53), ("fe80::1", 53)]
    assert system_resolvers(str(tmp_path / "missing")) == []
