"""The records spool on a real directory: frames in order across segments, the offset
kept over a restart, torn tails skipped, one owner at a time, and the bound."""

from __future__ import annotations

import os

import pytest

from clrk_runtime.record_spool import RESERVE_BYTES, Position, Spool, SpoolError, frame


def frames(n: int, start: int = 0, size: int = 10) -> list[bytes]:
    return [
        frame(f"t{i}".encode().ljust(size, b"."), f"l{i}".encode()) for i in range(start, start + n)
    ]


def test_frames_come_back_in_order_across_segments_and_done_segments_are_removed(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=1 << 20)  # segments of 128 KiB
    for data in frames(3000, size=100):
        assert spool.append(data)
    assert len(spool.segments()) > 2
    pos, seen = spool.load_offset(), 0
    while True:
        batch = spool.read(pos, 512, 1 << 20)
        if not batch.records:
            break
        assert batch.logs == b"".join(f"l{i}".encode() for i in range(seen, seen + batch.records))
        seen += batch.records
        spool.commit(batch.end)
        pos = batch.end
    assert seen == 3000 and spool.at_end(pos)
    assert spool.segments() == [spool.active]
    spool.close()


def test_a_restart_resumes_after_the_last_commit_in_a_new_segment(tmp_path):
    spool = Spool(str(tmp_path))
    for data in frames(10):
        spool.append(data)
    batch = spool.read(spool.load_offset(), 4, 1 << 20)
    spool.commit(batch.end)
    spool.close()
    again = Spool(str(tmp_path))
    for data in frames(2, start=10):
        again.append(data)
    batch = again.read(again.load_offset(), 100, 1 << 20)
    assert batch.records == 8
    assert batch.logs == b"".join(f"l{i}".encode() for i in range(4, 12))
    again.close()


def test_a_torn_tail_left_by_a_crash_is_skipped_and_said(tmp_path, caplog):
    spool = Spool(str(tmp_path))
    first, second = frames(2)
    spool.append(first)
    spool.close()
    segment = tmp_path / f"{spool.active:012d}.seg"
    with open(segment, "ab") as fh:
        fh.write(second[:7])  # a crash in the middle of a frame
    again = Spool(str(tmp_path))
    again.append(frames(1, start=5)[0])
    batch = again.read(again.load_offset(), 100, 1 << 20)
    assert batch.logs == b"l0l5"
    assert "skipping 7 damaged bytes" in caplog.text
    again.close()


def test_a_frame_failing_its_checksum_is_not_shipped(tmp_path):
    spool = Spool(str(tmp_path))
    spool.append(frames(1)[0])
    spool.close()
    segment = tmp_path / f"{spool.active:012d}.seg"
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    again = Spool(str(tmp_path))
    assert again.read(again.load_offset(), 100, 1 << 20).records == 0
    again.close()


def test_one_process_at_a_time(tmp_path):
    spool = Spool(str(tmp_path))
    try:
        with pytest.raises(SpoolError, match="in use by another process"):
            Spool(str(tmp_path))
    finally:
        spool.close()


def test_the_directory_is_owner_only(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    spool.close()
    assert os.stat(tmp_path / "spool").st_mode & 0o777 == 0o700


def test_a_full_spool_refuses_and_counts_but_keeps_a_reserve(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=256 << 10)
    accepted = sum(spool.append(data) for data in frames(20_000, size=100))
    assert spool.dropped == 20_000 - accepted > 0
    assert spool.bytes <= spool.max_bytes - RESERVE_BYTES
    assert spool.append(frames(1)[0], reserve=True)  # room to say that it is full
    spool.close()


def test_positions_order_by_segment_then_offset():
    assert Position(1, 900) < Position(2, 0) < Position(2, 1)


def test_a_finished_segment_is_synced_before_it_is_closed(tmp_path, monkeypatch):
    """The periodic sync reaches only the active segment: a roll must sync the old one."""
    synced: list[str] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    spool = Spool(str(tmp_path), max_bytes=1 << 20)  # segments of 128 KiB
    first = spool.active
    monkeypatch.setattr(os, "fdatasync", spy)
    while spool.active == first:
        assert spool.append(frames(1, size=1000)[0])
    assert f"{first:012d}.seg" in synced
    monkeypatch.undo()
    spool.close()


def test_sync_does_not_hold_up_appends_or_trip_over_a_roll(tmp_path, monkeypatch):
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    appended = []

    def slow_sync(fd: int) -> None:  # an append while the disk is busy syncing
        if not appended:
            appended.append(spool.append(frames(1)[0]))
            spool._roll()  # and a roll closing the descriptor being synced

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    spool.sync()
    monkeypatch.undo()
    assert appended == [True]
    spool.close()
