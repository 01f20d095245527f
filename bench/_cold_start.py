"""One control plane cold start, run by the xds benchmark in a fresh interpreter: import
the control plane, read the manifests under a directory (read + parse + validate: load),
then `clrk_xds.provider.plan` as the control plane runs it before it serves (compile,
translate, build and check the snapshots), with the translator timed on its own: the
process's first translation (no class plan, an empty chain cache).  Prints one JSON line
with the milliseconds of each step (wall), the translation's CPU time and the
process's."""

from __future__ import annotations

import time

_started = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402

from clrk_xds import gc_pause  # noqa: E402
from clrk_xds.provider import default_translator, plan, read_manifests  # noqa: E402


def main(directory: str) -> None:
    imported = time.perf_counter()
    translator = default_translator()
    marks: dict[str, float] = {}

    def timed(policies):
        marks["translate_from"], marks["cpu_from"] = time.perf_counter(), time.process_time()
        try:
            return translator(policies)
        finally:
            marks["translate_to"], marks["cpu_to"] = time.perf_counter(), time.process_time()

    # As `clrk_xds.provider.prepare` in a control plane's first load (`clrk_xds.server`).
    with gc_pause.freezing(), gc_pause.paused():
        load = read_manifests([directory])
        loaded = time.perf_counter()
        result = plan(load, timed)
        done = time.perf_counter()
    if result.blocked:
        raise SystemExit(f"the benchmark's policy did not apply: {result.errors[:3]}")
    ms = 1000
    line = {
        "imports_ms": (imported - _started) * ms,
        "load_ms": (loaded - imported) * ms,
        "compile_ms": (marks["translate_from"] - loaded) * ms,
        "translate_ms": (marks["translate_to"] - marks["translate_from"]) * ms,
        "snapshot_ms": (done - marks["translate_to"]) * ms,
        "translate_cpu_ms": (marks["cpu_to"] - marks["cpu_from"]) * ms,
        "cpu_ms": time.process_time() * ms,
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
