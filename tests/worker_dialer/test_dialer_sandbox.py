"""sandbox: creating and removing a real agent sandbox in a throw-away host namespace."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest

from clrk_worker_dialer.redirect_rules import spec_for_index
from clrk_worker_dialer.sandbox import SandboxError, create_sandbox, remove_leftovers
from tests.netns_helpers import scratch_netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
]

RUN = f"p{os.getpid()}"


def _out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _netns() -> set[str]:
    """This test run's namespaces (others may be making and removing their own meanwhile)."""
    names = {line.split()[0] for line in _out("ip", "netns", "list").splitlines() if line}
    return {name for name in names if name.startswith(f"clrk-sbt-{RUN}-")}


@pytest.fixture
def host_ns() -> Iterator[str]:
    with scratch_netns(f"clrk-sbt-{RUN}-host") as name:
        yield name


def _spec(host: str, index: int = 1):
    return spec_for_index(
        index, f"clrk-sbt-{RUN}-a{index}", tcp_port=15001, udp_port=15002, dns_port=15053,
        host_netns=host,
    )  # fmt: skip


def _host_state(host: str) -> dict[str, str]:
    """What a sandbox may change in its host namespace, without counters and timestamps."""

    def save(binary: str) -> str:
        # Rules and user chains only: nf_tables keeps emptied tables, which is harmless.
        text = _out("ip", "netns", "exec", host, binary)
        return "\n".join(
            line
            for line in text.splitlines()
            if line.startswith(("-A", "-I")) or (line.startswith(":") and line.split()[1] == "-")
        )

    return {
        "links": _out("ip", "-n", host, "-o", "link", "show"),
        "addrs": _out("ip", "-n", host, "-o", "addr", "show"),
        "rules4": _out("ip", "-n", host, "-4", "rule", "show"),
        "rules6": _out("ip", "-n", host, "-6", "rule", "show"),
        "table4": _out("ip", "-n", host, "-4", "route", "show", "table", "all"),
        "table6": _out("ip", "-n", host, "-6", "route", "show", "table", "all"),
        "iptables": save("iptables-save"),
        "ip6tables": save("ip6tables-save"),
    }


def test_create_then_teardown_leaves_nothing(host_ns):
    before, netns_before = _host_state(host_ns), _netns()
    spec = _spec(host_ns)
    sandbox = create_sandbox(spec)
    try:
        assert spec.name in _netns()
        nat = _out("ip", "netns", "exec", host_ns, "iptables", "-t", "nat", "-S", spec.chain)
        assert f"-A {spec.chain} -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053" in nat
        assert f"-A {spec.chain} -p tcp -j REDIRECT --to-ports 15001" in nat
        mangle6 = _out("ip", "netns", "exec", host_ns, "ip6tables", "-t", "mangle", "-S")
        assert f"-A PREROUTING -i {spec.host_if} -j {spec.chain}" in mangle6
        assert "--on-port 15002 --on-ip :: --tproxy-mark 0x1/0x1" in mangle6
        assert "fwmark 0x1/0x1 lookup 100" in _out("ip", "-n", host_ns, "-6", "rule")
        assert "local default dev lo" in _out("ip", "-n", host_ns, "route", "show", "table", "100")
        agent_addrs = _out("ip", "-n", spec.name, "-o", "addr", "show", "dev", spec.agent_if)
        assert f"{spec.agent_v4}/30" in agent_addrs and f"{spec.agent_v6}/64" in agent_addrs
        assert "tentative" not in agent_addrs.split("scope global")[-1].split("\n")[0]
        assert f"default via {spec.host_v4}" in _out("ip", "-n", spec.name, "route")
        assert f"default via {spec.host_v6}" in _out("ip", "-n", spec.name, "-6", "route")
        lo = _out("ip", "-n", spec.name, "link", "show", "lo")
        assert "UP" in lo
        assert sandbox.exec_argv(["true"]) == ["ip", "netns", "exec", spec.name, "true"]
        subprocess.run(sandbox.exec_argv(["true"]), check=True)
    finally:
        assert sandbox.teardown() == []
    assert _host_state(host_ns) == before
    assert _netns() == netns_before
    assert sandbox.teardown() == []  # idempotent


def test_policy_routing_is_shared_and_goes_with_the_last_sandbox(host_ns):
    before = _host_state(host_ns)
    with create_sandbox(_spec(host_ns, 1)), create_sandbox(_spec(host_ns, 2)) as second:
        rules = _out("ip", "-n", host_ns, "-4", "rule")
        assert rules.count("fwmark 0x1/0x1 lookup 100") == 1
        second.teardown()
        assert "fwmark 0x1/0x1 lookup 100" in _out("ip", "-n", host_ns, "-4", "rule")
        assert "local default" in _out("ip", "-n", host_ns, "-6", "route", "show", "table", "100")
    assert _host_state(host_ns) == before


def test_failure_half_way_removes_what_was_created(host_ns):
    """A chain of the same name already exists late in the sequence: create must fail
    with a clear error and leave the host namespace as it found it."""
    spec = _spec(host_ns)
    subprocess.run(
        ["ip", "netns", "exec", host_ns, "ip6tables", "-t", "mangle", "-N", spec.chain],
        check=True,
    )
    before, netns_before = _host_state(host_ns), _netns()
    with pytest.raises(SandboxError, match="ipv6 mangle chain"):
        create_sandbox(spec)
    assert _host_state(host_ns) == before
    assert _netns() == netns_before


def test_teardown_continues_past_a_failing_step(host_ns):
    spec = _spec(host_ns)
    sandbox = create_sandbox(spec)
    # Someone removed the v4 nat jump already: that undo fails, the rest still runs.
    subprocess.run(
        ["ip", "netns", "exec", host_ns, "iptables", "-t", "nat", "-D", "PREROUTING", "-i",
         spec.host_if, "-j", spec.chain],
        check=True,
    )  # fmt: skip
    failures = sandbox.teardown()
    assert len(failures) == 1 and "PREROUTING" in failures[0]
    assert spec.name not in _netns()
    assert spec.chain not in _out("ip", "netns", "exec", host_ns, "iptables-save")
    assert "fwmark" not in _out("ip", "-n", host_ns, "rule")


def test_the_leftovers_of_a_sandbox_whose_creator_died_are_removed_whole(host_ns):
    """A complete sandbox nobody holds a handle to any more (its creator was killed):
    remove_leftovers removes it from its spec alone, and again finds nothing to do."""
    before, netns_before = _host_state(host_ns), _netns()
    spec = _spec(host_ns)
    create_sandbox(spec)  # the handle is dropped, as a killed process drops it
    assert spec.name in _netns()
    assert remove_leftovers(spec) == []
    assert _host_state(host_ns) == before
    assert _netns() == netns_before
    assert remove_leftovers(spec) == []  # nothing left: "already gone" is no failure


def test_the_leftovers_of_a_half_made_sandbox_are_removed_too(host_ns):
    """Killed half way: only the namespace and the veth pair exist."""
    before, netns_before = _host_state(host_ns), _netns()
    spec = _spec(host_ns)
    subprocess.run(["ip", "netns", "add", spec.name], check=True)
    subprocess.run(
        ["ip", "-n", host_ns, "link", "add", spec.host_if, "type", "veth", "peer", "name",
         spec.agent_if, "netns", spec.name],
        check=True,
    )  # fmt: skip
    assert remove_leftovers(spec) == []
    assert _host_state(host_ns) == before
    assert _netns() == netns_before


@pytest.mark.parametrize("dead_netns_left", [False, True])
def test_the_leftovers_of_a_dead_sandbox_spare_a_live_sandboxs_link_of_that_slot(
    host_ns, dead_netns_left
):
    """The host link is named by slot only: a live sandbox A (another state directory's,
    sharing the host namespace) may own `clrk1` when the leftovers of a dead sandbox of
    slot 1 are removed.  A's link, namespace and chains stay; the refusal names the
    link.  What is the dead one's (its namespace, if still there) is removed."""
    before, netns_before = _host_state(host_ns), _netns()
    dead = spec_for_index(
        1, f"clrk-sbt-{RUN}-dead", tcp_port=15001, udp_port=15002, dns_port=15053,
        host_netns=host_ns,
    )  # fmt: skip
    with contextlib.ExitStack() as cleanup:
        teardown_failures: list[str] = []
        live = create_sandbox(_spec(host_ns, 1))
        cleanup.callback(lambda: teardown_failures.extend(live.teardown()))
        if dead_netns_left:
            cleanup.enter_context(scratch_netns(dead.name))  # deleted again if still there
        assert live.spec.host_if == dead.host_if
        during = _host_state(host_ns)
        agent_during = _out("ip", "-n", live.name, "-o", "addr", "show")

        failures = remove_leftovers(dead)

        assert len(failures) == 1, failures
        assert dead.host_if in failures[0] and live.name in failures[0]
        assert _host_state(host_ns) == during
        assert _out("ip", "-n", live.name, "-o", "addr", "show") == agent_during
        assert _netns() == netns_before | {live.name}  # the dead namespace is gone
        # The veth pair is whole: A's end still has its carrier (its peer, clrk1, is up).
        agent_link = _out("ip", "-n", live.name, "-o", "link", "show", "dev", live.spec.agent_if)
        assert "LOWER_UP" in agent_link and f"link-netns {host_ns}" in agent_link
    assert teardown_failures == []
    assert _host_state(host_ns) == before
    assert _netns() == netns_before


def test_a_host_link_that_cannot_be_looked_at_is_not_deleted():
    """Not knowing whose the link is counts as not ours: no `link del`, a failure."""
    spec = _spec("clrk-sbt-fake-host")
    ran: list[tuple[str, ...]] = []

    def runner(argv):
        ran.append(tuple(argv))
        if "show" in argv and "dev" in argv:
            return subprocess.CompletedProcess(
                argv, 2, "", "RTNETLINK answers: Operation not permitted"
            )
        return subprocess.CompletedProcess(argv, 0, "", "")

    failures = remove_leftovers(spec, runner)
    assert len(failures) == 1 and "Operation not permitted" in failures[0]
    assert not [argv for argv in ran if argv[-3:] == ("link", "del", spec.host_if)]
    assert ("ip", "netns", "del", spec.name) in ran
