"""`python -m clrk_extproc --listen HOST:PORT --records FILE [--otlp-endpoint URL]`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from clrk_extproc.server import main
from clrk_runtime.logs import setup
from clrk_runtime.records_writer import RecordWriter

SERVICE_NAME = "clrk-extproc"


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clrk_extproc", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:18002", help="gRPC address")
    parser.add_argument("--records", default=None, help="OTLP-JSON lines file for records")
    parser.add_argument("--otlp-endpoint", default=None, help="OTLP/gRPC collector")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if not args.records and not args.otlp_endpoint:
        parser.error("give --records FILE or --otlp-endpoint URL (or both)")
    setup(args.log_level)
    writer = RecordWriter(SERVICE_NAME, otlp_endpoint=args.otlp_endpoint, path=args.records)
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
