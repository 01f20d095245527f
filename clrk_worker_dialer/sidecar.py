"""`clrk sidecar`: put this network namespace behind the dialer, then run the dialer
unprivileged in it.

For an agent that shares the dialer's network namespace (a pod; a compose service with
`network_mode: service:dialer`).  Started as root with CAP_NET_ADMIN and CAP_NET_RAW
(iptables) plus CAP_SETUID and CAP_SETGID, it

1. installs the sidecar interception (redirect_rules.sidecar_steps): every TCP
   connection and UDP datagram of any other user goes to the dialer, and anything else
   they would send off loopback is rejected; the dialer's user is exempt.  A failed step
   undoes the ones before it: the namespace is intercepted completely or the command
   fails.
2. execs the dialer (`python -m clrk_worker_dialer`) as that user through setpriv(1),
   keeping CAP_NET_RAW alone, which its transparent UDP sockets need (IP_TRANSPARENT),
   with the transparent listeners on the ports the rules send to, and this namespace's
   own addresses (its local routing table, followed) and default gateways (the host) as
   always blocked.

Options after `--` go to the dialer unchanged.

In a Kubernetes pod the two halves run in two containers, so that only the first has
CAP_NET_ADMIN: an init container runs `--install-only` (step 1, then exits), and the
dialer's sidecar container `--no-install` (step 2; it keeps CAP_NET_RAW, CAP_SETUID and
CAP_SETGID only, and refuses to start when the interception is not there).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from clrk_worker_dialer.redirect_rules import SidecarSpec, Step, sidecar_steps, teardown_commands
from clrk_worker_dialer.sandbox import Runner, run_command

KEPT_CAPABILITY = "net_raw"  # IP_TRANSPARENT on the dialer's UDP sockets
IPV6_DISABLED = Path("/proc/sys/net/ipv6/conf/all/disable_ipv6")


class SidecarError(RuntimeError):
    """The interception could not be installed; nothing of it is left."""


def _describe(argv: Sequence[str], result) -> str:
    detail = (result.stderr or result.stdout).strip()
    return f"`{' '.join(argv)}` exited {result.returncode}: {detail}"


def install(spec: SidecarSpec, runner: Runner = run_command) -> None:
    """Install the interception completely, or raise SidecarError having removed it.

    Rules an earlier start left in this namespace are removed first: appending to them
    would intercept twice, and the jump rules would pile up."""
    steps = sidecar_steps(spec)
    if runner(("iptables", "-w", "-t", "nat", "-S", spec.chain)).returncode == 0:
        for argv in teardown_commands(steps):
            runner(argv)  # some may be gone already: only the end state matters
    done: list[Step] = []
    for step in steps:
        result = runner(step.setup)
        if result.returncode != 0:
            for argv in teardown_commands(done):
                runner(argv)
            raise SidecarError(f"{step.what}: {_describe(step.setup, result)}")
        done.append(step)


def own_addresses(ip_addr_json: str) -> list[str]:
    """This namespace's addresses (from `ip -j addr show`) a destination must never be:
    every global or site address; loopback and link-local are always blocked anyway."""
    out = []
    for link in json.loads(ip_addr_json or "[]"):
        for info in link.get("addr_info", ()):
            if info.get("scope") in ("global", "site") and info.get("local"):
                out.append(info["local"])
    return out


def gateways(ip_route_json: str) -> list[str]:
    """The next hops of the default routes (from `ip -j route show default`): the host
    this namespace hangs off (a container's Docker host, a pod's node), as much the
    gateway's own as its addresses."""
    return [r["gateway"] for r in json.loads(ip_route_json or "[]") if r.get("gateway")]


def routed_by(ip_rule_json: str, table: int) -> bool:
    """Whether `ip -j rule show` lists a rule sending marked packets to `table`."""
    rules = json.loads(ip_rule_json or "[]")
    return any(r.get("table") == str(table) and r.get("fwmark") for r in rules)


def ipv6_enabled(path: Path = IPV6_DISABLED) -> bool:
    try:
        return path.read_text().strip() == "0"
    except OSError:
        return False  # no IPv6 in this kernel


def parse_user(text: str) -> tuple[int, int]:
    """`UID` or `UID:GID` (numbers: a container image need not know the user)."""
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise ValueError(f"{text!r}: expected UID or UID:GID, as numbers")
    return int(uid), int(gid or uid)


def dialer_argv(
    user: tuple[int, int],
    spec: SidecarSpec,
    own: Sequence[str],
    dialer_args: Sequence[str],
    python: str = sys.executable,
) -> list[str]:
    """setpriv to `user` keeping only CAP_NET_RAW, then the dialer with the transparent
    listeners of `spec` (IPv4, and IPv6 when the namespace has it)."""
    uid, gid = user
    caps = f"-all,+{KEPT_CAPABILITY}"
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    argv += [f"--inh-caps={caps}", f"--ambient-caps={caps}", "--"]
    # Everything this namespace delivers to itself (the pod's address, all of loopback,
    # where Envoy's admin listens in a pod) is blocked and followed as it changes.
    argv += [python, "-m", "clrk_worker_dialer", "--watch-own-addresses"]
    binds = ["0.0.0.0", "[::]"] if spec.ipv6 else ["0.0.0.0"]
    for option, port in (
        ("--transparent-tcp", spec.tcp_port),
        ("--transparent-udp", spec.udp_port),
        ("--dns", spec.dns_port),
    ):
        for host in binds:
            argv += [option, f"{host}:{port}"]
    for address in own:
        argv += ["--own-address", address]
    return [*argv, *dialer_args]


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--user",
    required=True,
    help="UID[:GID] the dialer runs as; its own traffic is not intercepted.",
)
@click.option("--tcp-port", default=15001, show_default=True, type=int)
@click.option("--udp-port", default=15002, show_default=True, type=int)
@click.option("--dns-port", default=15053, show_default=True, type=int)
@click.option(
    "--install-only", is_flag=True, help="Install the interception and exit (an init container)."
)
@click.option(
    "--no-install",
    is_flag=True,
    help="The interception is installed already (by --install-only): only run the dialer.",
)
@click.argument("dialer_args", nargs=-1, type=click.UNPROCESSED)
def sidecar(user, tcp_port, udp_port, dns_port, install_only, no_install, dialer_args) -> None:
    """Intercept this network namespace for the agent sharing it, then run the dialer
    there as USER: `clrk sidecar --user 10101 -- --gateway NS/GW --default-agent NS/AGENT
    --control-plane ...` (see `clrk dialer --help` for what follows `--`)."""
    if install_only and no_install:
        raise click.UsageError("--install-only or --no-install, not both")
    step = "install" if install_only else "run" if no_install else "both"
    main(user, tcp_port, udp_port, dns_port, dialer_args, step=step)


def main(
    user: str,
    tcp_port: int,
    udp_port: int,
    dns_port: int,
    dialer_args: Sequence[str],
    runner: Runner = run_command,
    execvp: Callable[[str, list[str]], object] = os.execvp,
    step: str = "both",
) -> None:
    from clrk_worker_dialer.redirect_rules import SpecError

    try:
        uid, gid = parse_user(user)
        if uid == 0:
            raise ValueError("the dialer must not run as root: root's traffic is exempt")
        spec = SidecarSpec(tcp_port, udp_port, dns_port, exclude_uids=(uid,), ipv6=ipv6_enabled())
    except (ValueError, SpecError) as exc:
        raise click.BadParameter(str(exc)) from None
    if os.geteuid() != 0:
        raise click.ClickException("needs root (CAP_NET_ADMIN) to install the interception")
    if step != "install" and shutil.which("setpriv") is None:
        raise click.ClickException("needs setpriv (util-linux) to drop privileges")
    if step == "run":
        # Without the rules the agent's traffic would bypass the dialer: refuse.  Only
        # the policy route is readable without CAP_NET_ADMIN; it is installed last.
        listed = runner(("ip", "-j", "rule", "show"))
        if listed.returncode != 0 or not routed_by(listed.stdout, spec.route_table):
            raise click.ClickException(
                "the interception is not installed (no policy route to table "
                f"{spec.route_table}): run --install-only first"
            )
    else:
        try:
            install(spec, runner)
        except SidecarError as exc:
            raise click.ClickException(f"cannot intercept this namespace: {exc}") from None
        if step == "install":
            click.echo("clrk sidecar: interception installed", err=True)
            return
    own = []
    for argv, parse in (
        (("ip", "-j", "addr", "show"), own_addresses),
        (("ip", "-j", "-4", "route", "show", "default"), gateways),
        *([(("ip", "-j", "-6", "route", "show", "default"), gateways)] if spec.ipv6 else []),
    ):
        listed = runner(argv)
        if listed.returncode != 0:
            raise click.ClickException(f"`{' '.join(argv)}` failed: {listed.stderr.strip()}")
        own += parse(listed.stdout)
    argv = dialer_argv((uid, gid), spec, own, dialer_args)
    click.echo(f"clrk sidecar: intercepting; running the dialer as {uid}:{gid}", err=True)
    execvp(argv[0], argv)
