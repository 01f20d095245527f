"""Fixtures of the tests that run `clrk up` (needs root): one topology and one stack per
test module, removed with it (the topology's leak check then covers namespaces, links,
rules and processes)."""

from __future__ import annotations

import pytest

from tests.e2e.topology import Topology, leaks, snapshot
from tests.embedded.up_harness import POLICY, running_stack


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    before = snapshot()
    with Topology(tmp_path_factory.mktemp("up")) as topo:
        yield topo
    assert not leaks(before, snapshot()), leaks(before, snapshot())


@pytest.fixture(scope="module")
def stack(topology, tmp_path_factory):
    with running_stack(topology, tmp_path_factory.mktemp("up-stack"), POLICY) as stack:
        yield stack
