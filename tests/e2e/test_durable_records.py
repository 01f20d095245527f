"""N denials leave exactly N records, also when the dialer is killed (issue 11, item 6).

An agent (python in its sandbox) connects in a loop to a destination the policy denies,
noting each connection's source port, start, end and what it saw; meanwhile the dialer
is killed with SIGKILL and started again, several times.  Every connection refused by a
running dialer has exactly one record (its port, within its lifetime), no record is
for a connection the agent did not make, none is written twice.  The only refused
connections without a record are the ones the kill itself cut: the kernel resets what
the dead dialer had not decided yet, and those were open while the dialer died.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import threading
import time

from clrk.records.query import iter_records, select
from tests.e2e.dialer_proc import DialerProcess
from tests.e2e.topology import Topology, sources

AGENT_INDEX = 80
KILLS = 5
POLICY = """
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: egress}
spec:
  listeners: [{name: tcp, protocol: TCP}]
  dns: {upstream: ["198.51.100.53:53"]}
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {name: web}
spec:
  parentRefs: [{name: egress, sectionName: tcp}]
  rules:
  - matches: [{destinationHostnames: [example.test], ports: [{port: 80}]}]
---
apiVersion: clrk.apoxy.dev/v1alpha1
kind: DaemonAgent
metadata: {name: looper}
spec: {egressRefs: [{gatewayRef: egress}]}
"""

# Connects until stdin closes; one JSON line per connection: [port, start, end, outcome].
AGENT_LOOP = textwrap.dedent("""
    import json, select, socket, sys, time
    while not select.select([sys.stdin], [], [], 0)[0]:
        s = socket.socket()
        s.settimeout(5)
        start = time.time_ns()
        try:
            s.connect(("192.0.2.12", 80))  # a hard-coded IP no rule allows
            outcome = "reset" if s.recv(1) == b"" else "data"
        except ConnectionResetError:  # an RST, also one quicker than connect's poll
            outcome = "reset"
        except ConnectionRefusedError:  # nothing listening: the dialer is down
            outcome = "no-listener"
            time.sleep(0.005)
        except TimeoutError:
            outcome = "timeout"
        port = s.getsockname()[1]
        s.close()
        print(json.dumps([port, start, time.time_ns(), outcome]), flush=True)
""")


def test_every_connection_refused_by_a_live_dialer_has_exactly_one_record_across_kills(
    topology: Topology,
):
    manifests = topology.workdir / "durable-policy.yaml"
    manifests.write_text(POLICY)
    agent = topology.add_agent(AGENT_INDEX)
    dialer = loop = None
    kills: list[tuple[int, int]] = []  # (SIGKILL sent, the dialer reaped)
    try:
        start = dict(gateway="default/egress", sources=sources(AGENT_INDEX, "looper"))
        dialer = DialerProcess(topology, manifests, name="durable", **start)
        dialer.records_path.unlink(missing_ok=True)  # records of an earlier run of this test
        loop = agent.processes.start(
            agent.argv(["python3", "-c", AGENT_LOOP]), stdin=subprocess.PIPE
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(loop.stdout), daemon=True)
        reader.start()  # a full pipe would stop the agent
        for _ in range(KILLS):
            time.sleep(1.5)
            sent = time.time_ns()
            os.kill(dialer.proc.pid, signal.SIGKILL)  # `ip netns exec` exec'd the dialer
            dialer.proc.wait(5)
            kills.append((sent, time.time_ns()))
            dialer.stop()
            dialer = DialerProcess(topology, manifests, name="durable", **start)
        time.sleep(1.5)
        loop.stdin.close()
        loop.wait(10)
        reader.join(10)
        assert loop.returncode == 0, agent.processes.stderr_text(loop)
    finally:
        if loop is not None:
            agent.processes.stop(loop)
        if dialer is not None:
            dialer.stop()
        topology.remove_agent(agent)

    connections = [json.loads(line) for line in lines]
    spans = list(
        select(iter_records(str(dialer.records_path)), name="egress.dial.denied", signal="span")
    )
    by_port: dict[int, list[int]] = {}
    for span in spans:
        address = span["attributes"]["client.address"]
        assert address.startswith(agent.address_v4 + ":")
        by_port.setdefault(int(address.rsplit(":", 1)[1]), []).append(span["time"])

    outcomes: dict[str, int] = {}
    unrecorded, matched = [], 0
    for port, begin, end, outcome in connections:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        mine = [t for t in by_port.get(port, []) if begin <= t <= end]
        if outcome != "reset":
            assert mine == [], (port, outcome)
            continue
        assert len(mine) <= 1, f"port {port}: {len(mine)} records for one connection"
        matched += len(mine)
        if not mine:
            unrecorded.append((begin, end))
    print(
        f"\n{len(connections)} connections {outcomes}; {len(spans)} records, {matched} "
        f"matched; {len(unrecorded)} reset by the kernel at one of {KILLS} kills"
    )
    assert outcomes.get("reset", 0) >= 100  # the loop really ran against a live dialer
    assert outcomes.get("timeout", 0) == 0 and outcomes.get("data", 0) == 0
    assert matched == len(spans)  # no record without the connection it is about
    for begin, end in unrecorded:  # only what a kill cut off: alive while the dialer died
        assert any(begin <= dead and end >= sent for sent, dead in kills), (begin, end, kills)
    # One loop: the connection being decided, and the next, queued while the dialer died.
    assert len(unrecorded) <= 2 * KILLS
