"""`python -m clrk_extproc --listen HOST:PORT [--records FILE]
[--otlp-endpoint URL --spool-dir DIR]`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from clrk_extproc.server import main
from clrk_runtime.logs import setup
from clrk_runtime.records_writer import DEFAULT_SPOOL_BYTES, RecordWriter, SpoolError

SERVICE_NAME = "clrk-extproc"


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clrk_extproc", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:18002", help="gRPC address")
    parser.add_argument("--records", default=None, help="OTLP-JSON lines file for records")
    parser.add_argument("--otlp-endpoint", default=None, help="OTLP/gRPC collector")
    parser.add_argument(
        "--spool-dir", default=None, help="on-disk spool of records for the collector"
    )
    parser.add_argument("--spool-max-bytes", type=int, default=DEFAULT_SPOOL_BYTES)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if not args.records and not args.otlp_endpoint:
        parser.error("give --records FILE or --otlp-endpoint URL (or both)")
    if args.otlp_endpoint and not args.spool_dir:
        parser.error("--otlp-endpoint needs --spool-dir: records go to disk before the collector")
    setup(args.log_level)
    try:
        writer = RecordWriter(
            SERVICE_NAME,
            otlp_endpoint=args.otlp_endpoint,
            path=args.records,
            spool_dir=args.spool_dir,
            spool_max_bytes=args.spool_max_bytes,
        )
    except (SpoolError, ValueError) as exc:
        parser.error(str(exc))
    try:
        asyncio.run(main(args.listen, writer.emit))
    except OSError as exc:
        print(f"clrk_extproc: {exc}", file=sys.stderr)
        return 1
    finally:
        writer.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
