"""`clrk ca print|path` through click's runner (the group is registered by the lead)."""

from __future__ import annotations

from click.testing import CliRunner

from clrk_cli.ca import ca
from clrk_xds.ca import GatewayCA


def test_print_shows_the_persisted_ca(tmp_path):
    authority = GatewayCA.load_or_create(tmp_path)
    result = CliRunner().invoke(ca, ["print", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.encode() == authority.cert_pem


def test_print_without_a_ca_fails_and_creates_nothing(tmp_path):
    result = CliRunner().invoke(ca, ["print", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no CA" in result.output
    assert not (tmp_path / "ca").exists()


def test_print_create_makes_the_ca_the_control_plane_will_load(tmp_path):
    result = CliRunner().invoke(ca, ["print", "--create", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("-----BEGIN CERTIFICATE-----")
    assert GatewayCA.load(tmp_path).cert_pem == result.output.encode()


def test_print_never_shows_the_key(tmp_path):
    GatewayCA.load_or_create(tmp_path)
    result = CliRunner().invoke(ca, ["print", "--state-dir", str(tmp_path)])
    assert "PRIVATE KEY" not in result.output


def test_path_prints_the_certificate_path(tmp_path):
    result = CliRunner().invoke(ca, ["path", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output == f"{tmp_path / 'ca' / 'ca.crt'}\n"
