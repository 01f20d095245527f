"""The gateway's own addresses under `clrk up` (issue 11, item 3), attacked from `clrk run`
with real curl, dnsmasq and ip: DNS rebinding onto the gateway's sandbox link or uplink,
a covering CIDR route, SOCKS5, an address added while the stack runs, and the dialer's
own ports.  Each is refused with a `blocked_address` record, in the dialer and in
Envoy's guard chain; no CIDR opens them, loopback's included.  A service of the gateway
host listens on every address, so a bypass would be an HTTP 200."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from clrk.records.query import iter_records, select
from clrk_worker_dialer.redirect_rules import spec_for_index
from tests.e2e.topology import DEFAULT_ZONE, UPLINK, wait_until
from tests.embedded.up_harness import CURL, Stack, clrk, running_stack

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]

# The gateway's side of the link of `clrk run`'s first sandbox (slot 1).
FIRST_SANDBOX = spec_for_index(1, "x", tcp_port=1, udp_port=2, dns_port=3)
SANDBOX_HOST_V4, SANDBOX_HOST_V6 = FIRST_SANDBOX.host_v4, FIRST_SANDBOX.host_v6
HOST_SERVICE = 8080  # the gateway host's own service: a hostname route opens this port
WIDE_SERVICE = 8081  # the same service behind a 0.0.0.0/0 and ::/0 route
UDP_PORT = 9999  # UDP behind a 0.0.0.0/0 and ::/0 route
ADDED = "192.0.2.77"  # given to the gateway's namespace while the stack runs
# The gateway's own listeners: dialer TCP and DNS, control plane status, ext_proc,
# Envoy's admin interface, the metrics endpoint.
GATEWAY_PORTS = (15001, 15053, 18001, 18002, 19000, 9464)

ZONE = {
    **DEFAULT_ZONE,
    "rebind.test": {"A": [SANDBOX_HOST_V4], "AAAA": [SANDBOX_HOST_V6], "ttl": 5},
    "uplink.test": {"A": [UPLINK["gw_v4"]], "AAAA": [UPLINK["gw_v6"]], "ttl": 5},
}
POLICY = f"""\
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {{name: egress}}
spec:
  listeners:
  - {{name: tcp, protocol: TCP}}
  - {{name: udp, protocol: UDP}}
  dns: {{upstream: ["198.51.100.53:53"]}}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: rebind}}
spec:
  parentRefs: [{{name: egress, sectionName: tcp}}]
  rules:
  - matches:
    - destinationHostnames: [rebind.test, uplink.test]
      ports: [{{port: {HOST_SERVICE}}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: wide}}
spec:
  parentRefs: [{{name: egress, sectionName: tcp}}]
  rules:
  - matches:
    - destinationCIDRs: ["0.0.0.0/0", "::/0"]
      ports: [{", ".join(f"{{port: {p}}}" for p in (80, WIDE_SERVICE, *GATEWAY_PORTS))}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: wide-udp}}
spec:
  parentRefs: [{{name: egress, sectionName: udp}}]
  rules:
  - matches:
    - destinationCIDRs: ["0.0.0.0/0", "::/0"]
      protocol: UDP
      ports: [{{port: {UDP_PORT}}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: loopback}}
spec:
  parentRefs: [{{name: egress, sectionName: tcp}}]
  rules:
  - matches:
    - destinationCIDRs: ["127.0.0.0/8", "::1/128"]
      ports: [{{port: {WIDE_SERVICE}}}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {{name: bot}}
spec: {{egressRefs: [{{gatewayRef: egress}}]}}
"""
ZONE_OWN = ("rebind.test", "uplink.test")
UPLINK_OWN = (UPLINK["gw_v4"], UPLINK["gw_v6"])
REFUSED = (7, 52, 55, 56)  # reset by the dialer: at connect, empty reply, send or recv


@pytest.fixture(scope="module")
def own_stack(topology, tmp_path_factory):
    topology.restart_dns(ZONE)
    for port in (HOST_SERVICE, WIDE_SERVICE):  # on every address, v4 and v6
        topology.start_in_gw(["python3", "-m", "http.server", "--bind", "::", str(port)])
    for port in (HOST_SERVICE, WIDE_SERVICE):
        url = f"http://{UPLINK['gw_v4']}:{port}/"
        wait_until(lambda u=url: topology.run_in_gw([*CURL, u]).returncode == 0, 10, url)
    with running_stack(topology, tmp_path_factory.mktemp("own-addresses"), POLICY) as stack:
        yield stack


def curl_each(stack: Stack, targets: list[str], extra=()) -> dict[str, int]:
    """curl each target ("[-4|-6] URL") from one `clrk run` sandbox: target -> curl's
    exit code.  First checks that the sandbox's default route is the link address the
    zone rebinds to."""
    script = f'ip -4 route show default | grep -q "via {SANDBOX_HOST_V4} " || exit 99\n'
    for target in targets:
        script += f'{" ".join(CURL)} -o /dev/null -g {target}; echo "$? {target}"\n'
    out = stack.run("sh", "-c", script, timeout=120, extra=extra)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    codes = {}
    for line in out.stdout.splitlines():
        code, _, target = line.partition(" ")
        codes[target] = int(code)
    assert set(codes) == set(targets), out.stdout
    return codes


def blocked_records(stack: Stack, ip: str, port: int) -> list[dict]:
    """The `blocked_address` denials of connections to ip:port (one span each)."""
    records = list(
        select(
            iter_records(str(stack.state / "records.jsonl")),
            {"network.peer.address": ip, "network.peer.port": str(port)},
            name="egress.dial.denied",
            signal="span",
        )
    )
    assert all(r["attributes"]["clrk.egress.deny_reason"] == "blocked_address" for r in records)
    return records


def counts(stack: Stack, targets: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    return {t: len(blocked_records(stack, *t)) for t in targets}


def expect_one_more_each(stack: Stack, before: dict[tuple[str, int], int]) -> None:
    """Exactly one new record per target (records reach the file in batches)."""
    wait_until(
        lambda: all(n > before[t] for t, n in counts(stack, list(before)).items()),
        5,
        f"a blocked_address record for each of {list(before)}",
    )
    assert counts(stack, list(before)) == {t: n + 1 for t, n in before.items()}


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def test_dns_rebinding_onto_the_gateways_link_or_uplink_is_refused_with_a_record(own_stack):
    targets = [(a, HOST_SERVICE) for a in (SANDBOX_HOST_V4, SANDBOX_HOST_V6, *UPLINK_OWN)]
    before = counts(own_stack, targets)
    urls = [f"-{v} http://{name}:{HOST_SERVICE}/" for name in ZONE_OWN for v in (4, 6)]
    codes = curl_each(own_stack, urls)
    assert all(code in REFUSED for code in codes.values()), codes
    expect_one_more_each(own_stack, before)


def test_a_covering_cidr_route_does_not_open_the_gateways_addresses(own_stack):
    control = curl_each(own_stack, ["http://192.0.2.10/"])  # the route works elsewhere
    assert control == {"http://192.0.2.10/": 0}
    targets = [(a, WIDE_SERVICE) for a in (SANDBOX_HOST_V4, SANDBOX_HOST_V6, *UPLINK_OWN)]
    before = counts(own_stack, targets)
    codes = curl_each(own_stack, [url(a, p) for a, p in targets])
    assert all(code in REFUSED for code in codes.values()), codes
    expect_one_more_each(own_stack, before)


def test_socks5_to_the_gateways_address_is_refused_with_a_record(own_stack):
    """Explicit mode from the gateway's namespace, where the proxies listen.  Loopback
    is the gateway's own as a whole: a route naming 127.0.0.0/8 opens none of it."""
    targets = [(a, WIDE_SERVICE) for a in (*UPLINK_OWN, "127.0.0.2", "::1")]
    before = counts(own_stack, targets)
    for address, port in targets:
        argv = clrk("run", "--explicit", "--agent", "bot", "--state-dir", str(own_stack.state),
                    "--", *CURL, "-g", url(address, port))  # fmt: skip
        out = own_stack.topology.run_in_gw(argv, timeout=30)
        assert out.returncode != 0 and "Directory listing" not in out.stdout, out
    expect_one_more_each(own_stack, before)


def test_the_gateways_own_ports_are_refused_with_one_record_each(own_stack):
    """The dialer's own port by its own address (the REDIRECT leaves it as the original
    destination), and every other listener of the gateway by its link and uplink."""
    targets = [(a, p) for a in (SANDBOX_HOST_V4, UPLINK["gw_v4"]) for p in GATEWAY_PORTS]
    targets += [(SANDBOX_HOST_V6, 15001)]
    before = counts(own_stack, targets)
    codes = curl_each(own_stack, [url(a, p) for a, p in targets])
    assert all(code in REFUSED for code in codes.values()), codes
    expect_one_more_each(own_stack, before)


def test_udp_to_the_gateways_addresses_is_dropped_with_a_record(own_stack):
    targets = [(a, UDP_PORT) for a in (SANDBOX_HOST_V4, SANDBOX_HOST_V6, *UPLINK_OWN)]
    before = counts(own_stack, targets)
    script = "".join(f"printf x | nc -u -w1 {a} {p}\n" for a, p in targets)
    out = own_stack.run("sh", "-c", script, timeout=60)
    assert out.returncode == 0, out.stderr
    expect_one_more_each(own_stack, before)


def envoy_listeners(stack: Stack) -> str:
    out = stack.topology.run_in_gw(
        ["curl", "-sS", "http://127.0.0.1:19000/config_dump?resource=dynamic_listeners"]
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_address_added_at_run_time_is_blocked_within_seconds(own_stack):
    gw = own_stack.topology.gw
    dialer_log = own_stack.state / "logs" / "dialer.log"
    assert ADDED not in envoy_listeners(own_stack)
    before = counts(own_stack, [(ADDED, WIDE_SERVICE)])
    added = time.monotonic()
    subprocess.run(["ip", "-n", gw, "addr", "add", f"{ADDED}/32", "dev", "lo"], check=True)
    try:
        wait_until(lambda: ADDED in dialer_log.read_text(), 5, "the dialer learns it")
        in_dialer = time.monotonic() - added
        wait_until(lambda: ADDED in envoy_listeners(own_stack), 5, "Envoy's guard has it")
        in_envoy = time.monotonic() - added
        print(f"\n{ADDED} blocked in the dialer after {in_dialer:.3f}s, in Envoy {in_envoy:.3f}s")
        codes = curl_each(own_stack, [url(ADDED, WIDE_SERVICE)])
        assert all(code in REFUSED for code in codes.values()), codes
        expect_one_more_each(own_stack, before)
    finally:
        subprocess.run(["ip", "-n", gw, "addr", "del", f"{ADDED}/32", "dev", "lo"], check=True)
    wait_until(lambda: ADDED not in envoy_listeners(own_stack), 5, "Envoy's guard drops it")
