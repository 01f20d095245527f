"""What `clrk up` runs, as plain data: the state directory, the ports, and one ChildSpec
per supervised process (argv, health probe, files to write first).  Pure: the
supervisor carries this out; tests check it without starting anything.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clrk.policy import PolicySet
from clrk_worker_dialer.redirect_rules import DEFAULT_SPOOF_LOG_GROUP


@dataclass(frozen=True)
class Ports:
    """Every port of the embedded stack, all on loopback except the transparent ones,
    which the sandboxes' REDIRECT/TPROXY rules deliver to.  (The control plane's gRPC
    endpoints are a Unix socket: `control_plane_address`.)"""

    status: int = 18001
    extproc: int = 18002
    envoy_admin: int = 19000
    metrics: int = 9464
    tcp: int = 15001
    udp: int = 15002
    dns: int = 15053
    socks5: int = 1080
    http_connect: int = 3128

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StateDir:
    """The layout of `--state-dir` (shared by `clrk up`, `clrk run` and `clrk records`)."""

    root: Path

    @property
    def records(self) -> Path:
        return self.root / "records.jsonl"

    def spool(self, service: str) -> Path:
        """Where a service's records wait for the OTLP collector."""
        return self.root / "spool" / service

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def sandboxes(self) -> Path:
        return self.root / "sandboxes"  # the dialer's registry (clrk_worker_dialer.registry)

    @property
    def run(self) -> Path:
        return self.root / "run"  # ready files, rendered configs

    @property
    def envoy_sockets(self) -> Path:
        """Where Envoy's listeners should be Unix sockets (clrk.nexthops): run/envoy.
        `clrk up` uses another directory when this one is too long for a socket address
        (clrk_cli.up.socket_directory), and hands its choice to `stack`."""
        return self.run / "envoy"

    @property
    def proxy_credentials(self) -> Path:
        """Explicit mode's per-agent tokens (clrk_worker_dialer.proxy_credentials)."""
        return self.root / "proxy-credentials"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def info(self) -> Path:
        return self.root / "up.json"  # written by a ready `clrk up`, read by `clrk run`

    def log(self, child: str) -> Path:
        return self.logs / f"{child}.log"

    def ready_file(self, child: str) -> Path:
        return self.run / f"{child}.ready"


@dataclass(frozen=True)
class Probe:
    """How the supervisor decides a child is healthy: `http` (GET url answers 200),
    `tcp` (host:port accepts), or `file` (the child wrote it)."""

    kind: str
    target: str


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    probe: Probe
    files: Mapping[str, str] = field(default_factory=dict)  # path -> text, written first
    remove_before_start: tuple[str, ...] = ()  # stale ready files


class LayoutError(ValueError):
    """The manifests do not say which gateway to run."""


def gateways_with_agents(policies: PolicySet) -> list[str]:
    """`namespace/name` of every gateway some declared agent egresses through."""
    keys = {gw for gws in policies.agent_gateways.values() for gw in gws}
    return sorted(f"{ns}/{name}" for ns, name in keys)


def choose_gateway(policies: PolicySet, requested: str | None) -> str:
    """The gateway this stack enforces: the requested one, else the only gateway that has
    agents.  One per stack: the control plane gives every gateway the same Envoy ports."""
    known = sorted(f"{ns}/{name}" for ns, name in policies.gateways)
    if requested is not None:
        ref = requested if "/" in requested else f"default/{requested}"
        if ref not in known:
            raise LayoutError(f"no gateway {ref}; the manifests have: {', '.join(known) or '-'}")
        return ref
    candidates = gateways_with_agents(policies) or known
    if len(candidates) != 1:
        raise LayoutError(
            "choose one gateway with --gateway; candidates: " + (", ".join(candidates) or "none")
        )
    return candidates[0]


CONTROL_PLANE_SOCKET = "control-plane.socket"  # never a listener's `<name>.sock`


def control_plane_address(sockets: Path) -> str:
    """The admin API, policy stream and ADS: a Unix socket in the private directory of
    Envoy's listener sockets (already short enough for a socket path, and its owner's
    alone), so only the gateway's user may connect."""
    return f"unix:{sockets / CONTROL_PLANE_SOCKET}"


@dataclass(frozen=True)
class TcpListen:
    """The opt-in TCP listener of the control plane and how clients authenticate
    (clrk_runtime.grpc_auth.ServerAuth's files)."""

    address: str
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None

    def argv(self) -> list[str]:
        out = ["--listen", self.address]
        for flag, value in (
            ("--token-file", self.token_file),
            ("--tls-cert", self.cert_file),
            ("--tls-key", self.key_file),
            ("--client-ca", self.client_ca_file),
        ):
            if value is not None:
                out += [flag, value]
        return out


def envoy_bootstrap_text(gateway: str, ports: Ports, control_plane: str) -> str:
    from clrk_xds.envoy_process import render_bootstrap

    config = render_bootstrap(gateway, control_plane, ports.envoy_admin)
    return json.dumps(config, indent=1)


def stack(
    manifests: Sequence[str],
    gateway: str,
    state: StateDir,
    *,
    sockets: Path,
    ports: Ports = Ports(),
    envoy: str = "envoy",
    with_extproc: bool = True,
    otlp_endpoint: str | None = None,
    python: str = sys.executable,
    envoy_log_level: str = "warning",
    upstream_ca: str | None = None,
    tcp_listen: TcpListen | None = None,
) -> list[ChildSpec]:
    """The children in start order: control plane, ext_proc, Envoy, dialer.  `sockets` is
    the directory of Envoy's listener sockets, where the control plane binds them and the
    dialer dials them, and of the control plane's own socket."""
    lo = "127.0.0.1"
    control = control_plane_address(sockets)
    plane = [python, "-m", "clrk_xds", "--listen", control]
    if tcp_listen is not None:
        plane += tcp_listen.argv()
    plane += ["--status-listen", f"{lo}:{ports.status}"]
    plane += ["--state-dir", str(state.root), "--applied-dir", str(state.root / "applied")]
    plane += ["--extproc", f"{lo}:{ports.extproc}"]
    plane += ["--envoy-socket-dir", str(sockets)]
    # Every address of this namespace is the gateway's own: Envoy's guard and the
    # dialer block each, also one added while the stack runs.
    plane += ["--watch-own-addresses"]
    if upstream_ca:
        plane += ["--upstream-ca", str(upstream_ca)]
    for path in manifests:
        plane += ["--manifests", str(path)]
    if not otlp_endpoint:
        plane += ["--records", str(state.records)]  # what the admin API streams
    children = [
        ChildSpec(
            "control-plane", tuple(plane), Probe("http", f"http://{lo}:{ports.status}/status")
        )
    ]
    if with_extproc:
        argv = [python, "-m", "clrk_extproc", "--listen", f"{lo}:{ports.extproc}"]
        if otlp_endpoint:
            argv += ["--otlp-endpoint", otlp_endpoint, "--spool-dir", str(state.spool("extproc"))]
        else:
            argv += ["--records", str(state.records)]
        children.append(ChildSpec("extproc", tuple(argv), Probe("tcp", f"{lo}:{ports.extproc}")))
    bootstrap = state.run / "envoy.json"
    children.append(
        ChildSpec(
            "envoy",
            (
                envoy,
                "-c",
                str(bootstrap),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                envoy_log_level,
            ),
            Probe("http", f"http://{lo}:{ports.envoy_admin}/ready"),
            files={str(bootstrap): envoy_bootstrap_text(gateway, ports, control)},
        )
    )
    ready = state.ready_file("dialer")
    dialer = [
        python,
        "-m",
        "clrk_worker_dialer",
        "--sandboxes",
        str(state.sandboxes),
        "--control-plane",
        control,
        "--gateway",
        gateway,
        "--transparent-tcp",
        f"0.0.0.0:{ports.tcp}",
        "--transparent-tcp",
        f"[::]:{ports.tcp}",
        "--transparent-udp",
        f"0.0.0.0:{ports.udp}",
        "--transparent-udp",
        f"[::]:{ports.udp}",
        "--dns",
        f"0.0.0.0:{ports.dns}",
        "--dns",
        f"[::]:{ports.dns}",
        "--socks5",
        f"{lo}:{ports.socks5}",
        "--http-connect",
        f"{lo}:{ports.http_connect}",
        "--next-hop-socket-dir",
        str(sockets),
        "--spoof-log-group",
        str(DEFAULT_SPOOF_LOG_GROUP),  # what `clrk run`'s anti-spoofing rules log to
        "--proxy-credentials",
        str(state.proxy_credentials),
        "--ready-file",
        str(ready),
        "--watch-own-addresses",
    ]
    if otlp_endpoint:
        dialer += ["--otlp-endpoint", otlp_endpoint, "--spool-dir", str(state.spool("dialer"))]
    else:
        dialer += ["--records", str(state.records)]
    children.append(
        ChildSpec(
            "dialer", tuple(dialer), Probe("file", str(ready)), remove_before_start=(str(ready),)
        )
    )
    return children


def restart_delay(quick_failures: int) -> float:
    """Backoff before restarting a child that failed `quick_failures` times in a row
    without staying up: fast at first (traffic must flow again within seconds), capped."""
    return min(0.1 * 2 ** max(quick_failures, 0), 5.0)


def info_document(
    gateway: str, ports: Ports, netns: str | None, pid: int, control_plane: str
) -> dict:
    """What a running `clrk up` tells `clrk run` and the admin CLI (STATE/up.json)."""
    return {
        "gateway": gateway,
        "ports": ports.as_dict(),
        "netns": netns,
        "pid": pid,
        "control_plane": control_plane,
    }
