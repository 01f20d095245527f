"""The filter-chain evaluator the decide-vs-Envoy property relies on: its rules on small
translated listeners, then its verdicts against the real Envoy, connection by connection,
on listeners that use every predicate the translator writes.

The real Envoy runs on loopback (the only place a unit test may connect to), so the
"internet" of these policies is 127.0.0.0/8 and ::1, with 127.9.0.0/16 standing in for
the always-blocked ranges.  Which chain Envoy chose is read from its counters: the
chain's tcp_proxy counter, the listener's no_filter_chain_match, or neither (a chain
that only closes).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Iterator

import pytest

from clrk.api import load_text
from clrk.policy.loaded import compile_loaded
from clrk.wire import TlvType
from clrk_worker_dialer.proxy_v2 import ProxyHeader, encode
from clrk_xds.envoy_process import EnvoyProcess, static_bootstrap
from clrk_xds.translate import to_plain, translate, translate_gateway
from tests.conftest import compile_yaml
from tests.xds.chain_matcher import Arrival, Outcome, Unsupported, Verdict, evaluate
from tests.xds.xds_messages import free_port_block

API = "apiVersion: clrk.apoxy.dev/v1alpha1"
BLOCKED = (ipaddress.ip_network("127.9.0.0/16"),)
AGENTS = [None, ("data", "etl"), ("data", "dev")]


def _manifests(p: int, q: int, gateway: str, default: str) -> str:
    return f"""
{API}
kind: EgressGateway
metadata: {{name: {gateway}}}
spec:
  defaultPolicy: {default}
  listeners:
  - {{name: tcp-out, protocol: TCP}}
  - {{name: tls-out, protocol: TLS}}
  - {{name: pg, protocol: TCP, port: {q}}}
---
{API}
kind: EgressL4Route
metadata: {{name: names}}
spec:
  parentRefs: [{{name: {gateway}}}]
  rules:
  - matches:
    - destinationHostnames: ["exact.example.com", "*.wild.example.com"]
      ports: [{{port: {p}}}, {{startPort: {q}, endPort: {q + 1}}}]
---
{API}
kind: EgressL4Route
metadata: {{name: nets}}
spec:
  parentRefs: [{{name: {gateway}, sectionName: tcp-out}}]
  rules:
  - matches:
    - destinationCIDRs: ["127.0.0.2/32", "::1/128", "127.9.1.0/24"]
---
{API}
kind: EgressL4Route
metadata: {{name: agents}}
spec:
  parentRefs: [{{name: {gateway}}}]
  rules:
  - matches:
    - destinationHostnames: ["agents.example.com"]
      sourceAgents: {{matchLabels: {{team: data}}}}
---
{API}
kind: EgressL4Route
metadata: {{name: paste}}
spec:
  parentRefs: [{{name: {gateway}, sectionName: tls-out}}]
  rules:
  - matches: [{{destinationHostnames: ["paste.example.com", "*.wild.example.com"]}}]
---
{API}
kind: EgressDenyPolicy
metadata: {{name: no-paste}}
spec:
  targetRef: {{name: paste}}
---
{API}
kind: DaemonAgent
metadata: {{name: etl, namespace: data, labels: {{team: data}}}}
spec: {{egressRefs: [{{gatewayRef: default/{gateway}}}]}}
---
{API}
kind: DaemonAgent
metadata: {{name: dev, namespace: data, labels: {{team: dev}}}}
spec: {{egressRefs: [{{gatewayRef: default/{gateway}}}]}}
"""


def _listener(text: str, name: str):
    policy = compile_yaml(text).gateways[("default", "gw")]
    (lst,) = [
        x for x in translate_gateway(policy, always_blocked=BLOCKED).listeners if x.name == name
    ]
    return lst


def _tlvs(authority=None, agent=None) -> dict[int, str]:
    out = {}
    if authority:
        out[TlvType.AUTHORITY] = authority
    if agent:
        out[TlvType.AGENT_NAMESPACE], out[TlvType.AGENT_NAME] = agent
    return out


TEXT = _manifests(443, 5432, "gw", "deny-all")


def test_the_first_matching_entry_wins_and_no_match_closes_unserved():
    lst = _listener(TEXT, "tcp-out")
    # paste is denied on every listener, before the allow route that also names it
    denied = evaluate(lst, Arrival("127.0.0.1", 443, _tlvs("a.wild.example.com")))
    assert denied == Verdict(Outcome.CLOSED, "deny/default/paste/rule/0")
    allowed = evaluate(lst, Arrival("127.0.0.1", 443, _tlvs("exact.example.com")))
    assert allowed == Verdict(Outcome.FORWARDED, "route/default/names/rule/0")
    assert evaluate(lst, Arrival("127.0.0.1", 80, _tlvs("exact.example.com"))).chain is None


def test_tlvs_count_only_through_the_proxy_protocol_rules_and_sni_only_with_tls_inspector():
    lst = _listener(TEXT, "tcp-out")
    assert evaluate(lst, Arrival("127.0.0.1", 443, {0x30: "exact.example.com"})).chain is None
    tls = _listener(TEXT, "tls-out")
    hello = _tlvs("exact.example.com")
    assert evaluate(tls, Arrival("127.0.0.1", 443, hello, "evil.example")).chain is None
    assert evaluate(lst, Arrival("127.0.0.1", 443, hello, "evil.example")).outcome.allows


def test_agents_are_matched_by_their_tlvs():
    lst = _listener(TEXT, "tcp-out")
    ok = Arrival("127.0.0.1", 443, _tlvs("agents.example.com", ("data", "etl")))
    assert evaluate(lst, ok).outcome is Outcome.FORWARDED
    for agent in (("data", "dev"), None):
        arrival = Arrival("127.0.0.1", 443, _tlvs("agents.example.com", agent))
        assert evaluate(lst, arrival).chain is None


def test_an_http_chain_denies_by_its_facts_or_by_the_deny_tlv():
    text = TEXT.replace("{name: tls-out, protocol: TLS}", "{name: tls-out, protocol: HTTP}")
    lst = _listener(text, "tls-out")
    denied = evaluate(lst, Arrival("127.0.0.1", 80, _tlvs("paste.example.com")))
    assert denied == Verdict(Outcome.HTTP_DENIED, "deny/default/paste/rule/0")
    tagged = {**_tlvs("exact.example.com"), TlvType.DENY_POLICY: "default/no-paste"}
    assert evaluate(lst, Arrival("127.0.0.1", 443, tagged)).outcome is Outcome.HTTP_DENIED
    plain = evaluate(lst, Arrival("127.0.0.1", 443, _tlvs("exact.example.com")))
    assert plain.outcome is Outcome.HTTP_ALLOWED


def test_what_the_translator_does_not_write_is_refused_not_guessed():
    lst = _listener(TEXT, "tcp-out")
    lst.filter_chain_matcher.matcher_list.matchers[0].predicate.single_predicate = None
    lst.filter_chain_matcher.matcher_list.matchers[0].predicate.and_matcher = None
    lst.filter_chain_matcher.matcher_list.matchers[0].predicate.or_matcher = None
    with pytest.raises(Unsupported):
        evaluate(lst, Arrival("127.0.0.1", 443, _tlvs("exact.example.com")))


# --- against the real Envoy -------------------------------------------------------------


def _client_hello(sni: str) -> bytes:
    # Python refuses an empty label: write "..." as ".x." and patch the byte (same length).
    wanted, asked = sni, sni.replace("..", ".x") if sni.endswith("..") else sni
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=asked)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello.count(asked.encode()) == 1
    return hello.replace(asked.encode(), wanted.encode())


def _counters(envoy: EnvoyProcess) -> dict[str, int]:
    status, body = envoy.admin_get("/stats?filter=(downstream_cx_total|no_filter_chain_match)$")
    assert status == 200, body
    out = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


class _Observed:
    """One Envoy and its counters as last read."""

    def __init__(self, envoy: EnvoyProcess) -> None:
        self.envoy = envoy
        self.counters = _counters(envoy)

    def changed(self) -> list[str]:
        after = _counters(self.envoy)
        out = [k for k in after if after[k] != self.counters.get(k, 0)]
        self.counters = after
        return out


def _envoy_verdict(
    envoy: _Observed, listener: tuple[str, int], arrival: Arrival
) -> tuple[str, str | None]:
    """('forwarded', chain) / ('unmatched', None) / ('closed', None), from the counters."""
    src = "10.1.2.3" if ":" not in arrival.dst_ip else "2001:db8::7"
    tlvs = tuple((t, v.encode()) for t, v in arrival.tlvs.items())
    header = encode(ProxyHeader(src, 40000, arrival.dst_ip, arrival.dst_port, tlvs))
    payload = _client_hello(arrival.sni) if arrival.sni else b"ping"
    with socket.create_connection(listener, timeout=5) as conn:
        conn.sendall(header + payload)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while conn.recv(4096):
                pass
    changed = envoy.changed()
    forwarded = [k for k in changed if k.startswith("tcp.")]
    if forwarded:
        (name,) = forwarded
        return "forwarded", name.removeprefix("tcp.").removesuffix(".downstream_cx_total")
    if any(k.endswith("no_filter_chain_match") for k in changed):
        return "unmatched", None
    return "closed", None


def _expected(verdict: Verdict) -> tuple[str, str | None]:
    if verdict.outcome is Outcome.FORWARDED:
        return "forwarded", (verdict.chain or "").replace("/", ".")
    return ("unmatched" if verdict.chain is None else "closed"), None


@pytest.fixture(scope="module")
def envoys() -> Iterator[dict]:
    # Destination ports nothing listens on: Envoy's upstream connect is refused at once.
    block = free_port_block(3)
    p, q, dead = block, block + 1, block + 2
    out = {}
    running = []
    try:
        for gateway, default in (("gw", "deny-all"), ("open", "allow-all")):
            text = _manifests(p, q, gateway, default)
            policies = compile_loaded(compile_yaml_load(text)).compiled
            base = free_port_block(3)
            res = translate(policies, base_port=base, always_blocked=BLOCKED)[f"default/{gateway}"]
            envoy = EnvoyProcess(static_bootstrap(to_plain(res)), log_level="warning").start()
            running.append(envoy)
            addresses = {
                lst.name: (
                    lst.address.socket_address.address,
                    lst.address.socket_address.port_value,
                )
                for lst in res.listeners
            }
            out[gateway] = (_Observed(envoy), res, addresses)
        yield {"gateways": out, "ports": (p, q, dead)}
    finally:
        for envoy in running:
            envoy.stop()


def _address(listener) -> tuple[str, int]:
    return listener.address.socket_address.address, listener.address.socket_address.port_value


def compile_yaml_load(text: str):
    loaded = load_text(text, "chains.yaml")
    assert not loaded.errors, [f.line() for f in loaded.errors]
    return loaded


def _arrivals(ports, agents) -> Iterator[Arrival]:
    names = [None, "exact.example.com", "a.wild.example.com", "b.a.wild.example.com",
             "agents.example.com", "paste.example.com"]  # fmt: skip
    for dst in ("127.0.0.1", "127.0.0.2", "127.9.1.5", "127.9.2.5", "::1"):
        for port in ports:
            for authority in names:
                for agent in agents:
                    yield Arrival(dst, port, _tlvs(authority, agent))


@pytest.mark.timeout(300)
def test_the_evaluator_picks_the_chain_the_real_envoy_picks(envoys) -> None:
    mismatches = []
    checked = 0
    for gateway, (envoy, res, addresses) in envoys["gateways"].items():
        listeners = {lst.name: lst for lst in res.listeners}
        for name, agents in (("tcp-out", AGENTS), ("pg", [None])):
            for arrival in _arrivals(envoys["ports"], agents):
                want = _expected(evaluate(listeners[name], arrival))
                got = _envoy_verdict(envoy, addresses[name], arrival)
                checked += 1
                if got != want:
                    mismatches.append((gateway, name, arrival, want, got))
    assert not mismatches, mismatches[:5]
    assert checked > 300


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "sni",
    [
        "paste.example.com",
        "exact.example.com",
        "a.wild.example.com",
        "evil.example",
        "Exact.Example.COM.",  # one trailing dot: decide() folds it, so must Envoy's regex
        "exact.example.com..",
    ],
)
def test_the_evaluator_reads_the_sni_as_the_real_envoy_does(envoys, sni) -> None:
    p = envoys["ports"][0]
    for gateway, (envoy, res, addresses) in envoys["gateways"].items():
        lst = next(x for x in res.listeners if x.name == "tls-out")
        for authority in (None, "exact.example.com", "a.wild.example.com", "paste.example.com"):
            arrival = Arrival("127.0.0.1", p, _tlvs(authority), sni)
            want = _expected(evaluate(lst, arrival))
            assert _envoy_verdict(envoy, addresses["tls-out"], arrival) == want, (gateway, arrival)
