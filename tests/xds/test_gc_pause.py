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
