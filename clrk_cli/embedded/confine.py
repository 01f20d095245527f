"""The agent's process tree under `clrk run` (issue 11, item 1): what keeps it inside its
sandbox besides the network namespace.

`clrk run` (root) starts, inside the sandbox's network namespace,

    ip netns exec NAME PYTHON -I confine.py --uid U --gid G --parent PID -- CMD

and this script, still root, makes the rest:

- a new mount, PID and IPC namespace.  Its first child is PID 1 there and mounts a
  fresh /proc, so the agent sees its own processes only: no /proc/<gateway pid>/ns/net
  to enter, no gateway process to signal or inspect.
- PID 1 hides the per-user runtime directories (/run/user: session buses, the user's
  service manager, which would start a process outside the sandbox), starts CMD, then
  both drop everything: supplementary groups, gid, uid (the agent's, never 0), every
  capability (bounding, ambient, inheritable, permitted,
  effective: all empty, checked in /proc/self/status), and set no_new_privs, so no
  setuid binary or file capability can give anything back.  PID 1 passes on the
  signals it gets, reaps orphans and exits with CMD's status (128+N for signal N).
- this process stays outside, as CMD's stand-in for `clrk run`: it passes signals on,
  dies with `clrk run` (PR_SET_PDEATHSIG), and PID 1 dies with it, which ends every
  process of the sandbox; it exits with PID 1's status.

Only the standard library: it runs by path, so nothing of clrk is imported in the
sandbox.  Exit status 125 means the confinement itself failed; nothing of CMD ran.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import shutil
import signal
import sys
from collections.abc import Sequence

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SETUP_FAILED = 125
RUN_USER = "/run/user"
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
_CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


class ConfineError(RuntimeError):
    pass


_libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter is linked with


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise ConfineError(f"{what}: {os.strerror(error)}")


def _prctl(option: int, arg: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), what)


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    result = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        None,
    )
    _check(result, f"mount {target}")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _clear_capability_sets() -> None:
    """capset(2) with everything empty: setuid clears permitted and effective, but the
    inheritable set survives it."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _last_capability() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        return int(fh.read())


def status_fields(text: str) -> dict[str, str]:
    """`Name:\tvalue` lines of /proc/PID/status."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def unconfined(status: dict[str, str], uid: int, gid: int) -> list[str]:
    """What /proc/self/status says is still there that must not be (empty: confined)."""
    problems = [f"{key} {status.get(key)}" for key in _CAP_FIELDS if int(status.get(key, "1"), 16)]
    if status.get("NoNewPrivs") != "1":
        problems.append("no_new_privs is not set")
    if status.get("Uid", "").split() != [str(uid)] * 4:
        problems.append(f"Uid {status.get('Uid')}")
    if status.get("Gid", "").split() != [str(gid)] * 4:
        problems.append(f"Gid {status.get('Gid')}")
    return problems


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid/gid without supplementary groups, without any capability and with
    no_new_privs; a ConfineError when anything is left."""
    if uid == 0 or gid == 0:
        raise ConfineError("the agent must not run as uid or gid 0")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    for capability in range(_last_capability() + 1):  # needs CAP_SETPCAP: before setuid
        _prctl(PR_CAPBSET_DROP, capability, f"dropping capability {capability}")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clearing the ambient capabilities")
    os.setresuid(uid, uid, uid)
    _clear_capability_sets()
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    with open("/proc/self/status") as fh:
        left = unconfined(status_fields(fh.read()), uid, gid)
    if left:
        raise ConfineError("still privileged: " + ", ".join(left))


def _exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _forward_to(pid: int) -> None:
    def forward(signum, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)


def _wait_for(pid: int) -> int:
    """Reap every child until `pid` exits; its exit status."""
    while True:
        try:
            child, status = os.wait()
        except ChildProcessError:
            return SETUP_FAILED
        if child == pid:
            return _exit_status(status)


def _run_agent(args: argparse.Namespace) -> None:
    """In PID 1's child: become the agent and exec its command (never returns)."""
    try:
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        drop_privileges(args.uid, args.gid)
        if not os.access(".", os.X_OK):
            print("clrk run: the agent's user cannot enter the current directory; "
                  "it starts in /", file=sys.stderr)  # fmt: skip
            os.chdir("/")
    except (ConfineError, OSError) as exc:
        print(f"clrk run: cannot confine the agent: {exc}", file=sys.stderr)
        os._exit(SETUP_FAILED)
    # Looked up as the agent: PATH may hold directories it cannot enter (root's).
    program = shutil.which(args.command[0])
    if program is None:
        print(f"clrk run: {args.command[0]}: command not found", file=sys.stderr)
        os._exit(127)
    try:
        os.execv(program, args.command)
    except OSError as exc:
        print(f"clrk run: {args.command[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(126)


def _init(args: argparse.Namespace, outside: int) -> None:
    """PID 1 of the agent's PID namespace (never returns).  `outside` is the read end
    of a pipe only the process outside holds open: at EOF, it is gone."""
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if os.path.isdir(RUN_USER):
            _mount("tmpfs", RUN_USER, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except ConfineError as exc:
        print(f"clrk run: cannot confine the agent: {exc}", file=sys.stderr)
        os._exit(SETUP_FAILED)
    agent = os.fork()
    if agent == 0:
        _run_agent(args)
    _forward_to(agent)
    try:
        drop_privileges(args.uid, args.gid)  # nothing privileged stays inside
        # Dying with the process outside ends every process here; a change of
        # credentials clears that setting, so it comes after, and the pipe tells
        # whether that process died before.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "parent death signal")
        if select.select([outside], [], [], 0)[0]:
            raise ConfineError("`clrk run` is gone")
    except (ConfineError, OSError) as exc:
        os.kill(agent, signal.SIGKILL)
        print(f"clrk run: cannot confine the agent: {exc}", file=sys.stderr)
        os._exit(SETUP_FAILED)
    os._exit(_wait_for(agent))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="confine.py")
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True, help="the PID of `clrk run`")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "parent death signal")
        if os.getppid() != args.parent:
            return SETUP_FAILED  # `clrk run` is gone already
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
        # Nothing mounted from here on propagates to the namespace we came from.
        _mount("none", "/", None, MS_REC | MS_PRIVATE)
    except ConfineError as exc:
        print(f"clrk run: cannot confine the agent: {exc}", file=sys.stderr)
        return SETUP_FAILED
    outside, alive = os.pipe2(os.O_CLOEXEC)
    init = os.fork()
    if init == 0:
        os.close(alive)
        _init(args, outside)
    os.close(outside)
    _forward_to(init)
    return _wait_for(init)


def command(netns: str, uid: int, gid: int, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` confined in the sandbox `netns`, as a child of this
    process (its PID is the --parent)."""
    return [
        "ip", "netns", "exec", netns, sys.executable, "-I", os.path.abspath(__file__),
        "--uid", str(uid), "--gid", str(gid), "--parent", str(os.getpid()), "--", *argv,
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
