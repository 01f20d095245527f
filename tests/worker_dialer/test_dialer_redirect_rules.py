"""redirect_rules: the exact commands of a sandbox, their undo order, spec validation and
the parsers of what a host namespace already holds."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clrk_worker_dialer.redirect_rules import (
    SandboxSpec,
    SidecarSpec,
    SpecError,
    has_fwmark_rule,
    has_local_default,
    host_steps,
    peer_netns,
    policy_routing_steps,
    setup_commands,
    sidecar_steps,
    spec_for_index,
    teardown_commands,
    tproxy_chains_using,
)


def _spec(**overrides) -> SandboxSpec:
    fields = dict(
        name="clrk-a-x1",
        host_if="clrk1",
        agent_if="eth0",
        link_v4="198.18.0.4/30",
        link_v6="fd63:6c72:6b00:1::/64",
        tcp_port=15001,
        udp_port=15002,
        dns_port=15053,
        fwmark=0x1,
        route_table=100,
        host_netns="gw",
    )
    fields.update(overrides)
    return SandboxSpec(**fields)


IPT = ("ip", "netns", "exec", "gw", "iptables", "-w")
IP6T = ("ip", "netns", "exec", "gw", "ip6tables", "-w")
CHAIN = "CLRK-clrk-a-x1"


def _chain_commands(tables: tuple[str, ...]) -> list[tuple[str, ...]]:
    v6 = tables[-2] == "ip6tables"
    own = "fd63:6c72:6b00:1::2/128" if v6 else "198.18.0.6/32"
    link_local = (
        [
            (*tables, "-t", "raw", "-A", CHAIN, "-p", "ipv6-icmp", "-s", src, "-j", "RETURN")
            for src in ("fe80::/10", "::/128")
        ]
        if v6
        else []
    )
    return [
        (*tables, "-t", "raw", "-N", CHAIN),
        (*tables, "-t", "raw", "-A", CHAIN, "-s", own, "-j", "RETURN"),
        *link_local,
        (*tables, "-t", "raw", "-A", CHAIN, "-j", "NFLOG", "--nflog-group", "7011",
         "--nflog-prefix", "clrk-a-x1"),
        (*tables, "-t", "raw", "-A", CHAIN, "-j", "DROP"),
        (*tables, "-t", "raw", "-A", "PREROUTING", "-i", "clrk1", "-j", CHAIN),
        (*tables, "-t", "nat", "-N", CHAIN),
        (*tables, "-t", "nat", "-A", CHAIN, "-p", "tcp", "--dport", "53", "-j", "REDIRECT",
         "--to-ports", "15053"),
        (*tables, "-t", "nat", "-A", CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"),
        (*tables, "-t", "nat", "-A", "PREROUTING", "-i", "clrk1", "-j", CHAIN),
        (*tables, "-t", "mangle", "-N", CHAIN),
        (*tables, "-t", "mangle", "-A", CHAIN, "-p", "udp", "--dport", "53", "-j", "TPROXY",
         "--on-port", "15053", "--tproxy-mark", "0x1/0x1"),
        (*tables, "-t", "mangle", "-A", CHAIN, "-p", "udp", "-j", "TPROXY", "--on-port", "15002",
         "--tproxy-mark", "0x1/0x1"),
        (*tables, "-t", "mangle", "-A", "PREROUTING", "-i", "clrk1", "-j", CHAIN),
    ]  # fmt: skip


EXPECTED_SETUP = [
    ("ip", "netns", "add", "clrk-a-x1"),
    ("ip", "-n", "gw", "link", "add", "clrk1", "type", "veth", "peer", "name", "eth0", "netns",
     "clrk-a-x1"),
    ("ip", "-n", "gw", "addr", "add", "198.18.0.5/30", "dev", "clrk1"),
    ("ip", "-n", "gw", "-6", "addr", "add", "fd63:6c72:6b00:1::1/64", "dev", "clrk1", "nodad"),
    *_chain_commands(IPT),
    *_chain_commands(IP6T),
    ("ip", "-n", "gw", "link", "set", "clrk1", "up"),
    ("ip", "-n", "clrk-a-x1", "link", "set", "lo", "up"),
    ("ip", "-n", "clrk-a-x1", "addr", "add", "198.18.0.6/30", "dev", "eth0"),
    ("ip", "-n", "clrk-a-x1", "-6", "addr", "add", "fd63:6c72:6b00:1::2/64", "dev", "eth0",
     "nodad"),
    ("ip", "-n", "clrk-a-x1", "link", "set", "eth0", "up"),
    ("ip", "-n", "clrk-a-x1", "route", "add", "default", "via", "198.18.0.5", "dev", "eth0"),
    ("ip", "-n", "clrk-a-x1", "-6", "route", "add", "default", "via", "fd63:6c72:6b00:1::1",
     "dev", "eth0"),
    ("ip", "-n", "gw", "-4", "rule", "add", "fwmark", "0x1/0x1", "lookup", "100"),
    ("ip", "-n", "gw", "-4", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"),
    ("ip", "-n", "gw", "-6", "rule", "add", "fwmark", "0x1/0x1", "lookup", "100"),
    ("ip", "-n", "gw", "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100"),
]  # fmt: skip


def test_setup_commands_are_exact():
    assert setup_commands(_spec()) == EXPECTED_SETUP


def test_teardown_undoes_in_reverse_order():
    steps = host_steps(_spec())
    assert teardown_commands(steps) == [
        (*IP6T, "-t", "mangle", "-D", "PREROUTING", "-i", "clrk1", "-j", CHAIN),
        (*IP6T, "-t", "mangle", "-F", CHAIN),
        (*IP6T, "-t", "mangle", "-X", CHAIN),
        (*IP6T, "-t", "nat", "-D", "PREROUTING", "-i", "clrk1", "-j", CHAIN),
        (*IP6T, "-t", "nat", "-F", CHAIN),
        (*IP6T, "-t", "nat", "-X", CHAIN),
        (*IP6T, "-t", "raw", "-D", "PREROUTING", "-i", "clrk1", "-j", CHAIN),
        (*IP6T, "-t", "raw", "-F", CHAIN),
        (*IP6T, "-t", "raw", "-X", CHAIN),
        (*IPT, "-t", "mangle", "-D", "PREROUTING", "-i", "clrk1", "-j", CHAIN),
        (*IPT, "-t", "mangle", "-F", CHAIN),
        (*IPT, "-t", "mangle", "-X", CHAIN),
        (*IPT, "-t", "nat", "-D", "PREROUTING", "-i", "clrk1", "-j", CHAIN),
        (*IPT, "-t", "nat", "-F", CHAIN),
        (*IPT, "-t", "nat", "-X", CHAIN),
        (*IPT, "-t", "raw", "-D", "PREROUTING", "-i", "clrk1", "-j", CHAIN),
        (*IPT, "-t", "raw", "-F", CHAIN),
        (*IPT, "-t", "raw", "-X", CHAIN),
        ("ip", "-n", "gw", "link", "del", "clrk1"),
        ("ip", "netns", "del", "clrk-a-x1"),
    ]


def test_teardown_of_a_partial_setup_undoes_only_what_was_done():
    steps = host_steps(_spec())[:2]
    assert teardown_commands(steps) == [
        ("ip", "-n", "gw", "link", "del", "clrk1"),
        ("ip", "netns", "del", "clrk-a-x1"),
    ]


def test_every_created_object_has_an_undo_that_names_it():
    for step in host_steps(_spec()):
        if step.setup[-2:] == ("-N", CHAIN) or step.what in ("namespace", "veth pair"):
            assert step.undo
        if "PREROUTING" in step.setup:
            assert step.undo and step.undo[0][-6:] == ("-D", *step.setup[-5:])


def test_interception_comes_before_links_come_up():
    setup = setup_commands(_spec())
    first_up = min(i for i, argv in enumerate(setup) if argv[-1] == "up")
    last_jump = max(i for i, argv in enumerate(setup) if "PREROUTING" in argv)
    assert last_jump < first_up


def test_current_namespace_has_no_prefix():
    setup = setup_commands(_spec(host_netns=None))
    assert ("iptables", "-w", "-t", "nat", "-N", CHAIN) in setup
    assert ("ip", "link", "set", "clrk1", "up") in setup
    assert ("ip", "-4", "rule", "add", "fwmark", "0x1/0x1", "lookup", "100") in setup


def test_policy_routing_uses_mark_and_table():
    steps = policy_routing_steps(0x40, 7, None)
    assert steps[0].setup == ("ip", "-4", "rule", "add", "fwmark", "0x40/0x40",
                                           "lookup", "7")  # fmt: skip
    assert steps[1].undo == (("ip", "-4", "route", "del", "local", "0.0.0.0/0", "dev", "lo",
                              "table", "7"),)  # fmt: skip


def test_addresses():
    spec = _spec()
    assert (spec.host_v4, spec.agent_v4) == ("198.18.0.5", "198.18.0.6")
    assert (spec.host_v6, spec.agent_v6) == ("fd63:6c72:6b00:1::1", "fd63:6c72:6b00:1::2")


@pytest.mark.parametrize(
    "overrides",
    [
        {"host_if": "a" * 16},
        {"agent_if": "b" * 16},
        {"host_if": "bad name"},
        {"name": "x" * 30},  # chain CLRK-<name> would exceed 28 bytes
        {"name": "-leading-dash"},
        {"host_netns": "clrk-a-x1"},
        {"link_v4": "10.0.0.0/30"},
        {"link_v4": "198.18.0.0/29"},
        {"link_v6": "2001:db8:1::/64"},
        {"link_v6": "fd63:6c72:6b00::/48"},
        {"link_v6": "2001:db8:ffff:1::/64"},  # the documentation range links used before
        {"spoof_log_group": 0},
        {"spoof_log_group": 65536},
        {"link_v6": "198.18.0.4/30"},
        {"tcp_port": 0},
        {"udp_port": 65536},
        {"fwmark": 0},
        {"route_table": 254},
    ],
)
def test_invalid_specs_are_refused(overrides):
    with pytest.raises(SpecError):
        _spec(**overrides)


def test_fifteen_byte_interface_names_are_fine():
    assert _spec(host_if="h" * 15, agent_if="a" * 15).host_if == "h" * 15


@given(st.integers(min_value=0, max_value=16383))
def test_spec_for_index_gives_disjoint_valid_links(index):
    spec = spec_for_index(index, f"clrk-a-{index}", tcp_port=1, udp_port=2, dns_port=3)
    assert spec.link_v4 == f"198.18.{(4 * index) // 256}.{(4 * index) % 256}/30"
    assert ipaddress.ip_network(spec.link_v6) == ipaddress.ip_network(
        f"fd63:6c72:6b00:{index:x}::/64"
    )
    assert len(spec.host_if) <= 15


def test_spec_for_index_bounds():
    with pytest.raises(SpecError):
        spec_for_index(16384, "x", tcp_port=1, udp_port=2, dns_port=3)


RULES = """\
0:	from all lookup local
32765:	from all fwmark 0x1/0x1 lookup 100
32766:	from all lookup main
"""


def test_has_fwmark_rule():
    assert has_fwmark_rule(RULES, 1, 100)
    assert not has_fwmark_rule(RULES, 2, 100)
    assert not has_fwmark_rule(RULES, 1, 101)
    assert not has_fwmark_rule("", 1, 100)
    assert has_fwmark_rule("5: from all fwmark 0x10 lookup 7", 16, 7)


def test_has_local_default():
    assert has_local_default("local default dev lo scope host \n")
    assert has_local_default("local default dev lo metric 1024 pref medium\n")
    assert not has_local_default("default via 198.18.0.1 dev eth0\n")
    assert not has_local_default("")


MANGLE = """\
-P PREROUTING ACCEPT
-N CLRK-a
-N CLRK-b
-A PREROUTING -i clrk1 -j CLRK-a
-A CLRK-a -p udp -j TPROXY --on-port 15002 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1
-A CLRK-b -p udp -j TPROXY --on-port 15002 --on-ip 0.0.0.0 --tproxy-mark 0x2/0x2
"""


def test_tproxy_chains_using():
    assert tproxy_chains_using(MANGLE, 1) == {"CLRK-a"}
    assert tproxy_chains_using(MANGLE, 2) == {"CLRK-b"}
    assert tproxy_chains_using(MANGLE, 4) == set()
    assert tproxy_chains_using("garbage\n-A\n", 1) == set()


# `ip -o link show dev X` as iproute2 6.1 prints it (`-o` joins the lines with "\\").
_LINK_HEAD = (
    "2: clrk7@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN mode DEFAULT "
    "group default qlen 1000\\    link/ether ea:7e:6e:b5:7c:11 brd ff:ff:ff:ff:ff:ff"
)


@pytest.mark.parametrize(
    ("output", "peer"),
    [
        (_LINK_HEAD + " link-netns clrk-r-p41-7\n", "clrk-r-p41-7"),  # peer in a named netns
        (_LINK_HEAD.replace("\\", "\n") + " link-netns clrk-r-p41-7\n", "clrk-r-p41-7"),  # no -o
        (_LINK_HEAD + " link-netnsid 1\n", None),  # peer in a namespace without a name
        (_LINK_HEAD.replace("@if2", "@eth0") + "\n", None),  # peer in the same namespace
        ("", None),  # no such link
        ("... brd ff:ff:ff:ff:ff:ff link-netns", None),  # cut short
    ],
)
def test_peer_netns(output, peer):
    assert peer_netns(output) == peer


# --- sidecar ---------------------------------------------------------------------------------


def test_sidecar_exempts_the_dialer_and_loopback_before_intercepting():
    spec = SidecarSpec(tcp_port=15001, udp_port=15002, dns_port=15053, exclude_uids=(1337,),
                       exclude_mark=0x100)  # fmt: skip
    setup = [s.setup for s in sidecar_steps(spec)]
    nat = [argv[4:] for argv in setup if argv[:5] == ("iptables", "-w", "-t", "nat", "-A")]
    assert nat == [
        ("-A", "CLRK-SIDECAR", "-o", "lo", "-j", "RETURN"),
        ("-A", "CLRK-SIDECAR", "-d", "127.0.0.0/8", "-j", "RETURN"),
        ("-A", "CLRK-SIDECAR", "-m", "owner", "--uid-owner", "1337", "-j", "RETURN"),
        ("-A", "CLRK-SIDECAR", "-m", "mark", "--mark", "0x100/0x100", "-j", "RETURN"),
        ("-A", "CLRK-SIDECAR", "-p", "tcp", "--dport", "53", "-j", "REDIRECT", "--to-ports",
         "15053"),
        ("-A", "CLRK-SIDECAR", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"),
        ("-A", "OUTPUT", "-j", "CLRK-SIDECAR"),
    ]  # fmt: skip
    mangle6 = [argv[4:] for argv in setup if argv[:5] == ("ip6tables", "-w", "-t", "mangle", "-A")]
    assert mangle6 == [
        ("-A", "CLRK-SIDECAR", "-o", "lo", "-j", "RETURN"),
        ("-A", "CLRK-SIDECAR", "-d", "::1/128", "-j", "RETURN"),
        ("-A", "CLRK-SIDECAR", "-m", "owner", "--uid-owner", "1337", "-j", "RETURN"),
        ("-A", "CLRK-SIDECAR", "-m", "mark", "--mark", "0x100/0x100", "-j", "RETURN"),
        ("-A", "CLRK-SIDECAR", "-p", "udp", "-j", "MARK", "--set-xmark", "0x1/0x1"),
        ("-A", "OUTPUT", "-j", "CLRK-SIDECAR"),
        ("-A", "CLRK-SIDECAR-IN", "-p", "udp", "--dport", "53", "-j", "TPROXY", "--on-port",
         "15053", "--tproxy-mark", "0x1/0x1"),
        ("-A", "CLRK-SIDECAR-IN", "-p", "udp", "-j", "TPROXY", "--on-port", "15002",
         "--tproxy-mark", "0x1/0x1"),
        ("-A", "PREROUTING", "-i", "lo", "-p", "udp", "-m", "mark", "--mark", "0x1/0x1", "-j",
         "CLRK-SIDECAR-IN"),
    ]  # fmt: skip
    assert setup[-4:] == [s.setup for s in policy_routing_steps(0x1, 100)]


def test_sidecar_teardown_reverses_and_removes_every_chain():
    spec = SidecarSpec(tcp_port=1, udp_port=2, dns_port=3, exclude_uids=(0,))
    steps = sidecar_steps(spec)
    undo = teardown_commands(steps)
    assert undo[0] == ("ip", "-6", "route", "del", "local", "::/0", "dev", "lo", "table", "100")
    created = {(a[0], a[3], a[5]) for a in (s.setup for s in steps) if "-N" in a}
    removed = {(a[0], a[3], a[5]) for a in undo if "-X" in a}
    assert created == removed and len(created) == 8


def test_the_sidecar_rejects_what_non_exempt_senders_would_send_off_loopback():
    spec = SidecarSpec(tcp_port=1, udp_port=2, dns_port=3, exclude_uids=(1337,))
    setup = [s.setup for s in sidecar_steps(spec)]
    for binary, loopback in (("iptables", "127.0.0.0/8"), ("ip6tables", "::1/128")):
        lock = [argv[4:] for argv in setup if argv[:5] == (binary, "-w", "-t", "filter", "-A")]
        assert lock == [
            ("-A", "CLRK-SIDECAR", "-m", "owner", "--uid-owner", "1337", "-j", "RETURN"),
            ("-A", "CLRK-SIDECAR", "-d", loopback, "-j", "RETURN"),
            ("-A", "CLRK-SIDECAR", "-o", "lo", "-j", "RETURN"),
            ("-A", "CLRK-SIDECAR", "-m", "mark", "--mark", "0x1/0x1", "-j", "RETURN"),
            ("-A", "CLRK-SIDECAR", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j",
             "RETURN"),
            ("-A", "CLRK-SIDECAR", "-j", "REJECT"),
            ("-A", "OUTPUT", "-j", "CLRK-SIDECAR"),
        ]  # fmt: skip


def test_a_sidecar_without_ipv6_keeps_only_the_ipv6_lock():
    spec = SidecarSpec(tcp_port=1, udp_port=2, dns_port=3, exclude_uids=(1,), ipv6=False)
    setup = [s.setup for s in sidecar_steps(spec)]
    assert {a[3] for a in setup if a[0] == "ip6tables"} == {"filter"}
    assert not [a for a in setup if a[:2] == ("ip", "-6")]
    assert setup[-2:] == [s.setup for s in policy_routing_steps(0x1, 100)[:2]]


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # no exclusion at all: the dialer would intercept itself
        {"exclude_uids": (-1,)},
        {"exclude_mark": 0x1},  # shares bits with fwmark
        {"exclude_uids": (1,), "chain": "C" * 26},  # the -IN chain would be too long
        {"exclude_uids": (1,), "tcp_port": 70000},
    ],
)
def test_invalid_sidecar_specs_are_refused(overrides):
    with pytest.raises(SpecError):
        SidecarSpec(**{"tcp_port": 1, "udp_port": 2, "dns_port": 3, **overrides})
