"""`clrk sidecar`: installing the interception (all or nothing), the dialer it execs,
and, as root in a real namespace, what the rules do to other users' traffic."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator

import click
import pytest

from clrk_worker_dialer import sidecar
from clrk_worker_dialer.redirect_rules import SidecarSpec, sidecar_steps
from clrk_worker_dialer.sandbox import run_command
from tests.netns_helpers import python_for_anyone, scratch_netns

RUN = f"p{os.getpid()}"
GATEWAY_UID = 10101
NOBODY = 65534


class FakeRunner:
    """Records commands; fails the ones whose words contain `fail`."""

    def __init__(self, fail: str | None = None, chain_exists: bool = False) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail
        self.chain_exists = chain_exists

    def __call__(self, argv):
        argv = tuple(argv)
        self.calls.append(argv)
        code = 0
        if argv[3:5] == ("nat", "-S"):
            code = 0 if self.chain_exists else 1
        elif self.fail and self.fail in argv:
            code = 1
        stdout = ""
        if argv[:3] == ("ip", "-j", "addr"):
            stdout = json.dumps(IP_ADDR)
        elif argv[:4] == ("ip", "-j", "rule", "show"):
            rule = {"priority": 32765, "src": "all", "fwmark": "0x1", "table": "100"}
            stdout = json.dumps([rule] if self.chain_exists else [])
        elif argv[:4] == ("ip", "-j", "-4", "route"):
            stdout = json.dumps([{"dst": "default", "gateway": "172.17.0.1", "dev": "eth0"}])
        return subprocess.CompletedProcess(argv, code, stdout, "boom" if code else "")


IP_ADDR = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "scope": "host"},
                                   {"family": "inet6", "local": "::1", "scope": "host"}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "172.17.0.2", "scope": "global"},
                                     {"family": "inet6", "local": "fe80::1", "scope": "link"},
                                     {"family": "inet6", "local": "2001:db8::2",
                                      "scope": "global"}]},
]  # fmt: skip
SPEC = SidecarSpec(tcp_port=15001, udp_port=15002, dns_port=15053, exclude_uids=(GATEWAY_UID,))


def test_install_carries_out_every_step_in_order():
    runner = FakeRunner()
    sidecar.install(SPEC, runner)
    assert runner.calls[1:] == [s.setup for s in sidecar_steps(SPEC)]


def test_a_failing_step_removes_what_was_installed_and_names_the_step():
    runner = FakeRunner(fail="PREROUTING")
    with pytest.raises(sidecar.SidecarError, match="ipv4 mangle PREROUTING jump: `iptables"):
        sidecar.install(SPEC, runner)
    failed = runner.calls.index(next(c for c in runner.calls if "PREROUTING" in c))
    undone = runner.calls[failed + 1 :]
    created = [c for c in runner.calls[:failed] if "-N" in c]
    assert {c[:4] + c[5:] for c in undone if "-X" in c} == {c[:4] + c[5:] for c in created}


def test_rules_an_earlier_start_left_are_removed_before_installing_again():
    runner = FakeRunner(chain_exists=True)
    sidecar.install(SPEC, runner)
    first_setup = sidecar_steps(SPEC)[0].setup
    before = runner.calls[: runner.calls.index(first_setup)]
    assert ("iptables", "-w", "-t", "nat", "-X", "CLRK-SIDECAR") in before


def test_own_addresses_are_the_global_ones():
    assert sidecar.own_addresses(json.dumps(IP_ADDR)) == ["172.17.0.2", "2001:db8::2"]


def test_the_default_gateways_are_the_next_hops_of_default_routes():
    routes = [{"dst": "default", "gateway": "fd00::1", "dev": "eth0"}, {"dst": "default",
              "dev": "wg0"}]  # fmt: skip
    assert sidecar.gateways(json.dumps(routes)) == ["fd00::1"]


@pytest.mark.parametrize("text, user", [("10101", (10101, 10101)), ("10101:20", (10101, 20))])
def test_users_are_numbers(text, user):
    assert sidecar.parse_user(text) == user


@pytest.mark.parametrize("text", ["clrk", "1:x", ""])
def test_a_user_that_is_not_numbers_is_refused(text):
    with pytest.raises(ValueError, match="UID or UID:GID"):
        sidecar.parse_user(text)


def test_the_dialer_runs_as_the_user_with_only_net_raw_on_the_intercepted_ports():
    argv = sidecar.dialer_argv((10101, 10101), SPEC, ["172.17.0.2"], ["--gateway", "ns/gw"], "py")
    assert argv[:7] == [
        "setpriv", "--reuid=10101", "--regid=10101", "--clear-groups",
        "--inh-caps=-all,+net_raw", "--ambient-caps=-all,+net_raw", "--",
    ]  # fmt: skip
    dialer = argv[7:]
    assert dialer[:4] == ["py", "-m", "clrk_worker_dialer", "--watch-own-addresses"]
    pairs = list(zip(dialer[4:-2:2], dialer[5:-2:2], strict=True))
    assert pairs == [
        ("--transparent-tcp", "0.0.0.0:15001"), ("--transparent-tcp", "[::]:15001"),
        ("--transparent-udp", "0.0.0.0:15002"), ("--transparent-udp", "[::]:15002"),
        ("--dns", "0.0.0.0:15053"), ("--dns", "[::]:15053"),
        ("--own-address", "172.17.0.2"),
    ]  # fmt: skip
    assert dialer[-2:] == ["--gateway", "ns/gw"]


def test_without_ipv6_the_dialer_listens_on_ipv4_only():
    spec = SidecarSpec(tcp_port=1, udp_port=2, dns_port=3, exclude_uids=(1,), ipv6=False)
    argv = sidecar.dialer_argv((1, 1), spec, [], [], "py")
    assert not [a for a in argv if a.startswith("[::]")]


def test_main_installs_then_execs_the_dialer(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    runner, execs = FakeRunner(), []
    sidecar.main("10101", 15001, 15002, 15053, ["--gateway", "ns/gw"], runner,
                 lambda f, a: execs.append((f, a)))  # fmt: skip
    ((file, argv),) = execs
    assert file == "setpriv" and argv[-2:] == ["--gateway", "ns/gw"]
    own = [argv[i + 1] for i, a in enumerate(argv) if a == "--own-address"]
    assert set(own) >= {"172.17.0.2", "172.17.0.1"}  # its address, the Docker host


@pytest.mark.parametrize(
    "user, euid, message",
    [("0", 0, "must not run as root"), ("10101", 1000, "needs root"), ("x", 0, "UID")],
)
def test_main_refuses_to_start_unsafely(monkeypatch, user, euid, message):
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    runner, execs = FakeRunner(), []
    with pytest.raises(click.ClickException, match=message):
        sidecar.main(user, 1, 2, 3, [], runner, lambda f, a: execs.append(a))
    assert not execs and not runner.calls


def test_a_pods_init_container_only_installs_and_its_sidecar_only_runs_the_dialer(
    monkeypatch,
):
    """In a pod only the init container has CAP_NET_ADMIN: --install-only there, then
    --no-install in the dialer's container, which refuses to run without the rules."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    runner, execs = FakeRunner(), []
    sidecar.main("10101", 15001, 15002, 15053, [], runner, execs.append, step="install")
    assert not execs and [c for c in runner.calls if "REJECT" in c]
    runner = FakeRunner()
    with pytest.raises(click.ClickException, match="not installed"):
        sidecar.main("10101", 15001, 15002, 15053, [], runner, execs.append, step="run")
    assert not execs
    runner = FakeRunner(chain_exists=True)
    sidecar.main("10101", 15001, 15002, 15053, ["--gateway", "ns/gw"], runner,
                 lambda f, a: execs.append(a), step="run")  # fmt: skip
    assert execs and not [c for c in runner.calls if c[0] == "iptables"]


def test_a_failed_install_execs_nothing(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    execs = []
    with pytest.raises(click.ClickException, match="cannot intercept this namespace"):
        sidecar.main("10101", 1, 2, 3, [], FakeRunner(fail="REJECT"), execs.append)
    assert not execs


# --- the rules in a real namespace ---------------------------------------------------------

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, iptables")

LISTENER = textwrap.dedent("""
    import socket, struct, sys
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 15001)); srv.listen(); print("ready", flush=True)
    conn, _ = srv.accept()
    raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
    port, addr = struct.unpack_from("!2xH4s", raw)
    print(socket.inet_ntoa(addr), port, flush=True)
""")
SEND_UDP = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', {!r})"
PING = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n"
    "try: s.sendto(bytes([8, 0, 247, 255, 0, 0, 0, 0]), ('198.51.100.7', 0))\n"
    "except OSError as e: print('refused', e.errno)\n"
)


@pytest.fixture
def pod() -> Iterator[str]:
    """A namespace whose route out is a veth into another one; the veth's transmit
    counter is what left.  No ARP, no IPv6 autoconfiguration: nothing else is sent."""
    with scratch_netns(f"clrk-sct-{RUN}") as ns, scratch_netns(f"clrk-sct-{RUN}-far") as far:
        for argv in (
            ("link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", far),
            ("link", "set", "v0", "addrgenmode", "none"),
            ("addr", "add", "192.0.2.2/24", "dev", "v0"),
            ("link", "set", "v0", "up"),
            ("route", "add", "default", "via", "192.0.2.1", "dev", "v0"),
            ("neigh", "add", "192.0.2.1", "lladdr", "02:00:00:00:00:01", "dev", "v0",
             "nud", "permanent"),
        ):  # fmt: skip
            subprocess.run(["ip", "-n", ns, *argv], check=True)
        subprocess.run(["ip", "-n", far, "link", "set", "v1", "up"], check=True)  # carrier
        # What a container runtime allows: ICMP echo sockets for every user.
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        "net.ipv4.ping_group_range=0 2147483647"], check=True)  # fmt: skip
        yield ns


def _in(ns: str):
    return lambda argv: run_command(("ip", "netns", "exec", ns, *argv))


def _as(ns: str, uid: int, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "setpriv", f"--reuid={uid}", f"--regid={uid}",
         "--clear-groups", "--", *argv],
        capture_output=True, text=True, timeout=20, **kwargs,
    )  # fmt: skip


def _sent(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "v0"], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out)[0]["stats64"]["tx"]["packets"]


@root
def test_in_a_real_namespace_only_the_gateway_user_sends_past_the_interception(pod):
    sidecar.install(SPEC, _in(pod))
    python = python_for_anyone()
    with subprocess.Popen(
        ["ip", "netns", "exec", pod, python, "-c", LISTENER], stdout=subprocess.PIPE, text=True
    ) as listener:
        try:
            assert listener.stdout.readline().strip() == "ready"
            before = _sent(pod)
            # Another user's TCP reaches the dialer's port, its destination intact...
            _as(pod, NOBODY, "curl", "-s", "--max-time", "2", "http://198.51.100.7:8080/")
            assert listener.stdout.readline().split() == ["198.51.100.7", "8080"]
            # ...its UDP is diverted (nothing listens: dropped), its ICMP refused.
            _as(pod, NOBODY, python, "-c", SEND_UDP.format(("198.51.100.7", 9)))
            assert _as(pod, NOBODY, python, "-c", PING).stdout.startswith("refused")
            assert _sent(pod) == before  # nothing of theirs left the namespace
            _as(pod, GATEWAY_UID, python, "-c", SEND_UDP.format(("198.51.100.7", 9)))
            assert _sent(pod) == before + 1  # the dialer's own traffic does
        finally:
            listener.kill()


@root
def test_installing_twice_leaves_one_set_of_rules(pod):
    sidecar.install(SPEC, _in(pod))
    sidecar.install(SPEC, _in(pod))
    for table in ("nat", "mangle", "filter"):
        out = _in(pod)(("iptables", "-w", "-t", table, "-S", "OUTPUT")).stdout
        assert out.count("-j CLRK-SIDECAR") == 1, out


@root
def test_an_install_that_fails_half_way_leaves_no_rule(pod):
    def broken(argv):  # the kernel knows no such target: the TCP redirect fails
        return _in(pod)(tuple("NO-SUCH-TARGET" if a == "REDIRECT" else a for a in argv))

    with pytest.raises(sidecar.SidecarError, match="ipv4 nat rule"):
        sidecar.install(SPEC, broken)
    for binary in ("iptables", "ip6tables"):
        for table in ("nat", "mangle", "filter"):
            out = _in(pod)((binary, "-w", "-t", table, "-S")).stdout
            assert "CLRK" not in out, (binary, table, out)
    assert "fwmark" not in _in(pod)(("ip", "rule", "show")).stdout
