"""One control plane cold start, run by the xds benchmark in a fresh interpreter: read
the manifests under a directory, validate, compile, translate, build and check the
snapshots (`clrk_xds.provider.prepare`, what the control plane does before it serves),
then print one JSON line with the CPU time and the wall time of `prepare`."""

from __future__ import annotations

import json
import sys
import time


def main(directory: str) -> None:
    from clrk_xds.provider import default_translator, prepare

    started = time.perf_counter()
    plan = prepare([directory], default_translator())
    prepare_ms = (time.perf_counter() - started) * 1000
    if plan.blocked:
        raise SystemExit(f"the benchmark's policy did not apply: {plan.errors[:3]}")
    line = {"prepare_ms": prepare_ms, "cpu_ms": time.process_time() * 1000}
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
