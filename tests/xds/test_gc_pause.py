"""The collector is held off while a pause is open, and runs again once none is."""

from __future__ import annotations

import gc
import threading

from clrk_xds import gc_pause


def test_the_collector_is_off_inside_a_pause_and_on_after_it():
    assert gc.isenabled()
    with gc_pause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_nested_and_overlapping_pauses_end_with_the_last_one():
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with gc_pause.paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with gc_pause.paused():
        with gc_pause.paused():
            pass
        assert not gc.isenabled()
        thread.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the other thread's pause is still open
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_pause_that_raises_still_ends():
    try:
        with gc_pause.paused():
            raise RuntimeError("translation failed")
    except RuntimeError:
        pass
    assert gc.isenabled()


def test_a_collector_the_process_turned_off_stays_off():
    gc.disable()
    try:
        with gc_pause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_what_a_freezing_load_builds_is_frozen_as_its_pause_ends_without_a_walk():
    walks = []

    def walked(phase: str, info: dict) -> None:
        walks.append(info["generation"])

    try:
        with gc_pause.freezing():
            with gc_pause.paused():
                built = [[] for _ in range(50_000)]  # far past the collector's threshold
                gc.callbacks.append(walked)
            frozen = gc.get_freeze_count()
            assert frozen >= len(built) and gc.get_count()[0] < 1_000
            assert walks == []  # the pause's end froze them before any walk
        assert gc.get_freeze_count() <= frozen  # nothing more at the block's end
        with gc_pause.paused():
            later = [[] for _ in range(1_000)]
        assert gc.get_freeze_count() <= frozen and later  # a later load is not frozen
    finally:
        gc.callbacks.remove(walked)
        gc.unfreeze()


def test_a_freezing_block_without_a_pause_freezes_at_its_end():
    try:
        with gc_pause.freezing():
            built = [[] for _ in range(1_000)]
        assert gc.get_freeze_count() >= len(built)
    finally:
        gc.unfreeze()
