"""clrk_cli.embedded.run_sandbox's slot taking (the sandbox itself is tested as root in
test_up_stack.py and tests/worker_dialer/test_dialer_sandbox.py)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess

from clrk_cli.embedded.agent_env import slot_path
from clrk_cli.embedded.run_sandbox import RunError, take_slot


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_lowest_free_slot_is_taken_and_holds_our_pid(tmp_path):
    assert take_slot(tmp_path) == 1
    assert slot_path(tmp_path, 1).read_text() == str(os.getpid())
    assert take_slot(tmp_path) == 2  # slot 1 is ours, and we are alive


def test_a_slot_of_a_live_run_is_skipped_and_a_foreign_file_left_alone(tmp_path):
    slot_path(tmp_path, 1).write_text(str(os.getppid()))
    slot_path(tmp_path, 2).write_text("not a pid")
    reclaimed = []
    assert take_slot(tmp_path, lambda slot, owner: reclaimed.append(slot)) == 3
    assert reclaimed == [] and slot_path(tmp_path, 2).read_text() == "not a pid"


def test_a_slot_whose_run_was_killed_is_reclaimed_before_it_is_taken(tmp_path):
    dead = _dead_pid()
    slot_path(tmp_path, 1).write_text(str(dead))
    reclaimed = []
    assert take_slot(tmp_path, lambda slot, owner: reclaimed.append((slot, owner))) == 1
    assert reclaimed == [(1, dead)]
    assert slot_path(tmp_path, 1).read_text() == str(os.getpid())


def test_a_slot_that_cannot_be_reclaimed_is_skipped_with_a_warning(tmp_path, caplog):
    """Reclaiming the lowest dead slot fails (something of it cannot be removed): that
    slot is skipped, its lock file kept so no run reuses it before an operator cleans it,
    and the run takes the next slot instead of failing like every later run would."""
    dead = _dead_pid()
    slot_path(tmp_path, 1).write_text(str(dead))
    slot_path(tmp_path, 2).write_text(str(dead))
    reclaimed = []

    def reclaim(slot: int, owner: int) -> None:
        reclaimed.append((slot, owner))
        if slot == 1:
            raise RunError("cannot remove sandbox clrk-r-p1-1: it is stuck")

    with caplog.at_level(logging.WARNING, logger="clrk.run"):
        assert take_slot(tmp_path, reclaim) == 2
    assert reclaimed == [(1, dead), (2, dead)]
    assert slot_path(tmp_path, 1).read_text() == str(dead)
    assert slot_path(tmp_path, 2).read_text() == str(os.getpid())
    (warning,) = [r for r in caplog.records if r.name == "clrk.run"]
    assert warning.levelno == logging.WARNING
    assert "slot 1" in warning.getMessage() and "it is stuck" in warning.getMessage()
    # The next run skips it again and takes the next free slot.
    assert take_slot(tmp_path, reclaim) == 3
    assert slot_path(tmp_path, 1).read_text() == str(dead)


def _take(directory: str, queue, done) -> None:
    from pathlib import Path

    queue.put(take_slot(Path(directory)))
    done.wait(10)  # stay alive: the slot of an exited run is free again


def test_runs_starting_at_once_never_get_the_same_slot(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_take, args=(str(tmp_path), queue, done)) for _ in range(8)]
    for proc in procs:
        proc.start()
    try:
        slots = sorted(queue.get(timeout=10) for _ in procs)
    finally:
        done.set()
        for proc in procs:
            proc.join(10)
    assert slots == list(range(1, 9))
