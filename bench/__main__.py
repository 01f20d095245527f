"""Run every benchmark and print its table."""

from __future__ import annotations

import argparse

from bench import (
    decide_bench,
    dialer_bench,
    envoy_bench,
    l7_bench,
    memory_bench,
    reload_bench,
    xds_bench,
)

BENCHMARKS = {
    "decide": decide_bench,
    "xds": xds_bench,
    "reload": reload_bench,
    "dialer": dialer_bench,
    "envoy": envoy_bench,
    "l7": l7_bench,
    "memory": memory_bench,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    parser.add_argument(
        "only", nargs="*", choices=[[], *BENCHMARKS], metavar="NAME",
        help=f"run only these ({', '.join(BENCHMARKS)}); default: all",
    )  # fmt: skip
    args = parser.parse_args()
    for name, module in BENCHMARKS.items():
        if not args.only or name in args.only:
            module.main(quick=args.quick)
            print()


if __name__ == "__main__":
    main()
