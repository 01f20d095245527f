"""Who the agent runs as under `clrk run` (issue 11, item 1), and whether the gateway's
state is out of that user's reach.

The default is the user who ran `sudo clrk run` (SUDO_UID/SUDO_GID), else a uid of the
agent's own that no account has (DEDICATED_UID).  Never root: uid 0 without a single
capability still owns root's files, the CA key among them.  Only the primary group,
never supplementary ones: a group such as docker's or libvirt's opens a socket that
starts processes outside any sandbox.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEDICATED_UID = DEDICATED_GID = 65533  # no account, next to nobody (65534), not shared


class UserError(ValueError):
    """--user names no usable user."""


@dataclass(frozen=True)
class AgentUser:
    uid: int
    gid: int
    name: str | None = None
    home: str = "/"
    why: str = field(default="", compare=False)  # how it was chosen, for messages

    def env(self) -> dict[str, str]:
        """HOME, USER and LOGNAME of this user ("" means: remove the variable)."""
        name = self.name or ""
        return {"HOME": self.home, "USER": name, "LOGNAME": name}


def _from_passwd(entry: pwd.struct_passwd, why: str) -> AgentUser:
    return AgentUser(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir or "/", why)


def choose(user: str | None, environ: Mapping[str, str]) -> AgentUser:
    """The agent's user: `--user NAME|UID`, else the invoking user under sudo, else the
    dedicated uid.  UserError for an unknown name or for root."""
    if user is not None:
        chosen = _named(user)
    elif environ.get("SUDO_UID", "").isdigit() and environ.get("SUDO_GID", "").isdigit():
        uid, gid = int(environ["SUDO_UID"]), int(environ["SUDO_GID"])
        try:
            entry = pwd.getpwuid(uid)
            chosen = _from_passwd(entry, "the user who ran sudo")
            if entry.pw_gid != gid:
                chosen = AgentUser(uid, gid, chosen.name, chosen.home, chosen.why)
        except KeyError:
            chosen = AgentUser(uid, gid, why="the user who ran sudo")
    else:
        chosen = AgentUser(DEDICATED_UID, DEDICATED_GID, why="the agents' own uid")
    if chosen.uid == 0 or chosen.gid == 0:
        raise UserError(
            f"the agent would run as root ({chosen.why}): root owns the gateway's files "
            "even without capabilities; give --user another user"
        )
    return chosen


def _named(user: str) -> AgentUser:
    if user.isdigit():
        try:
            return _from_passwd(pwd.getpwuid(int(user)), f"--user {user}")
        except KeyError:
            return AgentUser(int(user), int(user), why=f"--user {user}")  # no account: gid = uid
    try:
        return _from_passwd(pwd.getpwnam(user), f"--user {user}")
    except KeyError:
        raise UserError(f"--user {user}: no such user") from None


def _may_write(info: os.stat_result, user: AgentUser) -> bool:
    mode = info.st_mode
    if info.st_uid == user.uid:
        return bool(mode & stat.S_IWUSR)
    if info.st_gid == user.gid:
        return bool(mode & stat.S_IWGRP)
    return bool(mode & stat.S_IWOTH)


def reach_problem(path: Path, user: AgentUser) -> str | None:
    """Why `user` could read or replace the directory `path` or anything in it, or None.

    It must be a directory of its own user (the gateway's) that others may not even
    search; and no directory above it may let `user` rename it away and put one of its
    own in its place (the dialer would then read sandbox registrations the agent wrote),
    unless that directory is sticky and neither it nor `path`'s top is the user's.
    """
    path = Path(path)
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode) or info.st_uid == user.uid or info.st_mode & 0o077:
        return f"{path} is not a directory only its owner may use (mode {info.st_mode & 0o777:o})"
    child = path
    for parent in path.parents:
        try:
            above, below = os.stat(parent), os.lstat(child)
        except OSError as exc:
            return f"{parent}: {exc.strerror}"
        if _may_write(above, user):
            sticky = above.st_mode & stat.S_ISVTX
            if not sticky or above.st_uid == user.uid or below.st_uid == user.uid:
                return f"the agent's user may write {parent}: it could replace {child}"
        child = parent
    return None


def runnable_by_others(path: str) -> bool:
    """Whether a user who is neither the file's owner nor in its group may execute
    `path` (every directory on the way searchable, the file executable by others)."""
    real = Path(os.path.realpath(path))
    try:
        if not os.stat(real).st_mode & stat.S_IXOTH:
            return False
        return all(os.stat(d).st_mode & stat.S_IXOTH for d in real.parents)
    except OSError:
        return False


def agent_python(candidates: Sequence[str] = ()) -> str:
    """A Python interpreter an unprivileged agent can start: this one, or the system's
    (the standard library is all an agent script may count on)."""
    for path in (*candidates, sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if path and runnable_by_others(path):
            return os.path.realpath(path)
    raise FileNotFoundError("no Python interpreter that other users may run")
