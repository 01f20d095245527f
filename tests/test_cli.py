"""`clrk validate` and `clrk check`, through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clrk_cli import main
from tests.conftest import EXAMPLES, ROOT, TESTDATA

INVALID = TESTDATA / "invalid"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_examples_directory_is_valid(capsys):
    code, out, _ = run(capsys, "validate", "-f", str(EXAMPLES))
    assert code == 0
    assert out.strip().splitlines()[-1].startswith("valid: 6 gateways, 7 routes, 1 deny policy")


def test_the_seed_policy_directory_is_valid(capsys):
    code, out, _ = run(capsys, "validate", "-f", str(EXAMPLES / "prod-agents"))
    assert (code, out.strip()) == (
        0,
        "valid: 1 gateway, 2 routes, 0 deny policies, 2 agents (5 documents in 4 files)",
    )


M = "spec.rules[0].matches[0]"


def route(file: str, path: str, fragment: str) -> tuple[str, int, str, str, str]:
    """A broken EgressL4Route: the object is named after its file, paths are under M."""
    return (file, 1, f"EgressL4Route/{file}", f"{M}{path}", fragment)


# (file, document, KIND/NAME, field path, part of the message) for every broken manifest.
EXPECTED = [
    route("cidr-host-bits", ".destinationCIDRs[0]", "the network is '10.1.0.0/16'"),
    route("cidr-unparseable", ".destinationCIDRs[1]", "not a valid IPv4 or IPv6 CIDR"),
    (
        "dangling-refs",
        2,
        "EgressL4Route/dangling-parent",
        "spec.parentRefs[0].name",
        "default/no-such-gateway does not exist",
    ),
    (
        "dangling-refs",
        3,
        "EgressL4Route/dangling-section",
        "spec.parentRefs[0].sectionName",
        "has no listener 'tls-out'",
    ),
    (
        "dangling-refs",
        4,
        "EgressDenyPolicy/dangling-target",
        "spec.targetRef.name",
        "default/no-such-route does not exist",
    ),
    ("deny-status", 1, "EgressDenyPolicy/deny-status", "spec.denyResponse.statusCode", "400..599"),
    route("empty-label", ".destinationHostnames[0]", "empty label"),
    route(
        "ip-literal-hostname",
        ".destinationHostnames[1]",
        "IP literal; put addresses in destinationCIDRs",
    ),
    route("label-too-long", ".destinationHostnames[0]", "label of 64 characters"),
    (
        "listener-names-duplicate",
        1,
        "EgressGateway/listener-names-duplicate",
        "spec.defaultPolicy",
        "'deny-all' or 'allow-all'",
    ),
    (
        "listener-names-duplicate",
        1,
        "EgressGateway/listener-names-duplicate",
        "spec.listeners",
        "'out' is used twice",
    ),
    (
        "listener-tls-on-tcp",
        1,
        "EgressGateway/listener-tls-on-tcp",
        "spec.listeners[0]",
        "only allowed on a TLS listener",
    ),
    (
        "listener-tls-on-tcp",
        1,
        "EgressGateway/listener-tls-on-tcp",
        "spec.dns",
        "minTTL (7200s) is greater than maxTTL (3600s)",
    ),
    route("non-ascii-hostname", ".destinationHostnames[0]", '"xn--bcher-kva.example"'),
    route("port-65536", ".ports[0].port", "out of range 1..65535"),
    route("port-and-range", ".ports[0]", "not both"),
    route("port-range-half", ".ports[0]", "needs both startPort and endPort"),
    route("port-range-reversed", ".ports[0]", "startPort 9000 is greater than endPort 8000"),
    route("port-zero", ".ports[0].port", "port 0 is out of range"),
    ("unknown-kind", 1, "EgressHTTPRoute/unknown-kind", "kind", "unknown kind 'EgressHTTPRoute'"),
    route("unknown-spec-field", ".destinationHostname", "unknown field"),
    route(
        "wildcard-in-the-middle",
        ".destinationHostnames[0]",
        "only allowed as the whole first label",
    ),
    route(
        "wildcard-inside-label", ".destinationHostnames[0]", "only allowed as the whole first label"
    ),
    route(
        "wildcard-partial-label",
        ".destinationHostnames[0]",
        "only allowed as the whole first label",
    ),
    route("wildcard-star-dot", ".destinationHostnames[0]", "at least one label after '*.'"),
    route("wildcard-star-only", ".destinationHostnames[0]", "at least one label after '*.'"),
    (
        "wrong-api-version",
        1,
        "EgressGateway/wrong-api-version",
        "apiVersion",
        "must be 'clrk.apoxy.dev/v1alpha1'",
    ),
    ("yaml-syntax", 1, "?/?", "<document>", "invalid YAML: line 5, column 5"),
]


def test_a_directory_of_broken_manifests_names_every_error(capsys):
    code, out, err = run(capsys, "validate", "-f", str(INVALID))
    assert code == 1
    lines = out.strip().splitlines()
    for file, doc, obj, path, fragment in EXPECTED:
        prefix = f"{INVALID / file}.yaml: document {doc}: {obj}: {path}: "
        assert any(line.startswith(prefix) and fragment in line for line in lines), prefix
    assert len(lines) == len(EXPECTED), "\n".join(lines)
    assert err.strip() == f"invalid: {len(EXPECTED)} error(s), 0 warning(s)"


def test_every_broken_manifest_file_is_covered_by_an_expectation():
    assert {p.stem for p in INVALID.glob("*.yaml")} == {e[0] for e in EXPECTED}


def test_each_broken_manifest_fails_on_its_own(capsys):
    for path in sorted(INVALID.glob("*.yaml")):
        code, out, _ = run(capsys, "validate", "-f", str(path))
        assert code == 1 and out, path


def test_warnings_are_prefixed_and_do_not_fail_validation(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text(
        (EXAMPLES / "prod-agents" / "gateway.yaml").read_text()
        + """---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: anything}
spec:
  parentRefs: [{name: prod-agents}]
  rules: [{matches: [{ports: [{port: 22}]}]}]
"""
    )
    code, out, _ = run(capsys, "validate", "-f", str(tmp_path))
    assert code == 0
    first, last = out.strip().splitlines()
    assert first.startswith(f"warning: {tmp_path / 'p.yaml'}: document 2: EgressL4Route/anything: ")
    assert "matches every destination" in first
    assert last.endswith(", 1 warning(s)")


@pytest.mark.parametrize("value", ["!!int ''", "!!float ''", "!!int '-'", "1" + ":00" * 200 + ".5"])
def test_a_value_its_tag_cannot_read_is_printed_as_a_finding(capsys, tmp_path, value):
    path = tmp_path / "p.yaml"
    path.write_text(f"kind: X\nspec: {value}\n")
    code, out, err = run(capsys, "validate", "-f", str(path))
    assert code == 1
    assert out.startswith(f"{path}: document 1: ?/?: <document>: invalid YAML: line 2, column 7: ")
    assert "cannot read" in out and err.strip() == "invalid: 1 error(s), 0 warning(s)"


def test_a_missing_path_is_an_error(capsys, tmp_path):
    code, out, _ = run(capsys, "validate", "-f", str(tmp_path / "nope.yaml"))
    assert code == 1 and "no such file or directory" in out


def check(capsys, *args: str) -> dict:
    code, out, err = run(capsys, "check", *args, "-o", "json")
    assert code == 0, err
    return json.loads(out)


PROD = ("-f", str(EXAMPLES / "prod-agents"), "--agent", "bot")


def test_check_allows_api_anthropic_com_on_443_via_tls_out(capsys):
    d = check(
        capsys,
        *PROD,
        "--dst-ip",
        "203.0.113.10",
        "--port",
        "443",
        "--hostname",
        "api.anthropic.com",
    )
    assert d == {
        "decision": "allow",
        "reason": "allowed",
        "gateway": "default/prod-agents",
        "agent": "default/bot",
        "route": "default/anthropic-tls",
        "rule": 0,
        "listener": "tls-out",
        "hostname": "api.anthropic.com",
        "defaultPolicy": "deny-all",
        "denyPolicy": None,
        "enforced": True,
        "through": None,
    }


def test_check_denies_the_same_name_on_444_with_reason_policy(capsys):
    d = check(
        capsys,
        *PROD,
        "--dst-ip",
        "203.0.113.10",
        "--port",
        "444",
        "--hostname",
        "api.anthropic.com",
    )
    assert (d["decision"], d["reason"], d["route"]) == ("deny", "policy", None)


def test_check_denies_an_sni_that_contradicts_the_dns_binding(capsys):
    d = check(
        capsys, *PROD, "--dst-ip", "203.0.113.10", "--port", "443",
        "--hostname", "api.anthropic.com", "--sni", "evil.com",
    )  # fmt: skip
    assert d["reason"] == "sni_mismatch"


def test_check_an_sni_on_a_tcp_listener_route_is_not_evidence_and_says_why(capsys):
    code, out, err = run(capsys, "check", *PROD, "--dst-ip", "203.0.113.66", "--port", "5432",
                         "--sni", "pg.prod.internal", "-o", "json")  # fmt: skip
    assert code == 0 and json.loads(out)["reason"] == "policy"
    assert "evidence only on TLS listeners" in err and "tcp-out" in err


def test_check_an_sni_without_hostname_on_a_tls_route_needs_confirmation(capsys):
    code, out, err = run(capsys, "check", *PROD, "--dst-ip", "203.0.113.66", "--port", "443",
                         "--sni", "api.anthropic.com", "-o", "json")  # fmt: skip
    d = json.loads(out)
    assert (code, d["decision"], d["reason"]) == (0, "deny", "sni_unverified")
    assert (d["route"], d["listener"]) == ("default/anthropic-tls", "tls-out")
    assert "needs to confirm it" in err and "--hostname api.anthropic.com" in err
    d = check(capsys, *PROD, "--dst-ip", "203.0.113.66", "--port", "443",
              "--sni", "api.anthropic.com", "--hostname", "api.anthropic.com")  # fmt: skip
    assert d["reason"] == "allowed"


@pytest.mark.parametrize("ip", ["127.0.0.1", "169.254.169.254"])
def test_check_blocks_loopback_and_metadata_with_an_allowed_name_or_under_allow_all(capsys, ip):
    d = check(capsys, *PROD, "--dst-ip", ip, "--port", "443", "--hostname", "api.anthropic.com")
    assert d["reason"] == "blocked_address"
    d = check(capsys, "-f", str(EXAMPLES / "allow-all-deny-paste.yaml"), "--agent", "bot",
              "--dst-ip", ip, "--port", "443")  # fmt: skip
    assert d["reason"] == "blocked_address"


def test_check_wildcards_and_ipv4_mapped_addresses(capsys):
    m = ("-f", str(EXAMPLES / "wildcards-cidrs-ranges.yaml"), "--agent", "bot", "--dst-ip")
    assert (
        check(capsys, *m, "203.0.113.7", "--port", "443", "--hostname", "eu.api.openai.com")[
            "reason"
        ]
        == "policy"
    )
    assert (
        check(capsys, *m, "203.0.113.7", "--port", "443", "--hostname", "x.azure.openai.com")[
            "reason"
        ]
        == "allowed"
    )
    mapped = check(capsys, *m, "::ffff:10.20.1.1", "--port", "443")
    plain = check(capsys, *m, "10.20.1.1", "--port", "443")
    assert mapped == plain and mapped["reason"] == "allowed"


def test_check_denies_a_deny_policy_route_on_an_allow_all_gateway(capsys):
    d = check(capsys, "-f", str(EXAMPLES / "allow-all-deny-paste.yaml"), "--agent", "bot",
              "--dst-ip", "192.0.2.66", "--port", "443", "--hostname", "pastebin.com")  # fmt: skip
    assert (d["reason"], d["route"], d["denyPolicy"]) == (
        "deny_policy",
        "default/paste-sites",
        "default/no-paste-sites",
    )


def test_check_takes_a_declared_agents_labels_and_merges_given_ones(capsys, tmp_path):
    route = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: finance-only}
spec:
  parentRefs: [{name: prod-agents}]
  rules:
  - matches:
    - destinationHostnames: [ledger.example.com]
      sourceAgents: {matchLabels: {team: finance, tier: prod}}
"""
    (tmp_path / "r.yaml").write_text(route)
    base = ("-f", str(EXAMPLES / "prod-agents"), "-f", str(tmp_path), "--dst-ip", "192.0.2.9",
            "--port", "443", "--hostname", "ledger.example.com")  # fmt: skip
    assert check(capsys, *base, "--agent", "nightly-report")["reason"] == "policy"
    d = check(capsys, *base, "--agent", "default/nightly-report", "--agent-label", "tier=prod")
    assert d["reason"] == "allowed"
    assert check(capsys, *base, "--agent", "stranger", "--agent-label", "tier=prod")["reason"] == (
        "policy"
    )


def test_check_picks_the_gateway_from_the_agents_egress_refs(capsys):
    d = check(capsys, "-f", str(EXAMPLES), "--agent", "bot", "--dst-ip", "203.0.113.10",
              "--port", "443", "--hostname", "api.anthropic.com")  # fmt: skip
    assert d["gateway"] == "default/prod-agents"


def test_check_needs_gateway_when_several_exist_and_the_agent_is_undeclared(capsys):
    code, _, err = run(capsys, "check", "-f", str(EXAMPLES), "--agent", "stranger",
                       "--dst-ip", "192.0.2.1", "--port", "443")  # fmt: skip
    assert code == 1 and "--gateway" in err
    d = check(capsys, "-f", str(EXAMPLES), "--agent", "stranger", "--gateway", "open-agents",
              "--dst-ip", "192.0.2.1", "--port", "443")  # fmt: skip
    assert d["reason"] == "allowed_default"


@pytest.mark.parametrize(
    "args",
    [
        ("--dst-ip", "not-an-ip", "--port", "443"),
        ("--dst-ip", "192.0.2.1", "--port", "0"),
        ("--dst-ip", "192.0.2.1", "--port", "443", "--gateway", "nope"),
        ("--dst-ip", "192.0.2.1", "--port", "443", "--agent-label", "novalue"),
        ("--dst-ip", "192.0.2.1", "--port", "443", "--protocol", "SCTP"),
    ],
)
def test_check_exits_1_on_invalid_input(capsys, args):
    code, _, _ = run(capsys, "check", *PROD, *args)
    assert code == 1


def test_check_exits_1_on_invalid_manifests(capsys):
    code, _, err = run(capsys, "check", "-f", str(INVALID), "--agent", "bot",
                       "--dst-ip", "192.0.2.1", "--port", "443")  # fmt: skip
    assert code == 1 and "invalid" in err


def test_check_prints_a_table_for_people(capsys):
    code, out, _ = run(capsys, "check", *PROD, "--dst-ip", "203.0.113.10", "--port", "443",
                       "--hostname", "api.anthropic.com")  # fmt: skip
    assert code == 0
    assert "allow (allowed)" in out and "default/anthropic-tls rule 0" in out


def test_the_installed_console_script_runs(tmp_path):
    clrk = Path(sys.executable).with_name("clrk")
    assert clrk.exists(), "the clrk console script is not installed in this environment"
    done = subprocess.run(
        [str(clrk), "check", *PROD, "--dst-ip", "169.254.169.254", "--port", "80", "-o", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reason"] == "blocked_address"
    bad = subprocess.run(
        [str(clrk), "validate", "-f", str(INVALID)], capture_output=True, timeout=60
    )
    assert bad.returncode == 1


def test_check_says_what_report_mode_would_do(capsys, tmp_path):
    text = (EXAMPLES / "allow-all-deny-paste.yaml").read_text()
    (tmp_path / "report.yaml").write_text(text.replace("spec:\n", "spec:\n  mode: Report\n", 1))
    args = ("-f", str(tmp_path), "--agent", "default/bot", "--dst-ip", "192.0.2.9",
            "--port", "443", "--hostname", "pastebin.com")  # fmt: skip
    code, out, err = run(capsys, "check", *args)
    assert code == 0, err
    assert "reported, not enforced" in out and "goes through on listener" in out
    d = check(capsys, *args)
    assert (d["decision"], d["reason"], d["enforced"]) == ("deny", "deny_policy", False)
    assert d["through"]["reason"] in ("allowed", "allowed_default")
