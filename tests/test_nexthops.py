"""The dialer and the control plane derive Envoy listener addresses the same way."""

import pytest

from clrk.nexthops import (
    DEFAULT_BASE_PORT,
    check_socket_dir,
    describe,
    envoy_listener_addresses,
    socket_dir_problem,
)


def test_each_listener_gets_base_plus_its_position_and_udp_keeps_its_slot():
    got = envoy_listener_addresses([("tcp", "TCP"), ("dgram", "UDP"), ("tls", "TLS")])
    assert got == {
        "tcp": ("127.0.0.1", DEFAULT_BASE_PORT),
        "tls": ("127.0.0.1", DEFAULT_BASE_PORT + 2),
    }


def test_host_and_base_port_are_configurable():
    assert envoy_listener_addresses([("web", "HTTP")], "::1", 20000) == {"web": ("::1", 20000)}


def test_a_socket_directory_gives_each_listener_a_unix_socket_named_after_it():
    got = envoy_listener_addresses([("tcp", "TCP"), ("dgram", "UDP")], socket_dir="/run/clrk")
    assert got == {"tcp": "/run/clrk/tcp.sock"}


def test_a_socket_path_too_long_for_a_socket_address_is_refused_with_the_path():
    with pytest.raises(ValueError, match=r"/x+/tcp\.sock.* 109 bytes"):
        envoy_listener_addresses([("tcp", "TCP")], socket_dir="/" + "x" * 99)


def test_next_hops_are_described_for_logs():
    assert describe("/run/clrk/tcp.sock") == "/run/clrk/tcp.sock"
    assert describe(("127.0.0.1", 15100)) == "127.0.0.1:15100"


def test_a_socket_directory_is_checked_at_start_up_for_the_longest_listener_name():
    check_socket_dir("/" + "d" * 36)  # 1 + 36 + 1 + 63 + 5 = 106 bytes
    with pytest.raises(ValueError, match="shorter socket directory"):
        check_socket_dir("/" + "d" * 38)


def test_a_socket_directory_only_its_owner_may_write_is_accepted(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o750)
    assert socket_dir_problem(str(private)) is None


def test_a_socket_directory_others_may_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone could bind a socket in Envoy's place
    assert "writable by others" in socket_dir_problem(str(shared))
    assert "No such file" in socket_dir_problem(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("")
    assert "not a directory" in socket_dir_problem(str(tmp_path / "file"))
