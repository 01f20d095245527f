"""Run every benchmark and print its table."""

from __future__ import annotations

import argparse

from bench import decide_bench


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    args = parser.parse_args()
    decide_bench.main(quick=args.quick)


if __name__ == "__main__":
    main()
