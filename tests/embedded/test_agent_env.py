"""clrk_cli.embedded.agent_env: what `clrk run` puts in the command's environment."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from clrk_cli.embedded import agent_env


def test_agent_ref():
    assert agent_env.agent_ref("bot") == "default/bot"
    assert agent_env.agent_ref("team/bot-1") == "team/bot-1"
    for bad in ["", "Bot", "a/b/c", "/bot", "bot/", "b@t", "-x"]:
        with pytest.raises(ValueError):
            agent_env.agent_ref(bad)


def test_labels():
    assert agent_env.labels(["team=data", "app.kubernetes.io/name=x"]) == {
        "team": "data",
        "app.kubernetes.io/name": "x",
    }
    with pytest.raises(ValueError):
        agent_env.labels(["novalue"])


def test_proxy_env_names_the_agent_with_its_token_as_the_password():
    env = agent_env.proxy_env("default/bot", "t0ken-_x", 1080, 3128)
    all_proxy = urlsplit(env["ALL_PROXY"])
    assert all_proxy.scheme == "socks5h" and all_proxy.port == 1080
    assert unquote(all_proxy.username) == "default/bot"
    assert unquote(all_proxy.password) == "t0ken-_x"
    assert env["HTTP_PROXY"] == env["ALL_PROXY"] == env["http_proxy"]
    https = urlsplit(env["HTTPS_PROXY"])
    assert https.scheme == "http" and https.port == 3128 and env["https_proxy"] == https.geturl()
    assert unquote(https.username) == "default/bot"
    assert unquote(https.password) == "t0ken-_x"
    assert env["NO_PROXY"] == ""


def test_trust_bundle(tmp_path):
    system = tmp_path / "system.pem"
    system.write_text("SYSTEM")
    assert agent_env.system_bundle([str(tmp_path / "none"), str(system)]) == str(system)
    assert agent_env.system_bundle([str(tmp_path / "none")]) is None
    assert agent_env.bundle_text("SYSTEM\n\n", "CA") == "SYSTEM\nCA\n"
    assert agent_env.bundle_text(None, "CA") == "CA\n"
    env = agent_env.trust_env("/b.pem")
    assert set(env) == {
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CURL_CA_BUNDLE",
    } and set(env.values()) == {"/b.pem"}


def test_names_and_exit_codes():
    from clrk_worker_dialer.redirect_rules import spec_for_index

    name = agent_env.sandbox_name(4194304, 1023)
    spec_for_index(1023, name, tcp_port=1, udp_port=2, dns_port=3)  # valid chain/iface names
    assert agent_env.exit_code(3) == 3 and agent_env.exit_code(-15) == 143
