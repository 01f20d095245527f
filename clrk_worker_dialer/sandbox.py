"""Create and remove an agent sandbox by running the commands of `redirect_rules`.

The shell only carries out the steps: it remembers each one that succeeded so teardown
removes exactly that, newest first, trying every undo even when one fails.  A create
that fails half-way removes what it had made before raising, so a sandbox is either
fully intercepted or not there at all.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from types import TracebackType

from clrk_worker_dialer.redirect_rules import (
    Argv,
    SandboxSpec,
    Step,
    has_fwmark_rule,
    has_local_default,
    host_steps,
    peer_netns,
    policy_routing_steps,
    tproxy_chains_using,
)

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]

COMMAND_TIMEOUT = 15.0


class SandboxError(RuntimeError):
    """Creating a sandbox failed; whatever it had created is already removed."""


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )


def _describe(argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    detail = (result.stderr or result.stdout).strip()
    return f"`{' '.join(argv)}` exited {result.returncode}: {detail}"


class Sandbox:
    """A created sandbox. Use as a context manager, or call teardown() yourself."""

    def __init__(self, spec: SandboxSpec, runner: Runner = run_command) -> None:
        self.spec = spec
        self._run = runner
        self._done: list[Step] = []
        self._uses_policy_routing = False

    @property
    def name(self) -> str:
        return self.spec.name

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside the agent's network namespace with the
        caller's privileges (root: every capability, so it could leave the sandbox).
        `clrk run` confines the agent instead (clrk_cli.embedded.confine); this is for
        `--privileged` and test harnesses."""
        return ["ip", "netns", "exec", self.spec.name, *argv]

    def _host(self, argv: Argv) -> Argv:
        h = self.spec.host_netns
        return argv if h is None else ("ip", "netns", "exec", h, *argv)

    def _carry_out(self, step: Step) -> None:
        result = self._run(step.setup)
        if result.returncode != 0:
            raise SandboxError(
                f"sandbox {self.spec.name}: {step.what}: {_describe(step.setup, result)}"
            )
        self._done.append(step)

    def _create(self) -> None:
        for step in host_steps(self.spec):
            self._carry_out(step)
        self._uses_policy_routing = True
        for step in self._missing_policy_routing():
            self._carry_out(step)

    def _missing_policy_routing(self) -> list[Step]:
        spec = self.spec
        steps = policy_routing_steps(spec.fwmark, spec.route_table, spec.host_netns)
        missing = []
        for family, (rule, route) in zip((4, 6), (steps[0:2], steps[2:4]), strict=True):
            fam = f"-{family}"
            rules = self._run(self._host(("ip", fam, "rule", "show"))).stdout
            routes = self._run(
                self._host(("ip", fam, "route", "show", "table", str(spec.route_table)))
            ).stdout
            if not has_fwmark_rule(rules, spec.fwmark, spec.route_table):
                missing.append(rule)
            if not has_local_default(routes):
                missing.append(route)
        return missing

    def teardown(self) -> list[str]:
        """Remove everything this sandbox created. Idempotent; returns the failures."""
        spec = self.spec
        shared = set(policy_routing_steps(spec.fwmark, spec.route_table, spec.host_netns))
        failures: list[str] = []
        while self._done:
            step = self._done.pop()
            if step in shared:
                continue  # shared: removed below only when no sandbox uses it any more
            for argv in step.undo:
                result = self._run(argv)
                if result.returncode != 0:
                    failures.append(_describe(argv, result))
        if self._uses_policy_routing:
            self._uses_policy_routing = False
            failures += self._remove_unused_policy_routing()
        return failures

    def _remove_unused_policy_routing(self) -> list[str]:
        spec = self.spec
        for binary in ("iptables", "ip6tables"):
            listing = self._run(self._host((binary, "-w", "-t", "mangle", "-S")))
            if listing.returncode != 0:
                return [_describe((binary, "-t", "mangle", "-S"), listing)]
            if tproxy_chains_using(listing.stdout, spec.fwmark):
                return []  # another sandbox of this host namespace still needs it
        failures = []
        for step in reversed(policy_routing_steps(spec.fwmark, spec.route_table, spec.host_netns)):
            for argv in step.undo:
                # A missing rule or route is what we want; only other errors count.
                result = self._run(argv)
                text = (result.stderr or "").lower()
                if result.returncode != 0 and "no such" not in text and "not exist" not in text:
                    failures.append(_describe(argv, result))
        return failures

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()


def create_sandbox(spec: SandboxSpec, runner: Runner = run_command) -> Sandbox:
    """Set the sandbox up completely, or raise SandboxError having removed the partial one."""
    sandbox = Sandbox(spec, runner)
    try:
        sandbox._create()
    except BaseException as error:
        failures = sandbox.teardown()
        if failures and isinstance(error, SandboxError):
            raise SandboxError(f"{error}; cleanup also failed: {'; '.join(failures)}") from error
        raise
    return sandbox


# What a command prints when the thing it would remove is already gone.
_ALREADY_GONE = (
    "no such",
    "not exist",
    "cannot find device",
    "does a matching rule exist",
    "no chain/target/match",
)


def _already_gone(failure: str) -> bool:
    return any(g in failure.lower() for g in _ALREADY_GONE)


def _host_link_verdict(spec: SandboxSpec, runner: Runner) -> tuple[bool, str | None]:
    """Whether remove_leftovers may delete the host link `spec.host_if`, and the failure
    to report if not.  That name is only the slot's: the link is this sandbox's only
    when its veth peer is in the sandbox's namespace, else it belongs to someone else
    (e.g. a live sandbox of another state directory sharing the host namespace)."""
    h = spec.host_netns
    argv = ("ip", *(("-n", h) if h is not None else ()), "-o", "link", "show", "dev", spec.host_if)
    result = runner(argv)
    if result.returncode != 0:
        failure = _describe(argv, result)
        return False, None if _already_gone(failure) else failure  # no link: nothing to delete
    peer = peer_netns(result.stdout)
    if peer == spec.name:
        return True, None
    where = f"namespace {peer}" if peer else "an unnamed or the host namespace"
    return False, (
        f"host link {spec.host_if} has its peer in {where}, not in {spec.name}: "
        "left in place, it is not this sandbox's"
    )


def remove_leftovers(spec: SandboxSpec, runner: Runner = run_command) -> list[str]:
    """Remove whatever a sandbox with this spec left behind when its creator died (how
    far it got is unknown): every undo of its steps, in reverse.  The host link is
    deleted only when its peer is in this sandbox's namespace; a link of that name with
    its peer elsewhere is left alone and reported.  Idempotent; returns only real
    failures, not "already gone"."""
    delete_link, refused = _host_link_verdict(spec, runner)
    link_del = ("link", "del", spec.host_if)
    steps = [
        step
        for step in host_steps(spec)
        if delete_link or not any(argv[-3:] == link_del for argv in step.undo)
    ]
    sandbox = Sandbox(spec, runner)
    sandbox._done = steps
    sandbox._uses_policy_routing = True
    failures = [f for f in sandbox.teardown() if not _already_gone(f)]
    return failures if refused is None else [refused, *failures]
