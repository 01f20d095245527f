"""RecordWriter: each Record becomes one span and one log record (SPEC 8), handed to the
kernel before `emit` returns, so a record exists before the agent learns the decision
(a reset, a 403) and no kill of the process loses one.

Destinations (both may be given):

- `path`: OTLP/JSON lines appended to a local file, one `{"resourceSpans": [...]}` and one
  `{"resourceLogs": [...]}` line per record (the format of the Collector's file
  exporter), which `clrk records` and a Collector's file receiver read.  Both lines go
  out in one O_APPEND write(2), so writers in several threads or processes never
  interleave inside a line.
- `otlp_endpoint` ("host:port" or "http://host:port" = plaintext, "https://..." = TLS,
  "unix:///path" = a collector's Unix socket, plaintext) with `spool_dir`: each record is
  appended to the on-disk spool (`record_spool`) and a shipper thread exports it from
  there over OTLP/gRPC, so a crash or an unreachable collector loses none.  A spool that
  fills up drops records and says so: an error log, `clrk_records_spool_dropped_total`
  in the spool's metrics file, and a `clrk.records.spool_full` record.

The API, for every service: `emit(record)` (synchronous: a few tens of microseconds of
encoding and one write(2) per destination; never raises), `flush(timeout_ms)` (waits for
the collector to have everything emitted so far; a file needs nothing) and `shutdown()`.
Records are encoded directly (`record_encoding`), not through the OpenTelemetry SDK.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref

from clrk.records.schema import Record, spool_full
from clrk_runtime.record_encoding import Ids, JsonEncoder, ProtobufEncoder
from clrk_runtime.record_shipper import Shipper
from clrk_runtime.record_spool import Spool, SpoolError, frame

log = logging.getLogger(__name__)

DEFAULT_SPOOL_BYTES = 256 << 20

__all__ = ["DEFAULT_SPOOL_BYTES", "RecordFile", "RecordWriter", "SpoolError"]


class RecordFile:
    """Appends encoded records to `path`, one write(2) each.

    The descriptor stays open; a file removed or renamed away (rotation) is noticed on
    the next append and a new one created at `path`.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = threading.Lock()
        self._fd = -1
        self._inode: tuple[int, int] | None = None
        self._open()  # fail at construction, not on the first record

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._inode = fd, (st.st_dev, st.st_ino)

    def _current(self) -> int:
        """The descriptor of the file at `path` now (reopened after a rotation); the
        caller holds the lock."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                return self._fd
        except FileNotFoundError:
            pass
        self._open()
        return self._fd

    def append(self, data: bytes) -> bool:
        # Under the lock: another thread's reopen or close must not free the descriptor
        # this write uses (its number could be a socket's by then).
        with self._lock:
            try:
                fd = self._current()
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                return True
            except OSError as exc:
                log.warning("cannot append records to %s: %s", self.path, exc)
                return False

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _close(file: RecordFile | None, shipper: Shipper | None, spool: Spool | None) -> None:
    try:
        if shipper is not None:
            shipper.stop()
        if spool is not None:
            spool.close()
        if file is not None:
            file.close()
    except Exception:  # never raise out of shutdown or interpreter exit
        log.exception("records: shutdown failed")


class RecordWriter:
    def __init__(
        self,
        service_name: str,
        *,
        otlp_endpoint: str | None = None,
        path: str | None = None,
        spool_dir: str | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_BYTES,
        export_timeout_s: float = 5.0,
    ) -> None:
        if otlp_endpoint is None and path is None:
            raise ValueError("RecordWriter needs an otlp_endpoint or a path")
        if otlp_endpoint is not None and spool_dir is None:
            raise ValueError(
                "an OTLP endpoint needs a spool directory: records go to disk before the "
                "collector, so that a crash or a collector that is down loses none"
            )
        if spool_dir is not None and otlp_endpoint is None:
            raise ValueError("a spool directory is only for an OTLP endpoint")
        self.service_name = service_name
        self._json = JsonEncoder(service_name) if path is not None else None
        self._protobuf = ProtobufEncoder(service_name) if otlp_endpoint is not None else None
        self.file = RecordFile(path) if path is not None else None
        self.spool: Spool | None = None
        self.shipper: Shipper | None = None
        if otlp_endpoint is not None and spool_dir is not None:
            self.spool = Spool(spool_dir, spool_max_bytes)
            self.shipper = Shipper(self.spool, otlp_endpoint, export_timeout_s)
            self.shipper.start()
        self._dropping = 0  # records dropped since the spool filled; 0 = not full
        self._full_lock = threading.Lock()
        # Runs once: on shutdown(), when the writer is collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, _close, self.file, self.shipper, self.spool)

    def emit(self, record: Record) -> None:
        """Write one span and one log record to every destination.  Never raises."""
        if not self._finalizer.alive:
            return
        try:
            ids = Ids.new(record)
            if self._json is not None and self.file is not None:
                self.file.append(self._json.lines(record, ids))
            if self._protobuf is not None:
                self._spool(record, ids)
        except Exception:
            log.exception("records: cannot emit %s", record.name)

    def _spool(self, record: Record, ids: Ids) -> None:
        assert self.spool is not None and self._protobuf is not None
        data = frame(*self._protobuf.requests(record, ids))
        with self._full_lock:
            if self.spool.append(data):
                if self._dropping:
                    self._say_full(recovered=True)
                return
            self._dropping += 1
            if self._dropping == 1:
                self._say_full(recovered=False)

    def _say_full(self, *, recovered: bool) -> None:
        """The spool filled up (or has room again): an error log, the metric, a record."""
        spool = self.spool
        assert spool is not None and self._protobuf is not None
        dropped, spool.full = self._dropping, not recovered
        if recovered:
            self._dropping = 0
            log.error(
                "records spool %s has room again: %d records were dropped while it was full",
                spool.dir, dropped,
            )  # fmt: skip
        else:
            log.error(
                "records spool %s is full (%d bytes; is the collector down?): dropping records",
                spool.dir, spool.max_bytes,
            )  # fmt: skip
        note = spool_full(
            directory=str(spool.dir), max_bytes=spool.max_bytes, dropped=dropped, full=not recovered
        )
        note_ids = Ids.new(note)
        spool.append(frame(*self._protobuf.requests(note, note_ids)), reserve=True)
        if self.file is not None and self._json is not None:
            self.file.append(self._json.lines(note, note_ids))

    def flush(self, timeout_ms: int = 10_000) -> bool:
        """True once everything emitted so far is written (a file: at once) and, with a
        collector, delivered to it."""
        if not self._finalizer.alive:
            return False
        if self.shipper is None:
            return True
        return self.shipper.wait_until_shipped(timeout_ms / 1000)

    def shutdown(self) -> None:
        """Deliver what the spool holds for a moment, then stop; later calls (and emits)
        do nothing.  What was not delivered stays in the spool for the next start."""
        self._finalizer()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
