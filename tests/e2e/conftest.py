"""Fixtures of the end-to-end topology (SPEC 10). Everything here needs root.

- `topology`: one Topology per test package (gw, internet, dnsmasq, servers).
- `agent`: a fresh agent sandbox behind gw for one test, removed after it.
- leak checks (autouse): before/after each test and around the whole package, our
  namespaces, root-namespace links and iptables/ip6tables rules and this process's
  children must be unchanged — also when the test failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.topology import Agent, Topology, leaks, snapshot

ROOT_REASON = "needs root: network namespaces and iptables"


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason=ROOT_REASON))


def _check_leaks(before: dict) -> None:
    left = leaks(before, snapshot())
    if left:
        pytest.fail(f"left behind: {left}", pytrace=False)


def _leak_checked() -> Iterator[None]:
    """Around a yield: nothing new is left behind (as root; without root nothing is made)."""
    if os.geteuid() != 0:
        yield
        return
    before = snapshot()
    yield
    _check_leaks(before)


@pytest.fixture(scope="package", autouse=True)
def _package_leak_check() -> Iterator[None]:
    yield from _leak_checked()


@pytest.fixture(autouse=True)
def _leak_check(_package_leak_check) -> Iterator[None]:
    yield from _leak_checked()


@pytest.fixture(scope="package")
def topology(tmp_path_factory, _package_leak_check) -> Iterator[Topology]:
    with Topology(tmp_path_factory.mktemp("e2e")) as topo:
        yield topo


@pytest.fixture
def agent(topology: Topology, _leak_check) -> Iterator[Agent]:
    agent = topology.add_agent()
    try:
        yield agent
    finally:
        topology.remove_agent(agent)
