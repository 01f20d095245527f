"""The shell of `clrk run` as root: a slot, a sandbox behind the running stack, its
registration with the dialer, and the removal of all of it (also on failure)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clrk_cli.embedded.agent_env import MAX_SLOTS, sandbox_name, slot_path
from clrk_cli.embedded.processes import end_processes_in_netns, pid_alive
from clrk_worker_dialer import registry
from clrk_worker_dialer.redirect_rules import spec_for_index
from clrk_worker_dialer.sandbox import Sandbox, create_sandbox, remove_leftovers

NETNS_ETC = Path("/etc/netns")
REGISTER_TIMEOUT = 5.0

log = logging.getLogger("clrk.run")


class RunError(RuntimeError):
    pass


def take_slot(directory: Path, reclaim: Callable[[int, int], None] | None = None) -> int:
    """The lowest free slot: a lock file holding our PID.  A slot whose owner is gone
    (a killed run) is reclaimed first: `reclaim(slot, owner)` removes what it left.
    A slot that cannot be reclaimed is logged and skipped, its lock file left as it is,
    so it is not reused until an operator has removed what is left in it (otherwise,
    being the lowest, it would fail every later run).  Slots are taken under one
    directory-wide flock, so two runs never reclaim or take the same slot at once (the
    kernel drops the flock of a killed run)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "slots.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        for slot in range(1, MAX_SLOTS):
            path = slot_path(directory, slot)
            try:
                owner = int(path.read_text().strip() or 0)
            except FileNotFoundError:
                owner = None
            except (OSError, ValueError):
                continue  # not a lock file we wrote: leave that slot alone
            if owner is not None and (owner == 0 or pid_alive(owner)):
                continue
            if owner is not None and reclaim is not None:
                try:
                    reclaim(slot, owner)
                except (RunError, OSError, subprocess.SubprocessError) as exc:
                    log.warning(
                        "sandbox slot %d of killed run %d cannot be reclaimed, skipping it "
                        "(remove what is left, then %s): %s",
                        slot, owner, path, exc,
                    )  # fmt: skip
                    continue
            path.write_text(str(os.getpid()))
            return slot
    raise RunError(f"no free sandbox slot in {directory}")


def reclaim_slot(sandboxes: Path, slot: int, owner: int, host_netns: str | None) -> None:
    """Remove what the dead run `owner` left in `slot`: the processes still in its
    sandbox, the sandbox (namespace, veth, interception chains), its registration with
    the dialer (whose addresses the new sandbox is about to claim) and its resolv.conf."""
    name = sandbox_name(owner, slot)
    end_processes_in_netns(name, grace=2.0)
    spec = spec_for_index(slot, name, tcp_port=1, udp_port=1, dns_port=1, host_netns=host_netns)
    failures = remove_leftovers(spec)  # the ports play no part in what is removed
    Registration(sandboxes, name).remove()
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    if failures:
        raise RunError(f"cannot remove sandbox {name} of a killed run: " + "; ".join(failures))


@dataclass
class Registration:
    directory: Path
    name: str

    @property
    def entry(self) -> Path:
        return self.directory / f"{self.name}{registry.ENTRY}"

    @property
    def ack(self) -> Path:
        return self.directory / f"{self.name}{registry.ACK}"

    def register(self, agent: str, addresses: list[str], timeout: float = REGISTER_TIMEOUT) -> None:
        """Write the entry and wait until the dialer has applied it: a connection made
        before that would be denied as an unknown agent."""
        self.ack.unlink(missing_ok=True)
        tmp = self.entry.with_suffix(".tmp")
        tmp.write_text(registry.entry_text(agent, addresses))
        os.replace(tmp, self.entry)  # the dialer never reads half an entry
        deadline = time.monotonic() + timeout
        while not self.ack.exists():
            if time.monotonic() > deadline:
                raise RunError("the dialer did not pick up the sandbox (is `clrk up` running?)")
            time.sleep(0.02)

    def remove(self) -> None:
        self.entry.unlink(missing_ok=True)
        self.ack.unlink(missing_ok=True)


@contextlib.contextmanager
def agent_sandbox(
    sandboxes: Path, agent: str, ports: dict, host_netns: str | None
) -> Iterator[Sandbox]:
    """A sandbox whose egress the running stack intercepts, registered as `agent`;
    everything is removed on exit."""
    slot = take_slot(
        sandboxes, lambda slot, owner: reclaim_slot(sandboxes, slot, owner, host_netns)
    )
    name = sandbox_name(os.getpid(), slot)
    etc = NETNS_ETC / name
    sandbox = registration = None
    try:
        spec = spec_for_index(
            slot,
            name,
            tcp_port=ports["tcp"],
            udp_port=ports["udp"],
            dns_port=ports["dns"],
            host_netns=host_netns,
        )
        etc.mkdir(parents=True, exist_ok=True)
        # Any resolver address works (all DNS is intercepted), but it must be one whose
        # packets leave the sandbox: not a loopback stub from the host's resolv.conf.
        (etc / "resolv.conf").write_text(f"nameserver {spec.host_v4}\noptions timeout:2\n")
        sandbox = create_sandbox(spec)
        registration = Registration(sandboxes, name)
        registration.register(agent, [spec.agent_v4, spec.agent_v6])
        yield sandbox
    finally:
        failures = []
        if registration is not None:
            registration.remove()
        if sandbox is not None:
            failures = sandbox.teardown()
        shutil.rmtree(etc, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only when empty
        slot_path(sandboxes, slot).unlink(missing_ok=True)
        if failures:
            raise RunError("sandbox teardown: " + "; ".join(failures))


def read_info(path: Path) -> dict:
    """The running stack's up.json; RunError when there is none or its process is gone."""
    try:
        info = json.loads(path.read_text())
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise RunError(f"no running `clrk up` for this state directory ({path})") from None
        raise RunError(f"{path}: {exc}") from None
    except ValueError as exc:
        raise RunError(f"{path}: {exc}") from None
    if not isinstance(info, dict) or not pid_alive(int(info.get("pid") or 0)):
        raise RunError(f"the `clrk up` recorded in {path} is not running")
    return info
