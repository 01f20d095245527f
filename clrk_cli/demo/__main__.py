"""`python -m clrk_cli.demo [--once]` (`make run`): the gateway on the example policy, offline.

Builds two network namespaces of its own (the root namespace's routes and rules are
never touched):

    sandbox (clrk run) --veth--> host: clrk up (control plane, Envoy, ext_proc, dialer)
                                   --veth--> internet: dnsmasq + servers on
                                             documentation addresses

then runs a scripted agent as `default/bot` that tries the upstreams the policy allows
and the ones it does not, prints what happened with the matching records, and keeps
the gateway running until Ctrl-C.  Everything it created is removed on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clrk_cli.demo import agent as demo_agent
from clrk_cli.demo import report
from clrk_cli.demo.world import READY_TIMEOUT, World
from clrk_cli.embedded.agent_user import agent_python

REPO = Path(__file__).resolve().parents[2]
AGENT = "default/bot"
# What the scripted agent tries (NAME:PORT[:tls]); the zone in world.py answers them.
TARGETS = (
    "api.anthropic.com:443:tls",
    "pg.prod.internal:5432",
    "pastebin.com:443:tls",
    "evil.example:443:tls",
    "192.0.2.66:443",
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m clrk_cli.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--once", action="store_true", help="exit after the table")
    parser.add_argument(
        "-f",
        "--filename",
        default=str(REPO / "examples"),
        help="manifests for clrk up (default: examples/)",
    )
    parser.add_argument("--gateway", default="default/prod-agents")
    parser.add_argument("--state-dir", help="default: a temporary directory, removed at exit")
    parser.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT)
    return parser.parse_args(argv)


def _clrk(*args: str) -> list[str]:
    return [sys.executable, "-m", "clrk_cli", *args]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces); try: sudo make run", file=sys.stderr)
        return 1
    stop = {"signal": None}

    def on_signal(signum, _frame) -> None:
        stop["signal"] = signum

    with tempfile.TemporaryDirectory(prefix="clrk-demo-") as tmp:
        state = Path(args.state_dir or Path(tmp) / "state").resolve()
        with World(Path(tmp)) as world:
            print(f"network: host namespace {world.host}, internet namespace {world.inet}")
            up = world.start_in_host(
                _clrk(
                    "up",
                    "-f",
                    args.filename,
                    "--gateway",
                    args.gateway,
                    "--state-dir",
                    str(state),
                    # Envoy re-originates TLS to the demo upstreams: trust their test CA.
                    "--upstream-ca",
                    str(world.certs["ca"]),
                ),
                log=Path(tmp) / "clrk-up.log",
            )
            if not world.wait_line(up, "clrk ready", args.ready_timeout):
                print((Path(tmp) / "clrk-up.log").read_text()[-4000:], file=sys.stderr)
                print("clrk up did not become ready", file=sys.stderr)
                return 1
            print(f"clrk ready (state in {state}; logs in {state / 'logs'})")
            agent = subprocess.run(
                _clrk(
                    "run",
                    "--agent",
                    AGENT,
                    "--state-dir",
                    str(state),
                    "--",
                    agent_python(),
                    "-I",
                    "-c",
                    Path(demo_agent.__file__).read_text(),
                    *TARGETS,
                ),
                capture_output=True,
                text=True,
                timeout=120,
                cwd=REPO,
                env={
                    **os.environ,
                    "PYTHONPATH": str(REPO),
                    demo_agent.EXTRA_CA: Path(world.certs["ca"]).read_text(),
                },
            )
            if agent.returncode != 0:
                print(agent.stderr, file=sys.stderr)
            attempts = [json.loads(line) for line in agent.stdout.splitlines() if line.strip()]
            time.sleep(0.5)  # the record writers batch
            records = world.records(state / "records.jsonl")
            print(f"\nagent {AGENT} (transparent sandbox via clrk run):\n")
            print(report.table(report.rows(attempts, records)))
            print("\nrecords (clrk records --state-dir ... --name egress.dial.denied):\n")
            print("\n".join(report.record_lines(records)) or "(none)")
            if not args.once:
                signal.signal(signal.SIGINT, on_signal)
                signal.signal(signal.SIGTERM, on_signal)
                print(
                    f"\nthe gateway keeps running; try:\n  clrk run --agent {AGENT} "
                    f"--state-dir {state} -- curl -sS https://api.anthropic.com/\n"
                    "Ctrl-C stops everything.",
                    flush=True,
                )
                while stop["signal"] is None and up.poll() is None:
                    time.sleep(0.2)
            print("stopping", flush=True)
    print("stopped; nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
