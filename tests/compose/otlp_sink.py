"""`python otlp_sink.py --listen unix:PATH --file FILE`: a stand-in for the OpenTelemetry
Collector where no collector image can be had (compose.offline.yaml runs it in the clrk
image).

A real OTLP/gRPC receiver for traces and logs, as the stack's collector is configured:
each export request is appended to FILE as one OTLP-JSON line (the collector's file
exporter format, which `clrk records --file` reads), and each record in it is printed as
one line, `SIGNAL NAME {attributes}`, for `docker compose logs` (the debug exporter's
part).  Prints "listening" once bound; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from clrk.records.otlp_json import to_otlp_line
from clrk.records.query import records_from_line


class Sink(trace_service_pb2_grpc.TraceServiceServicer, logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def Export(self, request, context):  # both services name their method Export
        line = to_otlp_line(request)
        with self.lock:
            with open(self.path, "ab") as out:
                out.write(line)
            for record in records_from_line(line):
                attributes = json.dumps(record["attributes"], sort_keys=True)
                print(f"{record['signal']} {record['name']} {attributes}", flush=True)
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            return trace_service_pb2.ExportTraceServiceResponse()
        return logs_service_pb2.ExportLogsServiceResponse()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="gRPC address, e.g. unix:/run/otlp.sock")
    parser.add_argument("--file", required=True, help="OTLP-JSON lines file to append to")
    args = parser.parse_args(argv)
    sink = Sink(args.file)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(sink, server)
    if server.add_insecure_port(args.listen) == 0:
        raise SystemExit(f"cannot listen on {args.listen}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"listening on {args.listen}", flush=True)
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
