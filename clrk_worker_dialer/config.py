"""The dialer's configuration: what it enforces (manifests, gateway), who its agents are,
where it listens and where allowed connections go next."""

from __future__ import annotations

from dataclasses import dataclass, field

from clrk.api.grammar import parse_host_port
from clrk.nexthops import DEFAULT_BASE_PORT, DEFAULT_HOST

Address = tuple[str, int]


def address(text: str) -> Address:
    """'127.0.0.1:1080', '[::]:15001', or a bare port (all IPv4 addresses)."""
    if text.isdigit():
        return ("0.0.0.0", int(text))
    host, port = parse_host_port(text, 0)
    if port == 0:
        raise ValueError(f"{text!r} needs a port")
    return host, port


def gateway_key(ref: str) -> tuple[str, str]:
    namespace, _, name = ref.rpartition("/")
    return (namespace or "default", name)


@dataclass
class DialerConfig:
    manifests: list[str]
    gateway: str  # namespace/name, or a name in `default`
    sources: dict[str, str] = field(default_factory=dict)  # sandbox address -> agent ref
    default_agent: str | None = None
    # Explicit mode: per-agent tokens the proxy password must match (proxy_credentials)
    proxy_credentials_dir: str | None = None
    transparent_tcp: list[Address] = field(default_factory=list)
    transparent_udp: list[Address] = field(default_factory=list)
    dns: list[Address] = field(default_factory=list)  # UDP (TPROXY) and TCP (REDIRECT)
    socks5: Address | None = None
    http_connect: Address | None = None
    next_hop_host: str = DEFAULT_HOST
    next_hop_base_port: int = DEFAULT_BASE_PORT
    next_hop_socket_dir: str | None = None  # Envoy listens on DIR/<listener>.sock instead
    records_path: str | None = "clrk-records.jsonl"
    otlp_endpoint: str | None = None
    spool_dir: str | None = None  # with otlp_endpoint: records go to disk first
    spool_max_bytes: int = 256 << 20
    raise_somaxconn: bool = True  # in the dialer's network namespace, where it may
    own_addresses: list[str] = field(default_factory=list)
    watch_own_addresses: bool = False  # also every address of this namespace, kept current
    resolvers: list[Address] = field(default_factory=list)  # overrides the gateway's dns
    client_hello_wait: float = 1.0
    sni_confirm_timeout: float = 2.0  # resolving an SNI that no DNS answer bound (SPEC 4)
    sni_confirm_concurrency: int = 64
    udp_idle_timeout: float = 60.0
    dns_timeout: float = 2.0
    watch: bool = True
    control_plane: str | None = None  # unix:PATH or host:port of the policy stream
    control_plane_auth: object = None  # clrk_runtime.grpc_auth.ClientAuth for TCP
    sandboxes_dir: str | None = None  # `clrk run` registers sandbox address -> agent here
    spoof_log_group: int | None = None  # NFLOG group of the sandboxes' anti-spoofing rules

    @property
    def gateway_key(self) -> tuple[str, str]:
        return gateway_key(self.gateway)


def system_resolvers(path: str = "/etc/resolv.conf") -> list[Address]:
    out: list[Address] = []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    out.append((parts[1].split("%", 1)[0], 53))
    except OSError:
        pass
    return out
