"""Fixtures of the tests that run `clrk up` (needs root): one topology and one stack per
test module, removed with it (the topology's leak check then covers namespaces, links,
rules and processes)."""

from __future__ import annotations

import pytest

from tests.e2e.topology import Topology, leaks, snapshot
from tests.embedded.up_harness import POLICY, Stack


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    before = snapshot()
    with Topology(tmp_path_factory.mktemp("up")) as topo:
        yield topo
    assert not leaks(before, snapshot()), leaks(before, snapshot())


@pytest.fixture(scope="module")
def stack(topology, tmp_path_factory):
    directory = tmp_path_factory.mktemp("up-stack")
    manifests = directory / "policy.yaml"
    manifests.write_text(POLICY)
    stack = Stack(topology, manifests, directory / "state")
    try:
        yield stack
    finally:
        assert stack.stop() == 0
