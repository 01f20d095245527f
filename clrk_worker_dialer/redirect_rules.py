"""The commands that put an agent sandbox behind the dialer (SPEC 5.1), as plain argv lists.

Transparent mode: the agent lives in its own network namespace joined to the host
namespace (where the dialer runs) by a veth pair.  Everything the agent sends arrives on
the host side of that pair, and PREROUTING rules hand it to the dialer:

- Only the sandbox's own addresses may send (raw): a packet with any other source is
  logged over NFLOG (the dialer records it as `unknown_agent`) and dropped, so one agent
  cannot speak as another even with an address it should never have been able to add.
- TCP is REDIRECTed (nat): the dialer reads the original destination with
  `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`.  TCP/53 goes to the DNS port.
- UDP is TPROXYed (mangle): the datagram keeps its destination, so the dialer's
  `IP_TRANSPARENT` socket learns it from `IP_RECVORIGDSTADDR`.  UDP/53 goes to the DNS
  port.  TPROXY only marks the packet; a policy route (fwmark -> `local` table) makes
  the kernel deliver it locally instead of forwarding it.  That route is shared by all
  sandboxes of one host namespace.

IP forwarding stays off: redirected packets are delivered locally, anything else the
agent sends is dropped by the host namespace.

Each Step pairs the command that creates something with the commands that remove it,
so a shell can undo exactly what it did, in reverse order.  Steps whose effect vanishes
with something else (an address with its link, a rule with its chain) undo nothing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

Argv = tuple[str, ...]

IFNAMSIZ = 15  # usable bytes of a Linux interface name
CHAIN_NAME_MAX = 28  # xtables chain names: 29 bytes including the NUL
IPV4_LINKS = ipaddress.ip_network("198.18.0.0/15")
# A unique local (ULA, RFC 4193) /48 of its own, global ID "clrk" (63 6c 72 6b 00): no
# operator allows it by accident, unlike the documentation range the links used before.
IPV6_LINKS = ipaddress.ip_network("fd63:6c72:6b00::/48")
# The NFLOG group of the anti-spoofing rules; the dialer of the host namespace listens.
DEFAULT_SPOOF_LOG_GROUP = 7011
CHAIN_PREFIX = "CLRK-"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SpecError(ValueError):
    """A sandbox spec that would produce wrong or unsafe commands."""


@dataclass(frozen=True)
class Step:
    """One setup command and the commands that undo it (empty: nothing to undo)."""

    what: str
    setup: Argv
    undo: tuple[Argv, ...] = ()


def _check_name(kind: str, value: str, limit: int | None = None) -> None:
    if not _NAME.match(value):
        raise SpecError(f"{kind} {value!r} must be letters, digits, '-', '_' or '.'")
    if limit is not None and len(value.encode()) > limit:
        raise SpecError(f"{kind} {value!r} is longer than {limit} bytes")


def _check_port(kind: str, port: int) -> None:
    if not 0 < port < 65536:
        raise SpecError(f"{kind} {port} is not a port")


def _check_mark(kind: str, mark: int) -> None:
    if not 0 < mark < 2**32:
        raise SpecError(f"{kind} {mark} must be a non-zero 32-bit value")


@dataclass(frozen=True)
class SandboxSpec:
    """One agent sandbox: its namespace, veth pair, link addresses and the dialer's ports.

    link_v4 is a /30 inside 198.18.0.0/15 (host side .1, agent side .2); link_v6 a /64 or
    smaller inside fd63:6c72:6b00::/48 (host ::1, agent ::2).  Packets from the sandbox
    link with any other source are dropped and logged to NFLOG group `spoof_log_group`
    (prefix: the sandbox name), where the dialer records them as `unknown_agent`.
    """

    name: str
    host_if: str
    agent_if: str
    link_v4: str
    link_v6: str
    tcp_port: int
    udp_port: int
    dns_port: int
    fwmark: int = 0x1
    route_table: int = 100
    host_netns: str | None = None
    spoof_log_group: int = DEFAULT_SPOOF_LOG_GROUP

    def __post_init__(self) -> None:
        _check_name("namespace name", self.name)
        if self.host_netns is not None:
            _check_name("host namespace name", self.host_netns)
            if self.host_netns == self.name:
                raise SpecError("the sandbox cannot be its own host namespace")
        _check_name("host interface", self.host_if, IFNAMSIZ)
        _check_name("agent interface", self.agent_if, IFNAMSIZ)
        _check_name("chain name", self.chain, CHAIN_NAME_MAX)
        for kind, port in (("tcp_port", self.tcp_port), ("udp_port", self.udp_port)):
            _check_port(kind, port)
        _check_port("dns_port", self.dns_port)
        _check_mark("fwmark", self.fwmark)
        if not 0 < self.spoof_log_group < 65536:
            raise SpecError(f"spoof_log_group {self.spoof_log_group} is not an NFLOG group")
        if not 0 < self.route_table < 2**32 or self.route_table in (253, 254, 255):
            raise SpecError(f"route_table {self.route_table} is reserved or out of range")
        v4 = ipaddress.ip_network(self.link_v4)
        v6 = ipaddress.ip_network(self.link_v6)
        if v4.version != 4 or v4.prefixlen != 30 or not v4.subnet_of(IPV4_LINKS):
            raise SpecError(f"link_v4 {self.link_v4} must be a /30 inside {IPV4_LINKS}")
        if v6.version != 6 or v6.prefixlen < 64 or v6.prefixlen > 126:
            raise SpecError(f"link_v6 {self.link_v6} must be a /64../126")
        if not v6.subnet_of(IPV6_LINKS):
            raise SpecError(f"link_v6 {self.link_v6} must be inside {IPV6_LINKS}")

    @property
    def chain(self) -> str:
        return CHAIN_PREFIX + self.name

    def _v4(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.link_v4)

    def _v6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(self.link_v6)

    @property
    def host_v4(self) -> str:
        return str(self._v4().network_address + 1)

    @property
    def agent_v4(self) -> str:
        return str(self._v4().network_address + 2)

    @property
    def host_v6(self) -> str:
        return str(self._v6().network_address + 1)

    @property
    def agent_v6(self) -> str:
        return str(self._v6().network_address + 2)


def spec_for_index(
    index: int,
    name: str,
    *,
    tcp_port: int,
    udp_port: int,
    dns_port: int,
    host_netns: str | None = None,
    host_if: str | None = None,
    agent_if: str = "eth0",
    fwmark: int = 0x1,
    route_table: int = 100,
    spoof_log_group: int = DEFAULT_SPOOF_LOG_GROUP,
) -> SandboxSpec:
    """The index-th sandbox of a host namespace: its own /30 and /64, veth `clrk<index>`.

    Indexes stay below 16384 so the links never reach 198.19.0.0/16, which the test
    topology uses for the host namespace's own uplink.
    """
    if not 0 <= index < 16384:
        raise SpecError(f"sandbox index {index} out of range 0..16383")
    link_v4 = ipaddress.IPv4Network((int(IPV4_LINKS.network_address) + 4 * index, 30))
    link_v6 = ipaddress.IPv6Network((int(IPV6_LINKS.network_address) + (index << 64), 64))
    return SandboxSpec(
        name=name,
        host_if=host_if or f"clrk{index}",
        agent_if=agent_if,
        link_v4=str(link_v4),
        link_v6=str(link_v6),
        tcp_port=tcp_port,
        udp_port=udp_port,
        dns_port=dns_port,
        fwmark=fwmark,
        route_table=route_table,
        host_netns=host_netns,
        spoof_log_group=spoof_log_group,
    )


# --- command builders ---------------------------------------------------------------------


def _in_netns(netns: str | None, argv: Argv) -> Argv:
    return argv if netns is None else ("ip", "netns", "exec", netns, *argv)


def _ip(netns: str | None, *args: str) -> Argv:
    # `ip -n` switches namespace itself: cheaper than `ip netns exec` and equivalent.
    return ("ip", *(("-n", netns) if netns is not None else ()), *args)


def _mark(mark: int) -> str:
    return f"{mark:#x}/{mark:#x}"


def _tables(netns: str | None, family: int, *args: str) -> Argv:
    binary = "iptables" if family == 4 else "ip6tables"
    return _in_netns(netns, (binary, "-w", *args))


def host_steps(spec: SandboxSpec) -> list[Step]:
    """Create the sandbox namespace, the veth pair, addresses, routes and the per-sandbox
    interception chains.  Interception is in place before either link comes up."""
    h, a = spec.host_netns, spec.name
    v6len = str(spec._v6().prefixlen)
    steps = [
        # Namespace names live in a filesystem shared by all network namespaces.
        Step("namespace", ("ip", "netns", "add", a), (("ip", "netns", "del", a),)),
        Step(
            "veth pair",
            _ip(
                h,
                "link",
                "add",
                spec.host_if,
                "type",
                "veth",
                "peer",
                "name",
                spec.agent_if,
                "netns",
                a,
            ),
            (_ip(h, "link", "del", spec.host_if),),
        ),
        Step("host ipv4 address", _ip(h, "addr", "add", f"{spec.host_v4}/30", "dev", spec.host_if)),
        Step(
            "host ipv6 address",
            _ip(h, "-6", "addr", "add", f"{spec.host_v6}/{v6len}", "dev", spec.host_if, "nodad"),
        ),
    ]
    steps += interception_steps(spec)
    steps += [
        Step("host link up", _ip(h, "link", "set", spec.host_if, "up")),
        Step("agent loopback up", _ip(a, "link", "set", "lo", "up")),
        Step(
            "agent ipv4 address", _ip(a, "addr", "add", f"{spec.agent_v4}/30", "dev", spec.agent_if)
        ),
        Step(
            "agent ipv6 address",
            _ip(a, "-6", "addr", "add", f"{spec.agent_v6}/{v6len}", "dev", spec.agent_if, "nodad"),
        ),
        Step("agent link up", _ip(a, "link", "set", spec.agent_if, "up")),
        Step(
            "agent ipv4 default route",
            _ip(a, "route", "add", "default", "via", spec.host_v4, "dev", spec.agent_if),
        ),
        Step(
            "agent ipv6 default route",
            _ip(a, "-6", "route", "add", "default", "via", spec.host_v6, "dev", spec.agent_if),
        ),
    ]
    return steps


def _redirect_tcp(dns_port: int, tcp_port: int) -> tuple[tuple[str, ...], ...]:
    """nat rules: DNS over TCP to the DNS port, any other TCP to the TCP port."""
    return (
        ("-p", "tcp", "--dport", "53", "-j", "REDIRECT", "--to-ports", str(dns_port)),
        ("-p", "tcp", "-j", "REDIRECT", "--to-ports", str(tcp_port)),
    )


def _tproxy_udp(dns_port: int, udp_port: int, mark: str) -> tuple[tuple[str, ...], ...]:
    """mangle rules: DNS over UDP to the DNS port, any other UDP to the UDP port."""
    return (
        ("-p", "udp", "--dport", "53", "-j", "TPROXY", "--on-port", str(dns_port),
         "--tproxy-mark", mark),
        ("-p", "udp", "-j", "TPROXY", "--on-port", str(udp_port), "--tproxy-mark", mark),
    )  # fmt: skip


def _chain_steps(
    netns: str | None,
    family: int,
    table: str,
    chain: str,
    rules: tuple[tuple[str, ...], ...],
    jump: tuple[str, ...],
    chain_label: str,
    jump_label: str,
) -> list[Step]:
    """Create `chain` with `rules`, then hook it in with `jump`; undone in reverse."""
    steps = [
        Step(
            f"ipv{family} {table} {chain_label}",
            _tables(netns, family, "-t", table, "-N", chain),
            (
                _tables(netns, family, "-t", table, "-F", chain),
                _tables(netns, family, "-t", table, "-X", chain),
            ),
        )
    ]
    steps += [
        Step(f"ipv{family} {table} rule", _tables(netns, family, "-t", table, "-A", chain, *rule))
        for rule in rules
    ]
    steps.append(
        Step(
            f"ipv{family} {table} {jump_label}",
            _tables(netns, family, "-t", table, "-A", *jump),
            (_tables(netns, family, "-t", table, "-D", *jump),),
        )
    )
    return steps


def _anti_spoofing(spec: SandboxSpec, family: int) -> tuple[tuple[str, ...], ...]:
    """raw rules: only the sandbox's own address may send from its link.  Anything else
    (another sandbox's address, an address the agent made up) is logged to the dialer
    over NFLOG, which records it as `unknown_agent`, and dropped before connection
    tracking sees it, so it can never join a connection of the agent it claims to be."""
    own = f"{spec.agent_v4}/32" if family == 4 else f"{spec.agent_v6}/128"
    rules: list[tuple[str, ...]] = [("-s", own, "-j", "RETURN")]
    if family == 6:
        # Neighbour discovery and MLD speak from link-local or unspecified addresses.
        rules += [("-p", "ipv6-icmp", "-s", src, "-j", "RETURN") for src in ("fe80::/10", "::/128")]
    rules += [
        ("-j", "NFLOG", "--nflog-group", str(spec.spoof_log_group), "--nflog-prefix", spec.name),
        ("-j", "DROP"),
    ]
    return tuple(rules)


def interception_steps(spec: SandboxSpec) -> list[Step]:
    """The per-sandbox chains in the host namespace, v4 then v6: raw (anti-spoofing),
    nat (TCP), mangle (UDP)."""
    h, chain, mark = spec.host_netns, spec.chain, _mark(spec.fwmark)
    steps: list[Step] = []
    for family in (4, 6):
        for table, rules in (
            ("raw", _anti_spoofing(spec, family)),
            ("nat", _redirect_tcp(spec.dns_port, spec.tcp_port)),
            ("mangle", _tproxy_udp(spec.dns_port, spec.udp_port, mark)),
        ):
            jump = ("PREROUTING", "-i", spec.host_if, "-j", chain)
            steps += _chain_steps(h, family, table, chain, rules, jump, "chain", "jump")
    return steps


def policy_routing_steps(
    fwmark: int, route_table: int, host_netns: str | None = None
) -> list[Step]:
    """The fwmark -> local-table route TPROXY needs, shared by all sandboxes of a host
    namespace: create when missing, remove with the last sandbox that uses the mark."""
    h, mark, table = host_netns, _mark(fwmark), str(route_table)
    steps = []
    for family, default in ((4, "0.0.0.0/0"), (6, "::/0")):
        fam = "-4" if family == 4 else "-6"
        rule = ("rule", "add", "fwmark", mark, "lookup", table)
        route = ("route", "add", "local", default, "dev", "lo", "table", table)
        steps += [
            Step(
                f"ipv{family} fwmark rule",
                _ip(h, fam, *rule),
                (_ip(h, fam, "rule", "del", *rule[2:]),),
            ),
            Step(
                f"ipv{family} local route",
                _ip(h, fam, *route),
                (_ip(h, fam, "route", "del", *route[2:]),),
            ),
        ]
    return steps


def setup_commands(spec: SandboxSpec) -> list[Argv]:
    """Every command of a fresh sandbox, in order (shared policy routing last)."""
    steps = host_steps(spec) + policy_routing_steps(spec.fwmark, spec.route_table, spec.host_netns)
    return [s.setup for s in steps]


def teardown_commands(steps: list[Step]) -> list[Argv]:
    """The undo commands of the steps that were carried out, newest first."""
    return [argv for step in reversed(steps) for argv in step.undo]


# --- parsers of what the host namespace already has ----------------------------------------


def has_fwmark_rule(ip_rule_show: str, fwmark: int, route_table: int) -> bool:
    """Whether `ip rule show` output holds the rule fwmark -> table."""
    want_table = {str(route_table)}
    for line in ip_rule_show.splitlines():
        words = line.split()
        if "fwmark" not in words or "lookup" not in words:
            continue
        mark = words[words.index("fwmark") + 1].split("/")[0]
        table = words[words.index("lookup") + 1]
        if int(mark, 0) == fwmark and table in want_table:
            return True
    return False


def has_local_default(ip_route_show_table: str) -> bool:
    """Whether `ip route show table T` output holds `local default dev lo`."""
    for line in ip_route_show_table.splitlines():
        words = line.split()
        if words[:2] == ["local", "default"] and words[2:4] == ["dev", "lo"]:
            return True
    return False


def peer_netns(ip_link_show: str) -> str | None:
    """The named namespace a veth's peer is in, from `ip -o link show dev X`: the word
    after `link-netns`.  None when there is none: the peer is in the same namespace (no
    link-netns at all), in a namespace without a name (`link-netnsid N`), or the link is
    no veth."""
    words = ip_link_show.split()
    for here, word in enumerate(words[:-1]):
        if word == "link-netns":
            return words[here + 1]
    return None


def tproxy_chains_using(iptables_save: str, fwmark: int) -> set[str]:
    """Chains whose TPROXY rules set this mark (from `iptables -t mangle -S` or -save)."""
    chains = set()
    for line in iptables_save.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "-A" or "TPROXY" not in words:
            continue
        if "--tproxy-mark" in words:
            value = words[words.index("--tproxy-mark") + 1].split("/")[0]
            if int(value, 0) == fwmark:
                chains.add(words[1])
    return chains


# --- sidecar variant -----------------------------------------------------------------------


@dataclass(frozen=True)
class SidecarSpec:
    """Interception inside the agent's own namespace (a pod), on OUTPUT.

    The dialer shares the namespace, so its own traffic must be exempt: by uid (the
    dialer's user) and/or by a socket mark it sets (SO_MARK).  Loopback destinations are
    exempt too, so the dialer can reach its Envoy sidecar and the agent local services.
    UDP cannot be TPROXYed on OUTPUT, so it is marked there, rerouted through `lo` by the
    policy route, and TPROXYed when it comes back in on PREROUTING.

    Only TCP and UDP can be handed to the dialer, so a filter chain rejects whatever else
    a non-exempt process would send off loopback (ICMP echo, which containers allow
    without privileges, SCTP, ...): after the redirects above, everything of theirs that
    is not a reply goes to the dialer, to this namespace's own addresses, or nowhere.
    `ipv6=False` leaves out the IPv6 interception and routes, for a namespace where IPv6
    is disabled, but keeps the IPv6 filter chain: should a link with IPv6 be added later,
    other users still send nothing over it.
    """

    tcp_port: int
    udp_port: int
    dns_port: int
    exclude_uids: tuple[int, ...] = ()
    exclude_mark: int | None = None
    fwmark: int = 0x1
    route_table: int = 100
    chain: str = "CLRK-SIDECAR"
    loopback_v4: tuple[str, ...] = field(default=("127.0.0.0/8",))
    ipv6: bool = True

    def __post_init__(self) -> None:
        for kind, port in (
            ("tcp_port", self.tcp_port),
            ("udp_port", self.udp_port),
            ("dns_port", self.dns_port),
        ):
            _check_port(kind, port)
        _check_name("chain name", self.chain, CHAIN_NAME_MAX)
        _check_name("chain name", self.chain + "-IN", CHAIN_NAME_MAX)
        _check_mark("fwmark", self.fwmark)
        if self.exclude_mark is not None:
            _check_mark("exclude_mark", self.exclude_mark)
            if self.exclude_mark & self.fwmark:
                raise SpecError("exclude_mark and fwmark must not share bits")
        if not self.exclude_uids and self.exclude_mark is None:
            raise SpecError("the dialer's own traffic needs an exclusion (uid or mark)")
        if any(uid < 0 for uid in self.exclude_uids):
            raise SpecError("uids are non-negative")


def sidecar_steps(spec: SidecarSpec) -> list[Step]:
    """Commands run inside the pod's namespace (no netns prefix) by the init step."""
    mark = _mark(spec.fwmark)
    out, inbound = spec.chain, spec.chain + "-IN"
    steps: list[Step] = []
    for family in (4, 6):
        loopback = spec.loopback_v4 if family == 4 else ("::1/128",)
        exempt_senders = [
            ("-m", "owner", "--uid-owner", str(uid), "-j", "RETURN") for uid in spec.exclude_uids
        ]
        if spec.exclude_mark is not None:
            exempt_senders.append(
                ("-m", "mark", "--mark", _mark(spec.exclude_mark), "-j", "RETURN")
            )
        exempt: list[tuple[str, ...]] = [("-o", "lo", "-j", "RETURN")]
        exempt += [("-d", net, "-j", "RETURN") for net in loopback]
        exempt += exempt_senders
        # Filter OUTPUT still sees the device of the first route: a redirected connection
        # shows by its loopback destination, a diverted datagram by its mark.
        lock = (
            *exempt_senders,
            *(("-d", net, "-j", "RETURN") for net in loopback),
            ("-o", "lo", "-j", "RETURN"),
            ("-m", "mark", "--mark", mark, "-j", "RETURN"),
            # Replies of connections made to the agent (a probe, a published port).
            ("-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"),
            ("-j", "REJECT"),
        )
        chains = (
            ("nat", out, "OUTPUT", (*exempt, *_redirect_tcp(spec.dns_port, spec.tcp_port))),
            ("mangle", out, "OUTPUT", (*exempt, ("-p", "udp", "-j", "MARK", "--set-xmark", mark))),
            # The marked datagram re-enters on lo; only marked ones are intercepted, so
            # ordinary loopback UDP passes untouched.
            ("mangle", inbound, "PREROUTING", _tproxy_udp(spec.dns_port, spec.udp_port, mark)),
            ("filter", out, "OUTPUT", lock),
        )
        if family == 6 and not spec.ipv6:
            chains = chains[-1:]  # only the lock, should an IPv6 link appear later
        for table, chain, hook, rules in chains:
            if hook == "PREROUTING":
                jump = (hook, "-i", "lo", "-p", "udp", "-m", "mark", "--mark", mark, "-j", chain)
            else:
                jump = (hook, "-j", chain)
            steps += _chain_steps(None, family, table, chain, rules, jump, chain, f"{hook} jump")
    routing = policy_routing_steps(spec.fwmark, spec.route_table)
    steps += [s for s in routing if spec.ipv6 or not s.what.startswith("ipv6")]
    return steps
