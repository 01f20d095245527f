"""clrk_cli.embedded.agent_user: who the agent runs as, and whether the gateway's state
directory is out of that user's reach."""

from __future__ import annotations

import os
import pwd

import pytest

from clrk_cli.embedded.agent_user import (
    DEDICATED_GID,
    DEDICATED_UID,
    AgentUser,
    UserError,
    agent_python,
    choose,
    reach_problem,
    runnable_by_others,
)

NOBODY = pwd.getpwnam("nobody")


def test_without_sudo_the_agent_gets_a_uid_of_its_own():
    user = choose(None, {})
    assert (user.uid, user.gid) == (DEDICATED_UID, DEDICATED_GID)
    with pytest.raises(KeyError):
        pwd.getpwuid(DEDICATED_UID)  # no account has it
    assert user.env() == {"HOME": "/", "USER": "", "LOGNAME": ""}


def test_under_sudo_the_agent_is_the_invoking_user():
    user = choose(None, {"SUDO_UID": str(NOBODY.pw_uid), "SUDO_GID": str(NOBODY.pw_gid)})
    assert (user.uid, user.gid, user.name) == (NOBODY.pw_uid, NOBODY.pw_gid, "nobody")
    assert user.env()["USER"] == "nobody" and user.env()["HOME"] == NOBODY.pw_dir
    stranger = choose(None, {"SUDO_UID": "4242", "SUDO_GID": "4243"})
    assert (stranger.uid, stranger.gid, stranger.name) == (4242, 4243, None)


def test_user_by_name_or_uid():
    assert choose("nobody", {}).uid == NOBODY.pw_uid
    assert choose(str(NOBODY.pw_uid), {"SUDO_UID": "1000", "SUDO_GID": "1000"}).name == "nobody"
    assert (choose("4242", {}).uid, choose("4242", {}).gid) == (4242, 4242)
    with pytest.raises(UserError, match="no such user"):
        choose("no-such-user-xyz", {})


@pytest.mark.parametrize(
    ("user", "environ"),
    [("root", {}), ("0", {}), (None, {"SUDO_UID": "0", "SUDO_GID": "0"})],
)
def test_never_root(user, environ):
    with pytest.raises(UserError, match="root"):
        choose(user, environ)


AGENT = AgentUser(4242, 4242)


def _private(path):
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def test_a_private_state_directory_under_private_parents_is_out_of_reach(tmp_path):
    state = _private(tmp_path / "state")
    assert reach_problem(state, AGENT) is None


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o755, 0o770])
def test_a_state_directory_others_may_enter_is_refused(tmp_path, mode):
    state = _private(tmp_path / "state")
    state.chmod(mode)
    assert "only its owner" in reach_problem(state, AGENT)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_parent_the_agent_may_write_is_refused_unless_sticky(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    state = _private(shared / "state")
    shared.chmod(0o777)
    assert "could replace" in reach_problem(state, AGENT)
    shared.chmod(0o1777)  # like /tmp: only an entry's owner may rename it
    assert reach_problem(state, AGENT) is None
    os.chown(shared, AGENT.uid, -1)  # the agent's own directory, sticky or not
    assert "could replace" in reach_problem(state, AGENT)
    os.chown(shared, 0, AGENT.gid)
    shared.chmod(0o770)  # writable by the agent's group
    assert "could replace" in reach_problem(state, AGENT)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_state_directory_of_the_agents_user_is_refused(tmp_path):
    state = _private(tmp_path / "state")
    os.chown(state, AGENT.uid, AGENT.gid)
    assert reach_problem(state, AGENT) is not None


def test_a_file_in_a_private_directory_is_not_runnable_by_others(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    program = private / "tool"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert not runnable_by_others(str(program))
    private.chmod(0o711)
    for parent in private.parents:
        if not parent.stat().st_mode & 0o001:
            return  # pytest's own temp directory is private: nothing more to check
    assert runnable_by_others(str(program))


def test_the_agents_python_is_one_other_users_may_start():
    assert runnable_by_others(agent_python())
