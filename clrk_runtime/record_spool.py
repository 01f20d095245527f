"""The records spool: an append-only, bounded queue on disk between a service and its
OTLP collector, so that neither a crash nor an unreachable collector loses a record.

Layout of the spool directory (owner-only, one process at a time: `lock` is flocked):

- `<seq>.seg`: segments of frames, numbered upwards.  A process appends only to a
  segment it created, so a tail torn by an earlier crash is never written after.
- `offset`: `<seq> <byte>` of the first frame the collector has not acknowledged,
  replaced atomically after every delivered batch; a restart resumes there.
- `metrics.prom`: the spool's counters in the Prometheus text format (a textfile
  collector's input).

A frame is one record: `<crc32 u32><trace length u32><logs length u32>`, then the
record's serialized ExportTraceServiceRequest and ExportLogsServiceRequest.

Durability: every frame is handed to the kernel with one write(2) before `append`
returns, so a killed process loses nothing.  The shipper fdatasyncs the active segment
once a second from a thread of its own (also while the collector is down or slow), and a
finished segment is synced before it is closed, so a power loss loses at most the last
second.
Delivery is at least once: a crash between the collector's answer and the offset's
update sends that batch again.

Bounded: frames that would take the spool over `max_bytes` are dropped and counted;
the owner says so (log, metric, a record written into a small reserve kept for it).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("clrk.records.spool")

HEADER = struct.Struct("<III")
SEGMENT_BYTES = 4 << 20
RESERVE_BYTES = 64 << 10  # kept for the records that say the spool is full
_SEGMENT = re.compile(r"^(\d{12})\.seg$")


class SpoolError(Exception):
    """The spool directory cannot be used (in use by another process, not writable)."""


def frame(traces: bytes, logs: bytes) -> bytes:
    body = traces + logs
    return HEADER.pack(zlib.crc32(body), len(traces), len(logs)) + body


@dataclass(frozen=True, order=True, slots=True)
class Position:
    seq: int
    offset: int


@dataclass
class Batch:
    """Frames read from the spool: their trace and log requests, concatenated."""

    traces: bytes
    logs: bytes
    records: int
    end: Position  # the position after the last frame read (or torn bytes skipped)


class Spool:
    def __init__(self, directory: str, max_bytes: int = 256 << 20) -> None:
        if max_bytes < 2 * RESERVE_BYTES:
            raise SpoolError(f"spool size {max_bytes} is below the minimum {2 * RESERVE_BYTES}")
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = min(SEGMENT_BYTES, max_bytes // 8)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool directory {self.dir}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool directory {self.dir} is in use by another process") from None
        self._mutex = threading.RLock()  # the shipper waits on `appended` holding it
        self.appended = threading.Condition(self._mutex)
        sizes = {seq: (self.dir / _name(seq)).stat().st_size for seq in self.segments()}
        self._sizes = sizes  # seq -> bytes, every segment on disk
        self.dropped = 0  # frames refused because the spool was full, since start
        self.written = 0  # frames appended since start
        self.full = False
        self._fd = -1
        self._seq = max(sizes, default=0)
        self._roll()

    # --- writing (any thread) ----------------------------------------------------------

    def _roll(self) -> None:
        if self._fd >= 0:
            # The periodic sync only ever reaches the active segment: what this one got
            # since then would otherwise stay in the page cache for good.
            with contextlib.suppress(OSError):
                os.fdatasync(self._fd)
            os.close(self._fd)
        self._seq += 1
        path = self.dir / _name(self._seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._sizes[self._seq] = 0
        _sync_directory(self.dir)  # the new segment's name must outlive a power loss too

    @property
    def active(self) -> int:
        return self._seq

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def append(self, data: bytes, *, reserve: bool = False) -> bool:
        """Write one frame (one write(2)); False if the spool is full (or the disk is).
        `reserve` may use the last RESERVE_BYTES, kept for saying that the spool is full."""
        with self._mutex:
            limit = self.max_bytes if reserve else self.max_bytes - RESERVE_BYTES
            if self.bytes + len(data) > limit:
                self.dropped += not reserve
                return False
            if self._sizes[self._seq] >= self.segment_bytes:
                self._roll()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                log.error("cannot append to the records spool %s: %s", self.dir, exc)
                self._roll()  # never append after a partial frame
                self.dropped += 1
                return False
            self._sizes[self._seq] += len(data)
            self.written += 1
            self.appended.notify_all()
            return True

    def sync(self) -> None:
        """fdatasync the active segment without holding up appends meanwhile (a copy of
        the descriptor, so a roll may close the original)."""
        with self._mutex:
            if self._fd < 0:
                return
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._mutex:
            if self._fd >= 0:
                os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1
        os.close(self._lock_fd)

    # --- reading (the shipper) ---------------------------------------------------------

    def segments(self) -> list[int]:
        return sorted(int(m[1]) for p in os.listdir(self.dir) if (m := _SEGMENT.match(p)))

    def load_offset(self) -> Position:
        try:
            seq, offset = (self.dir / "offset").read_text().split()
            return Position(int(seq), int(offset))
        except (OSError, ValueError):
            first = min(self._sizes, default=self._seq)
            return Position(first, 0)

    def read(self, start: Position, max_records: int, max_bytes: int) -> Batch:
        """Whole frames from `start` on, across segments, up to `max_records` records or
        about `max_bytes`.  Bytes after the last whole frame of a finished segment (torn
        by an earlier crash, or failing the checksum) are skipped, and said so; in the
        active segment they are a frame not yet complete."""
        traces: list[memoryview] = []
        logs: list[memoryview] = []
        records = size = 0
        pos = start
        with self._mutex:
            later = sorted(seq for seq in self._sizes if seq >= start.seq)
            active = self._seq
        for seq in later:
            if seq > pos.seq:
                pos = Position(seq, 0)
            try:
                with open(self.dir / _name(seq), "rb") as fh:
                    fh.seek(pos.offset)
                    view = memoryview(fh.read())
            except FileNotFoundError:
                continue
            used = 0
            while records < max_records and size < max_bytes:
                if len(view) - used < HEADER.size:
                    break
                crc, tlen, llen = HEADER.unpack_from(view, used)
                end = used + HEADER.size + tlen + llen
                if end > len(view):
                    break
                body = view[used + HEADER.size : end]
                if zlib.crc32(body) != crc:
                    break
                traces.append(body[:tlen])
                logs.append(body[tlen:])
                records += 1
                size += end - used
                used = end
            pos = Position(seq, pos.offset + used)
            if records >= max_records or size >= max_bytes or seq == active:
                break
            if used < len(view):
                log.error(
                    "records spool %s: skipping %d damaged bytes at the end of segment %d",
                    self.dir, len(view) - used, seq,
                )  # fmt: skip
                pos = Position(seq, pos.offset + len(view) - used)
        return Batch(b"".join(traces), b"".join(logs), records, pos)

    def commit(self, pos: Position) -> None:
        """The collector has everything before `pos`: remember it, remove what is done."""
        tmp = self.dir / "offset.tmp"
        tmp.write_text(f"{pos.seq} {pos.offset}\n")
        os.replace(tmp, self.dir / "offset")
        with self._mutex:
            done = [seq for seq in self._sizes if seq < pos.seq and seq != self._seq]
            for seq in done:
                del self._sizes[seq]
        for seq in done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / _name(seq))

    def at_end(self, pos: Position) -> bool:
        with self._mutex:
            return pos.seq == self._seq and pos.offset >= self._sizes[self._seq]

    def write_metrics(self, shipped: int, refused: int, failed_batches: int) -> None:
        with self._mutex:
            values = {
                "clrk_records_spool_bytes": self.bytes,
                "clrk_records_spool_max_bytes": self.max_bytes,
                "clrk_records_spool_full": int(self.full),
                "clrk_records_spool_dropped_total": self.dropped,
                "clrk_records_spool_written_total": self.written,
                "clrk_records_shipped_total": shipped,
                "clrk_records_refused_total": refused,
                "clrk_records_ship_failures_total": failed_batches,
            }
        text = "".join(f"{k} {v}\n" for k, v in values.items())
        tmp = self.dir / "metrics.prom.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / "metrics.prom")


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _name(seq: int) -> str:
    return f"{seq:012d}.seg"
