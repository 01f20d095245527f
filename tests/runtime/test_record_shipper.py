"""The shipper's own duties that the writer's tests (tests/records/test_writer.py, a
real OTLP collector over gRPC) do not reach: syncing the spool while the collector
hangs."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from clrk_runtime import record_shipper
from clrk_runtime.record_shipper import Shipper
from clrk_runtime.record_spool import Spool, frame


@pytest.fixture
def hanging_collector(tmp_path):
    """A real gRPC server that takes the export call and never answers it."""
    release = threading.Event()

    def hang(request: bytes, context) -> bytes:
        release.wait(60)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(hang)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    endpoint = f"unix://{tmp_path}/collector.sock"
    server.add_insecure_port(endpoint)
    server.start()
    yield endpoint, release
    release.set()
    server.stop(0)


def test_the_spool_is_synced_every_second_while_the_collector_hangs(
    tmp_path, monkeypatch, hanging_collector
):
    """The shipping thread waits on the call for its whole timeout; the records written
    meanwhile must still reach the disk once a second."""
    monkeypatch.setattr(record_shipper, "SYNC_INTERVAL", 0.05)
    spool = Spool(str(tmp_path / "spool"))
    syncs = threading.Semaphore(0)
    real_sync = spool.sync

    def counted() -> None:
        real_sync()
        syncs.release()

    spool.sync = counted  # type: ignore[method-assign]
    endpoint, release = hanging_collector
    shipper = Shipper(spool, endpoint, timeout_s=30.0)
    shipper.start()
    try:
        spool.append(frame(b"t", b"l"))
        deadline = time.monotonic() + 15
        for _ in range(5):
            assert syncs.acquire(timeout=max(0.0, deadline - time.monotonic()))
        assert shipper.shipped == 0
        assert (tmp_path / "spool" / "metrics.prom").exists()
    finally:
        release.set()
        shipper.stop(drain_s=0)
        spool.close()
